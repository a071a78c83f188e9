//! DOCX reader: zip container, OPC parts, WordprocessingML walker.
//!
//! Inputs starting with `PK` are used as whole packages (fuzzing the zip layer and OPC lookup);
//! anything else is stored, uncompressed, as `word/document.xml` of a minimal package, so the
//! mutations reach the XML walker instead of dying in a corrupted deflate stream.
#![no_main]

mod common;

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use ragpipe::extract::Hints;

const CONTENT_TYPES: &[u8] = br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#;
const RELS: &[u8] = br#"<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#;

/// A stored (uncompressed) package around `document`.
fn package(document: &[u8]) -> Option<Vec<u8>> {
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in
        [("[Content_Types].xml", CONTENT_TYPES), ("_rels/.rels", RELS), ("word/document.xml", document)]
    {
        writer.start_file(name, stored).ok()?;
        writer.write_all(content).ok()?;
    }
    Some(writer.finish().ok()?.into_inner())
}

fuzz_target!(|data: &[u8]| {
    let hints = Hints { filename: Some("fuzz.docx"), ..Hints::default() };
    if data.starts_with(b"PK") {
        common::extract_and_check(data, &hints);
    } else if let Some(docx) = package(data) {
        common::extract_and_check(&docx, &hints);
    }
});
