//! DOCX: a small zip + quick-xml reader. The main part is found through `_rels/.rels` and
//! `[Content_Types].xml`; text comes from the body, footnotes, endnotes, headers and footers.
//!
//! Why not docx-rs: its reader drops text boxes and sizes buffers from the zip's declared entry
//! sizes; here every byte read is counted against the limits instead.

mod archive;
mod body;
mod diagram;
mod numbering;
mod opc;
mod xml;

use std::collections::HashSet;

use archive::{Archive, ZipLimits};
use body::Walker;
use numbering::Numbering;
use opc::{ContentTypes, Relationship};

use super::ExtractSettings;
use super::error::ExtractError;
use super::output::{Break, TextBuilder};

/// Extracts the text of a DOCX package.
///
/// # Errors
///
/// [`ExtractError::Unsupported`] for zips that are not Word documents, [`ExtractError::Corrupt`]
/// for broken zips or XML, [`ExtractError::LimitExceeded`] for zip bombs and oversized text,
/// [`ExtractError::NoText`] when the document holds no text.
pub(crate) fn extract(bytes: &[u8], settings: &ExtractSettings) -> Result<String, ExtractError> {
    let mut archive = Archive::open(bytes, zip_limits(settings))?;
    let main = find_main_part(&mut archive)?;
    let rels = match archive.read_text(&opc::rels_part_of(&main))? {
        Some(xml) => opc::parse_relationships(&xml, &main),
        None => Vec::new(),
    };
    let mut numbering = match related_part(&rels, "numbering") {
        Some(part) => archive.read_text(part)?.map(|xml| Numbering::parse(&xml)).unwrap_or_default(),
        None => Numbering::default(),
    };
    let mut out = TextBuilder::new(settings.max_chars);
    let body = archive
        .read_text(&main)?
        .ok_or_else(|| ExtractError::Corrupt(format!("main document part {main} is missing")))?;
    walk_part(&mut out, &mut numbering, &main, &body)?;
    for part in related_parts(&rels, "diagramData") {
        if let Some(xml) = archive.read_text(part)? {
            diagram::append_text(&xml, &mut out).map_err(|err| in_part(part, err))?;
        }
    }
    for kind in ["footnotes", "endnotes"] {
        for part in related_parts(&rels, kind) {
            if let Some(xml) = archive.read_text(part)? {
                walk_part(&mut out, &mut numbering, part, &xml)?;
            }
        }
    }
    append_headers_and_footers(&mut archive, &rels, &mut out, settings.max_chars)?;
    let text = out.finish();
    if text.trim().is_empty() {
        return Err(ExtractError::NoText);
    }
    Ok(text)
}

fn zip_limits(settings: &ExtractSettings) -> ZipLimits {
    ZipLimits {
        max_uncompressed: settings.zip_max_uncompressed_bytes,
        max_entries: settings.zip_max_entries,
        max_ratio: settings.zip_max_ratio,
    }
}

fn walk_part(out: &mut TextBuilder, numbering: &mut Numbering, part: &str, xml: &str) -> Result<(), ExtractError> {
    Walker::new(out, numbering).walk(xml).map_err(|err| in_part(part, err))
}

/// Names the part in a corruption message.
fn in_part(part: &str, err: ExtractError) -> ExtractError {
    match err {
        ExtractError::Corrupt(reason) => ExtractError::Corrupt(format!("{part}: {reason}")),
        other => other,
    }
}

/// Headers and footers repeat per section; identical ones are written once.
fn append_headers_and_footers(
    archive: &mut Archive<'_>,
    rels: &[Relationship],
    out: &mut TextBuilder,
    max_chars: usize,
) -> Result<(), ExtractError> {
    let mut seen = HashSet::new();
    for part in related_parts(rels, "header").chain(related_parts(rels, "footer")) {
        let Some(xml) = archive.read_text(part)? else {
            continue;
        };
        let mut part_out = TextBuilder::new(max_chars);
        walk_part(&mut part_out, &mut Numbering::default(), part, &xml)?;
        let text = part_out.finish();
        if !text.trim().is_empty() && seen.insert(text.clone()) {
            out.push_break(Break::Paragraph);
            out.push_str(&text)?;
        }
    }
    Ok(())
}

fn related_parts<'r>(rels: &'r [Relationship], kind: &'r str) -> impl Iterator<Item = &'r str> {
    rels.iter().filter(move |rel| rel.is(kind)).filter_map(|rel| rel.target.as_deref())
}

fn related_part<'r>(rels: &'r [Relationship], kind: &'r str) -> Option<&'r str> {
    related_parts(rels, kind).next()
}

/// Finds the main document part: the package's `officeDocument` relationship, else the part
/// `[Content_Types].xml` declares as a Word main part, else the conventional
/// `word/document.xml`. Packages whose main part is another Office type are unsupported.
fn find_main_part(archive: &mut Archive<'_>) -> Result<String, ExtractError> {
    let types = archive.read_text("[Content_Types].xml")?.map(|xml| ContentTypes::parse(&xml)).unwrap_or_default();
    let package_rels = match archive.read_text("_rels/.rels")? {
        Some(xml) => opc::parse_relationships(&xml, ""),
        None => Vec::new(),
    };
    let by_rel = related_part(&package_rels, "officeDocument").filter(|part| archive.contains(part)).map(str::to_owned);
    let candidate = by_rel
        .or_else(|| types.find_part(is_word_main))
        .or_else(|| archive.contains("word/document.xml").then(|| "word/document.xml".to_owned()));
    match candidate {
        Some(part) if types.of(&part).is_none_or(|ct| !is_other_office(ct)) => Ok(part),
        _ => Err(ExtractError::Unsupported { detected: describe_zip(archive, &types)? }),
    }
}

fn is_word_main(content_type: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    ct.ends_with("main+xml") && (ct.contains("wordprocessingml") || ct.contains("ms-word"))
}

fn is_other_office(content_type: &str) -> bool {
    ["spreadsheetml", "presentationml", "ms-excel", "ms-powerpoint"]
        .iter()
        .any(|kind| content_type.to_ascii_lowercase().contains(kind))
}

/// Names a zip that is not a Word document, for the failure message.
fn describe_zip(archive: &mut Archive<'_>, types: &ContentTypes) -> Result<String, ExtractError> {
    if let Some(mimetype) = archive.read("mimetype")? {
        let mimetype = String::from_utf8_lossy(&mimetype).trim().to_owned();
        if !mimetype.is_empty() && mimetype.len() < 100 {
            return Ok(format!("zip archive ({mimetype})"));
        }
    }
    let office = [("spreadsheetml", "xlsx spreadsheet"), ("presentationml", "pptx presentation")];
    for (marker, name) in office {
        if types.find_part(|ct| ct.contains(marker)).is_some() {
            return Ok(name.to_owned());
        }
    }
    Ok("zip archive (not a Word document)".to_owned())
}
