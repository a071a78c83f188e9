//! `ragpipe extract <file> [--json]`: what the worker would get for a file, through the same
//! sandbox path.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;

use super::{ByteLimit, ExtractError, Extracted, OwnedHints, Sandbox};

/// Extracts `path` through `sandbox` and renders the outcome: detected type, character and page
/// counts and the text, or the failure code and reason. A failed extraction is a normal report,
/// not an error.
///
/// # Errors
///
/// Only when the file cannot be read or the report cannot be rendered.
pub async fn debug_report(sandbox: &Sandbox, path: &Path, json: bool) -> anyhow::Result<String> {
    let outcome = extract_file(sandbox, path).await?;
    if json { render_json(path, &outcome) } else { Ok(render_text(path, &outcome)) }
}

async fn extract_file(sandbox: &Sandbox, path: &Path) -> anyhow::Result<Result<Extracted, ExtractError>> {
    let size = tokio::fs::metadata(path).await.with_context(|| format!("cannot stat {}", path.display()))?.len();
    let max = sandbox.settings().max_file_bytes;
    // Refused before reading, like an oversized upload.
    if size > max {
        return Ok(Err(ExtractError::TooLarge(ByteLimit { bytes: size, max })));
    }
    let bytes = tokio::fs::read(path).await.with_context(|| format!("cannot read {}", path.display()))?;
    let hints =
        OwnedHints { filename: path.file_name().map(|n| n.to_string_lossy().into_owned()), ..OwnedHints::default() };
    Ok(sandbox.extract(Arc::from(bytes), hints).await)
}

fn render_text(path: &Path, outcome: &Result<Extracted, ExtractError>) -> String {
    let mut out = format!("file: {}\n", path.display());
    match outcome {
        Ok(extracted) => {
            let _ = writeln!(out, "status: ok");
            let _ = writeln!(out, "type: {}", extracted.kind);
            let _ = writeln!(out, "characters: {}", extracted.text.chars().count());
            let _ = writeln!(out, "pages: {}", extracted.pages.len());
            if !extracted.garbled_pages.is_empty() {
                let numbers: Vec<String> = extracted.garbled_pages.iter().map(u32::to_string).collect();
                let _ = writeln!(out, "garbled pages (left out): {}", numbers.join(", "));
            }
            out.push('\n');
            push_text(&mut out, extracted);
        }
        Err(err) => {
            let _ = writeln!(out, "status: failed");
            let _ = writeln!(out, "code: {}", err.code());
            let _ = writeln!(out, "reason: {err}");
            let _ = writeln!(out, "transient: {}", err.is_transient());
        }
    }
    out
}

/// The text, with a marker line before each page of a paged document.
fn push_text(out: &mut String, extracted: &Extracted) {
    if extracted.pages.is_empty() {
        out.push_str(&extracted.text);
    }
    for page in &extracted.pages {
        let _ = writeln!(out, "--- page {} ---", page.number);
        out.push_str(extracted.text.get(page.start..page.end).unwrap_or_default());
        out.push('\n');
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
}

fn render_json(path: &Path, outcome: &Result<Extracted, ExtractError>) -> anyhow::Result<String> {
    let file = path.display().to_string();
    let value = match outcome {
        Ok(extracted) => json!({
            "file": file,
            "status": "ok",
            "type": extracted.kind,
            "characters": extracted.text.chars().count(),
            "pages": extracted.pages,
            "garbled_pages": extracted.garbled_pages,
            "text": extracted.text,
        }),
        Err(err) => json!({
            "file": file,
            "status": "failed",
            "code": err.code(),
            "reason": err.to_string(),
            "transient": err.is_transient(),
        }),
    };
    let mut rendered = serde_json::to_string_pretty(&value).context("cannot render JSON")?;
    rendered.push('\n');
    Ok(rendered)
}
