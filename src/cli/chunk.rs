//! `ragpipe chunk <file>`: extraction (sandboxed, as in the worker) plus chunking, printing each
//! chunk with its token count, offsets, pages and heading path.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::chunk::{ChunkInput, Chunker, Strategy, render};
use crate::config::Settings;
use crate::extract::{DocKind, OwnedHints, Sandbox};

/// Arguments of `ragpipe chunk`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to chunk.
    pub file: PathBuf,
    /// Strategy: semantic, fixed, markdown or recursive (default: from `[chunk]` by content type).
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Most tokens per chunk (default: chunk.max_tokens).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Tokens repeated between neighbouring chunks (default: chunk.overlap_tokens).
    #[arg(long)]
    pub overlap_tokens: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Extracts and chunks one file and prints the chunks.
///
/// # Errors
/// The file cannot be read, extraction fails, or the tokenizer cannot be built.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let sandbox = Sandbox::current_exe(settings.extract.clone()).context("locating the ragpipe binary")?;
    let hints = OwnedHints {
        filename: args.file.file_name().map(|n| n.to_string_lossy().into_owned()),
        ..OwnedHints::default()
    };
    let extracted = sandbox
        .extract(Arc::from(bytes), hints)
        .await
        .map_err(|e| anyhow::anyhow!("extraction failed: {}: {e}", e.code()))?;
    let chunker = Chunker::new(&settings.chunk)?;
    let pages = extracted.page_ranges();
    let markdown = extracted.kind == DocKind::Markdown;
    let input = ChunkInput { text: &extracted.text, markdown, pages: &pages };
    let cfg = &settings.chunk;
    let strategy = args.strategy.unwrap_or(if markdown { cfg.markdown_strategy } else { cfg.strategy });
    let chunks = chunker.chunk_with(
        &input,
        strategy,
        args.max_tokens.unwrap_or(cfg.max_tokens),
        args.overlap_tokens.unwrap_or(cfg.overlap_tokens),
    );
    print!("{}", render(&chunks, args.json));
    Ok(ExitCode::SUCCESS)
}
