//! Shared helpers for the extraction tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod expectations;
pub mod pandoc_native;

use std::path::{Path, PathBuf};

use ragpipe::extract::{ExtractError, ExtractSettings, Extracted, Hints, extract_in_process};

/// The shared corpus (`/work/shared/corpus`, next to the crate in the real layout).
pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

/// A corpus file's path.
pub fn corpus(relative: &str) -> PathBuf {
    Path::new(CORPUS).join(relative)
}

/// A corpus file's bytes; panics with the path if it is missing (the corpus is part of the
/// test fixture).
pub fn corpus_bytes(relative: &str) -> Vec<u8> {
    let path = corpus(relative);
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// Files of a corpus folder with the given extension, sorted.
pub fn corpus_files(folder: &str, extension: &str) -> Vec<PathBuf> {
    let dir = corpus(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Extracts a corpus file in process with default settings, its name as the only hint.
pub fn extract_corpus(relative: &str) -> Result<Extracted, ExtractError> {
    extract_named(&corpus_bytes(relative), relative)
}

/// Extracts bytes in process with default settings and `name` as the filename hint.
pub fn extract_named(bytes: &[u8], name: &str) -> Result<Extracted, ExtractError> {
    let hints = Hints { filename: Some(name), ..Hints::default() };
    extract_in_process(bytes, &hints, &ExtractSettings::default())
}

/// The text of a corpus file; panics with the error if extraction failed.
pub fn text_of(relative: &str) -> String {
    match extract_corpus(relative) {
        Ok(extracted) => extracted.text,
        Err(err) => panic!("{relative}: expected text, got {err:?}"),
    }
}

/// A zip archive of `(name, content)` entries, deflated.
pub fn build_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in entries {
        writer.start_file(*name, options).expect("start zip entry");
        writer.write_all(content).expect("write zip entry");
    }
    writer.finish().expect("finish zip").into_inner()
}

/// WordprocessingML namespace declaration for hand-built documents.
pub const W_NS: &str = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";

/// A minimal DOCX package around `document_xml` (the full `word/document.xml`).
pub fn build_docx(document_xml: &str) -> Vec<u8> {
    let content_types = r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#;
    let rels = r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#;
    build_zip(&[
        ("[Content_Types].xml", content_types.as_bytes()),
        ("_rels/.rels", rels.as_bytes()),
        ("word/document.xml", document_xml.as_bytes()),
    ])
}

/// A `word/document.xml` whose body is `body` (raw WordprocessingML).
pub fn document_xml(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>"#
    )
}
