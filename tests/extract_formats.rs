//! Every corpus document through extraction, real content asserted, DOCX text against pandoc's
//! expected parses, encodings and type detection.
#![allow(clippy::expect_used)] // a broken fixture should fail the test loudly

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ragpipe::extract::{
    DocKind, ExtractError, ExtractSettings, Extracted, Hints, OwnedHints, Sandbox, extract_in_process,
};
use support::expectations::{ABSENT, EXPECTED_FAILURES, PHRASES};
use support::{corpus_files, extract_corpus, extract_named, pandoc_native, text_of};

#[test]
fn every_docx_text_and_markdown_file_yields_text_or_its_expected_failure() {
    let expected: BTreeMap<&str, &str> = EXPECTED_FAILURES.iter().copied().collect();
    let mut outcomes = Vec::new();
    for folder in ["docx/apache-poi", "docx/mammoth.js", "docx/pandoc", "docx/python-docx"] {
        outcomes.extend(corpus_files(folder, "docx").into_iter().map(|p| (folder, p)));
    }
    outcomes.extend(corpus_files("text", "txt").into_iter().map(|p| ("text", p)));
    outcomes.extend(corpus_files("markdown", "md").into_iter().map(|p| ("markdown", p)));
    assert!(outcomes.len() > 100, "corpus missing? {} files", outcomes.len());
    for (folder, path) in outcomes {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let relative = format!("{folder}/{name}");
        let outcome = extract_corpus(&relative);
        match (expected.get(relative.as_str()), outcome) {
            (None, Ok(extracted)) => assert!(!extracted.text.trim().is_empty(), "{relative}"),
            (Some(code), Err(err)) => assert_eq!(err.code(), *code, "{relative}: {err}"),
            (want, got) => panic!("{relative}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn documents_contain_phrases_read_from_them() {
    for (file, phrase) in PHRASES {
        let text = text_of(file);
        assert!(text.contains(phrase), "{file} lacks {phrase:?}:\n{text:.2000}");
    }
}

#[test]
fn deleted_text_comments_field_codes_and_entities_stay_out() {
    for (file, phrase) in ABSENT {
        let text = text_of(file);
        assert!(!text.contains(phrase), "{file} contains {phrase:?}:\n{text:.2000}");
    }
}

#[test]
fn text_boxes_and_moves_appear_exactly_once() {
    // text-box.docx carries the box twice (mc:Choice and its VML mc:Fallback).
    assert_eq!(text_of("docx/mammoth.js/text-box.docx").matches("Datum plane").count(), 1);
    let moved = text_of("docx/pandoc/track_changes_move.docx");
    assert_eq!(moved.matches("Here is the text to be moved.").count(), 1);
}

#[test]
fn external_entity_is_never_resolved() {
    let text = text_of("docx/apache-poi/ExternalEntityInText.docx");
    assert_eq!(text, "Here should not be the POI web site: \"\"");
}

#[test]
fn docx_word_recall_against_pandoc_is_at_least_98_percent_per_file() {
    let natives = corpus_files("docx/pandoc/_expected_native", "native");
    assert!(natives.len() >= 38, "expected pandoc parses missing");
    let mut failures = Vec::new();
    for native in natives {
        let stem = native.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let expected = pandoc_native::str_words(&std::fs::read_to_string(&native).unwrap_or_default());
        assert!(!expected.is_empty(), "{stem}: no words parsed from the native file");
        let text = extract_corpus(&format!("docx/pandoc/{stem}.docx")).map(|e| e.text).unwrap_or_default();
        let (recall, missing) = pandoc_native::word_recall(&expected, &text);
        if recall < 0.98 {
            failures.push(format!("{stem}: recall {recall:.3}, missing {missing:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn pandoc_native_parser_joins_inline_runs_and_skips_comments() {
    let native = r#"[Para [Str "m",Superscript [Str "2"],Space,Str "x",Note [Para [Str "n"]]]
        ,Para [Str "I",Space,Span ("",["comment-start"],[("id","0")]) [Str "hidden"],Str "it."]
        ,DefinitionList [([Str "Term"],[[Para [Str "1"]]]),([Str "Two"],[])]]"#;
    let words = pandoc_native::str_words(native);
    assert_eq!(words, ["m2", "x", "n", "I", "it", "Term", "1", "Two"]);
}

#[test]
fn quijote_bom_and_crlf_are_normalised() {
    let raw = support::corpus_bytes("text/pg2000_don_quijote_es.txt");
    assert!(raw.starts_with(b"\xEF\xBB\xBF") && raw.windows(2).any(|w| w == b"\r\n"));
    let extracted = extract_corpus("text/pg2000_don_quijote_es.txt").expect("quijote");
    assert_eq!(extracted.kind, DocKind::Text);
    assert!(extracted.text.starts_with("The Project Gutenberg eBook of Don Quijote"));
    assert!(!extracted.text.contains('\r'));
    assert!(extracted.text.contains("En un lugar de la Mancha, de cuyo nombre no quiero acordarme"));
    let raw_lines = raw.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(extracted.text.matches('\n').count(), raw_lines);
}

#[test]
fn utf16_and_windows_1252_files_decode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sample = "Grüße, señor — “quoted” €5\r\nsecond line\rthird";
    let expected = "Grüße, señor — “quoted” €5\nsecond line\nthird";
    let mut le = vec![0xFF, 0xFE];
    le.extend(sample.encode_utf16().flat_map(u16::to_le_bytes));
    let mut be = vec![0xFE, 0xFF];
    be.extend(sample.encode_utf16().flat_map(u16::to_be_bytes));
    let (cp1252, _, lossy) = encoding_rs::WINDOWS_1252.encode(sample);
    assert!(!lossy);
    let mut utf8_bom = b"\xEF\xBB\xBF".to_vec();
    utf8_bom.extend_from_slice(sample.as_bytes());
    for (name, bytes) in [("le.txt", le), ("be.txt", be), ("cp1252.txt", cp1252.into_owned()), ("bom.txt", utf8_bom)] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("write sample");
        let read = std::fs::read(&path).expect("read sample");
        let extracted = extract_named(&read, name).expect(name);
        assert_eq!((extracted.kind, extracted.text.as_str()), (DocKind::Text, expected), "{name}");
    }
}

#[test]
fn markdown_is_kept_as_source_and_detected_by_name_or_content() {
    for file in corpus_files("markdown", "md") {
        let bytes = std::fs::read(&file).expect("markdown file");
        let by_name = extract_named(&bytes, "notes.md").expect("markdown");
        assert_eq!(by_name.kind, DocKind::Markdown);
        assert_eq!(by_name.text, String::from_utf8_lossy(&bytes).replace("\r\n", "\n"));
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let unnamed = extract_in_process(&bytes, &Hints::default(), &ExtractSettings::default());
        // pandoc_tables.md has only simple tables: indistinguishable from plain text.
        let want = if name == "pandoc_tables.md" { DocKind::Text } else { DocKind::Markdown };
        assert_eq!(unnamed.map(|e| e.kind).ok(), Some(want), "{name} without hints");
    }
    for file in corpus_files("text", "txt") {
        let bytes = std::fs::read(&file).expect("text file");
        let unnamed = extract_in_process(&bytes, &Hints::default(), &ExtractSettings::default());
        assert_eq!(unnamed.map(|e| e.kind).ok(), Some(DocKind::Text), "{}", file.display());
    }
}

#[test]
fn html_gives_visible_text_whatever_it_is_called() {
    let html = b"<!DOCTYPE html><html><head><title>Report</title><style>h1{}</style></head>\
        <body><script>var x = 1;</script><h1>Results &amp; notes</h1><p>First&nbsp;para</p>\
        <!-- secret --><div>Second <b>bold</b> line</div></body></html>";
    let extracted = extract_named(html, "page.txt").expect("html");
    assert_eq!(extracted.kind, DocKind::Html);
    assert_eq!(extracted.text, "Report\n\nResults & notes\n\nFirst\u{a0}para\n\nSecond bold line");
    let fragment = b"<p>caf\xe9 <i>au</i> lait</p>";
    let hints = Hints { content_type: Some("text/html; charset=iso-8859-1"), ..Hints::default() };
    let extracted = extract_in_process(fragment, &hints, &ExtractSettings::default()).expect("fragment");
    assert_eq!((extracted.kind, extracted.text.as_str()), (DocKind::Html, "café au lait"));
}

#[test]
fn type_is_decided_by_content_with_clear_failures() {
    let unsupported = |bytes: &[u8], name: &str| match extract_named(bytes, name) {
        Err(ExtractError::Unsupported { detected }) => detected,
        other => panic!("{name}: expected unsupported, got {other:?}"),
    };
    let fake_pdf = support::corpus_bytes("pdf/_negative_not_a_pdf/paper-100k.pdf");
    assert!(unsupported(&fake_pdf, "paper-100k.pdf").contains("declared as pdf"));
    assert!(unsupported(b"just words", "report.pdf").contains("text"));
    assert_eq!(unsupported(b"\x89PNG\r\n\x1a\n\0\0", "image.docx"), "png image, not a zip package, declared as docx");
    assert_eq!(unsupported(&[0u8, 159, 146, 150, 1, 2, 3, 0, 0, 7], "blob"), "binary data");
    let mut ole = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1".to_vec();
    ole.extend_from_slice(&[0u8; 504]);
    assert!(unsupported(&ole, "old.doc").contains("OLE"));
    let zip = support::build_zip(&[("notes.txt", b"hello")]);
    assert!(unsupported(&zip, "archive.docx").contains("zip archive"));
    assert_eq!(extract_named(b"", "empty.txt").err(), Some(ExtractError::Empty));
    assert_eq!(extract_named(b"  \n\t\r\n", "blank.txt").err(), Some(ExtractError::NoText));
    // A real DOCX named .txt is still a DOCX.
    let docx = support::corpus_bytes("docx/mammoth.js/single-paragraph.docx");
    assert_eq!(extract_named(&docx, "x.txt").map(|e| e.kind).ok(), Some(DocKind::Docx));
}

/// PDFs go through the sandbox, as in the worker: a parser crash on a fuzzed PDF then costs one
/// document instead of the test process.
async fn extract_pdf(sandbox: &Sandbox, path: PathBuf, password: Option<&str>) -> Result<Extracted, ExtractError> {
    let bytes = std::fs::read(&path).expect("pdf");
    let hints = OwnedHints {
        filename: path.file_name().map(|n| n.to_string_lossy().into_owned()),
        password: password.map(str::to_owned),
        ..OwnedHints::default()
    };
    sandbox.extract(Arc::from(bytes), hints).await
}

#[tokio::test]
async fn every_pdf_ends_as_text_or_a_named_failure() {
    let sandbox = Sandbox::new(env!("CARGO_BIN_EXE_ragpipe").into(), ExtractSettings::default());
    let mut files = Vec::new();
    for folder in
        ["pdf/OCRmyPDF", "pdf/pdf.js", "pdf/pdfminer.six", "pdf/py-pdf_sample-files", "pdf/_negative_not_a_pdf"]
    {
        files.extend(corpus_files(folder, "pdf"));
    }
    assert!(files.len() > 60, "corpus missing? {} PDFs", files.len());
    let mut texts = 0;
    for path in files {
        match extract_pdf(&sandbox, path.clone(), None).await {
            Ok(extracted) => {
                texts += 1;
                assert_eq!(extracted.kind, DocKind::Pdf);
                assert_page_spans_tile_the_text(&extracted, &path);
            }
            Err(err) => assert_ne!(err.code(), "internal", "{}: {err}", path.display()),
        }
    }
    assert!(texts >= 30, "only {texts} PDFs yielded text");
}

fn assert_page_spans_tile_the_text(extracted: &Extracted, path: &std::path::Path) {
    let mut previous_end = 0;
    for (i, span) in extracted.pages.iter().enumerate() {
        assert_eq!(span.number as usize, i + 1, "{}", path.display());
        assert!(span.start >= previous_end && span.end >= span.start, "{}", path.display());
        assert!(extracted.text.get(span.start..span.end).is_some(), "{}", path.display());
        previous_end = span.end;
    }
    assert_eq!(previous_end, extracted.text.len(), "{}", path.display());
}

#[tokio::test]
async fn pdf_pages_text_and_encryption_come_through() {
    let sandbox = Sandbox::new(env!("CARGO_BIN_EXE_ragpipe").into(), ExtractSettings::default());
    let paper = extract_pdf(&sandbox, support::corpus("pdf/pdf.js/tracemonkey.pdf"), None).await.expect("tracemonkey");
    assert_eq!(paper.pages.len(), 14);
    let first = &paper.text[paper.pages[0].start..paper.pages[0].end];
    assert!(first.contains("Trace-based Just-in-Time Type Specialization"), "{first:.300}");
    let locked = support::corpus("pdf/py-pdf_sample-files/libreoffice-writer-password.pdf");
    assert_eq!(extract_pdf(&sandbox, locked, None).await.err(), Some(ExtractError::Encrypted));
    let fake = support::corpus("pdf/_negative_not_a_pdf/paper-100k.pdf");
    assert_eq!(extract_pdf(&sandbox, fake, None).await.map_err(|e| e.code()).err(), Some("unsupported_type"));
}
