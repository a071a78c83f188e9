//! Hostile inputs built by the tests: zip bombs, lying zip headers, XML entity expansion, and
//! every configured limit.
#![allow(clippy::expect_used)] // a broken fixture should fail the test loudly

mod support;

use std::time::{Duration, Instant};

use ragpipe::extract::{ByteLimit, ExtractError, ExtractSettings, Hints, Limit, extract_in_process};
use support::{W_NS, build_docx, build_zip, document_xml};

fn extract_with(bytes: &[u8], settings: &ExtractSettings) -> Result<String, ExtractError> {
    extract_in_process(bytes, &Hints::default(), settings).map(|e| e.text)
}

/// A DOCX whose single paragraph holds `len` copies of one letter: tiny compressed, large
/// inflated.
fn repetitive_docx(len: usize) -> Vec<u8> {
    let text = "a".repeat(len);
    build_docx(&document_xml(&format!("<w:p><w:r><w:t>{text}</w:t></w:r></w:p>")))
}

#[test]
fn zip_bomb_is_stopped_by_the_ratio_limit_after_the_grace_size() {
    let bomb = repetitive_docx(64 * 1024 * 1024);
    assert!(bomb.len() < 1024 * 1024, "bomb is {} bytes", bomb.len());
    let started = Instant::now();
    let err = extract_with(&bomb, &ExtractSettings::default()).err();
    assert!(
        matches!(err, Some(ExtractError::LimitExceeded(Limit::ZipRatio { ref entry, max: 100 })) if entry == "word/document.xml"),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_bomb_of_many_small_parts_is_stopped_by_the_ratio_of_the_whole_archive() {
    // 300 headers of 1 MiB each: every one inflates within the per-entry grace size, together
    // they would reach the 200 MiB budget (the probe's bomb held ~218 MiB before failing).
    let header = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><w:hdr xmlns:w="{W_NS}"><w:p><w:r><w:t>{}</w:t></w:r></w:p></w:hdr>"#,
        "a".repeat(1024 * 1024 - 200)
    );
    let names: Vec<String> = (0..300).map(|i| format!("word/header{i}.xml")).collect();
    let relationships: String = (0..300)
        .map(|i| {
            format!(
                r#"<Relationship Id="rId{i}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/header" Target="header{i}.xml"/>"#
            )
        })
        .collect();
    let document_rels = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{relationships}</Relationships>"#
    );
    let content_types = r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#;
    let rels = r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#;
    let document = document_xml("<w:p><w:r><w:t>Body text.</w:t></w:r></w:p>");
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("[Content_Types].xml", content_types.as_bytes()),
        ("_rels/.rels", rels.as_bytes()),
        ("word/document.xml", document.as_bytes()),
        ("word/_rels/document.xml.rels", document_rels.as_bytes()),
    ];
    entries.extend(names.iter().map(|name| (name.as_str(), header.as_bytes())));
    let bomb = build_zip(&entries);
    assert!(bomb.len() < 2 * 1024 * 1024, "bomb is {} bytes", bomb.len());
    let err = extract_with(&bomb, &ExtractSettings::default()).err();
    assert!(
        matches!(err, Some(ExtractError::LimitExceeded(Limit::ZipRatio { ref entry, max: 100 })) if entry.contains("with the parts read before it")),
        "{err:?}"
    );
}

#[test]
fn decompressed_bytes_are_capped_in_total() {
    let settings = ExtractSettings {
        zip_max_uncompressed_bytes: 512 * 1024,
        zip_max_ratio: 1_000_000,
        ..ExtractSettings::default()
    };
    let err = extract_with(&repetitive_docx(2 * 1024 * 1024), &settings).err();
    assert_eq!(err, Some(ExtractError::LimitExceeded(Limit::ZipBytes { max: 512 * 1024 })));
    // The same document within the budget extracts.
    let small = extract_with(&repetitive_docx(100 * 1024), &settings).expect("small doc");
    assert_eq!(small.len(), 100 * 1024);
}

#[test]
fn declared_sizes_are_not_trusted() {
    // Rewrite every declared uncompressed size of document.xml to 10 bytes: the reader must
    // still count what it inflates (or reject the mismatch), never size anything by the lie.
    let mut bytes = repetitive_docx(8 * 1024 * 1024);
    lie_about_uncompressed_sizes(&mut bytes, b"word/document.xml", 10);
    let started = Instant::now();
    let result = extract_with(&bytes, &ExtractSettings::default());
    assert!(
        matches!(result, Err(ExtractError::LimitExceeded(_) | ExtractError::Corrupt(_))),
        "{:?}",
        result.map(|t| t.len())
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Patches the uncompressed-size fields of the local and central headers of entry `name`.
fn lie_about_uncompressed_sizes(zip: &mut [u8], name: &[u8], size: u32) {
    let mut patched = 0;
    for (signature, size_offset, name_offset) in [(b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)] {
        let starts: Vec<usize> = zip.windows(4).enumerate().filter(|(_, w)| w == signature).map(|(i, _)| i).collect();
        for start in starts {
            if zip.get(start + name_offset..start + name_offset + name.len()) == Some(name) {
                zip[start + size_offset..start + size_offset + 4].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "expected one local and one central header");
}

#[test]
fn too_many_zip_entries_are_refused() {
    let names: Vec<String> = (0..50).map(|i| format!("junk/{i}.xml")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"<x/>"[..])).collect();
    let settings = ExtractSettings { zip_max_entries: 20, ..ExtractSettings::default() };
    assert_eq!(
        extract_with(&build_zip(&entries), &settings).err(),
        Some(ExtractError::LimitExceeded(Limit::ZipEntries { entries: 50, max: 20 }))
    );
}

#[test]
fn billion_laughs_entities_are_never_expanded() {
    let mut dtd = String::from("<!DOCTYPE w:document [\n<!ENTITY lol \"lol\">\n");
    for level in 1..=9 {
        let previous = if level == 1 { "lol".to_owned() } else { format!("lol{}", level - 1) };
        let refs = format!("&{previous};").repeat(10);
        dtd.push_str(&format!("<!ENTITY lol{level} \"{refs}\">\n"));
    }
    dtd.push_str("<!ENTITY ext SYSTEM \"file:///etc/passwd\">\n]>");
    let body = "<w:p><w:r><w:t>Before &lol9; middle &ext; after &amp; done</w:t></w:r></w:p>";
    let xml = document_xml(body).replacen("<w:document", &format!("{dtd}<w:document"), 1);
    let started = Instant::now();
    let text = extract_with(&build_docx(&xml), &ExtractSettings::default()).expect("laughs docx");
    assert_eq!(text, "Before  middle  after & done");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn character_limit_applies_to_every_format() {
    let settings = ExtractSettings { max_chars: 1_000, ..ExtractSettings::default() };
    let over = Some(ExtractError::LimitExceeded(Limit::Chars { max: 1_000 }));
    assert_eq!(extract_with(&repetitive_docx(2_000), &settings).err(), over);
    assert_eq!(extract_with("x".repeat(1_001).as_bytes(), &settings).err(), over);
    let html = format!("<html><body><p>{}</p></body></html>", "y".repeat(1_001));
    assert_eq!(extract_with(html.as_bytes(), &settings).err(), over);
    assert_eq!(extract_with("x".repeat(1_000).as_bytes(), &settings).map(|t| t.len()).ok(), Some(1_000));
}

#[test]
fn file_size_and_page_limits_apply() {
    let settings = ExtractSettings { max_file_bytes: 100, ..ExtractSettings::default() };
    assert_eq!(
        extract_with(&[b'a'; 101], &settings).err(),
        Some(ExtractError::TooLarge(ByteLimit { bytes: 101, max: 100 }))
    );
    let pdf = support::corpus_bytes("pdf/py-pdf_sample-files/pdflatex-4-pages.pdf");
    let settings = ExtractSettings { max_pages: 3, ..ExtractSettings::default() };
    assert_eq!(
        extract_with(&pdf, &settings).err(),
        Some(ExtractError::LimitExceeded(Limit::Pages { pages: 4, max: 3 }))
    );
}

/// A paragraph whose second run sits inside `depth` pairs of nested content controls.
fn nested_docx(depth: usize) -> Vec<u8> {
    let nested = format!(
        "<w:p><w:r><w:t>top</w:t></w:r>{}<w:r><w:t>deep</w:t></w:r>{}</w:p>",
        "<w:sdt><w:sdtContent>".repeat(depth),
        "</w:sdtContent></w:sdt>".repeat(depth)
    );
    build_docx(&document_xml(&nested))
}

#[test]
fn deeply_nested_markup_cannot_overflow_the_stack() {
    // The walkers keep an explicit stack, so depth costs memory, not call frames. Repetitive
    // markup compresses far beyond the zip-bomb ratio, so the ratio is relaxed here.
    let settings = ExtractSettings { zip_max_ratio: 100_000, ..ExtractSettings::default() };
    let text = extract_with(&nested_docx(30_000), &settings).expect("nested docx");
    assert_eq!(text, "topdeep");
    // Past the XML reader's nesting bound (65 535 open elements) it is a named failure.
    let too_deep = extract_with(&nested_docx(40_000), &settings);
    assert!(
        matches!(&too_deep, Err(ExtractError::Corrupt(reason)) if reason.contains("nests elements deeper")),
        "{too_deep:?}"
    );
    const DEPTH: usize = 200_000;
    let html =
        format!("<html><body>{}deep{}</body></html>", "<div><span>".repeat(DEPTH), "</span></div>".repeat(DEPTH));
    let text = extract_with(html.as_bytes(), &ExtractSettings::default()).expect("nested html");
    assert!(text == "deep", "{} characters of text", text.len());
}
