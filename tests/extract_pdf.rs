//! `extract_pdf` against the shared corpus of real PDFs: every file ends as pages or a named
//! error within a time limit, and the text of many files says what they really say.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ragpipe::extract::pdf::{PdfError, PdfLimits, PdfPage, extract_pdf};
use unicode_normalization::is_nfkc;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/pdf");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pdf");
/// Generous for a debug build on a busy machine; a release build needs well under a second
/// for any corpus file. A hang fails the test instead of blocking it.
const TIMEOUT: Duration = Duration::from_secs(120);

// Split by theme to keep files short; they share the helpers below.
#[path = "extract_pdf/content.rs"]
mod content;
#[path = "extract_pdf/hostile.rs"]
mod hostile;
#[path = "extract_pdf/security.rs"]
mod security;

type Outcome = Result<Vec<PdfPage>, PdfError>;

/// Runs `extract_pdf` on its own thread, failing the test on a timeout or a panic.
fn extract_bytes(name: &str, bytes: Vec<u8>, password: Option<&str>, limits: PdfLimits) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let password = password.map(str::to_owned);
    std::thread::spawn(move || {
        let _ = tx.send(extract_pdf(&bytes, password.as_deref(), &limits));
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: no result after {TIMEOUT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{name}: extraction panicked"),
    }
}

fn corpus_path(rel: &str) -> PathBuf {
    Path::new(CORPUS).join(rel)
}

fn extract_with(rel: &str, password: Option<&str>) -> Outcome {
    let bytes = std::fs::read(corpus_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    extract_bytes(rel, bytes, password, PdfLimits::default())
}

fn pages(rel: &str) -> Vec<PdfPage> {
    extract_with(rel, None).unwrap_or_else(|e| panic!("{rel}: {e:?}"))
}

fn text(rel: &str) -> String {
    let texts: Vec<String> = pages(rel).into_iter().map(|p| p.text).collect();
    texts.join("\n\n")
}

fn assert_contains(rel: &str, haystack: &str, needles: &[&str]) {
    for needle in needles {
        assert!(haystack.contains(needle), "{rel}: missing {needle:?}");
    }
}

fn pdf_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "pdf") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// What every corpus file must end as, read without a password.
fn expected_outcome(rel: &str) -> &'static str {
    match rel {
        "_negative_not_a_pdf/paper-100k.pdf" => "NotPdf",
        "pdfminer.six/aes-128.pdf"
        | "pdfminer.six/rc4-128.pdf"
        | "pdfminer.six/aes-256-r6.pdf"
        | "py-pdf_sample-files/libreoffice-writer-password.pdf"
        | "pdf.js/issue6010_1.pdf"
        | "pdf.js/issue21579.pdf"
        | "pdf.js/print_protection.pdf" => "Encrypted",
        "OCRmyPDF/linn.pdf"
        | "OCRmyPDF/c02-22.pdf"
        | "OCRmyPDF/epson.pdf"
        | "OCRmyPDF/graph.pdf"
        | "OCRmyPDF/trivial.pdf"
        | "OCRmyPDF/no_contents.pdf"
        | "OCRmyPDF/type3_font_nomapping.pdf"
        | "py-pdf_sample-files/imagemagick-CCITTFaxDecode.pdf"
        | "py-pdf_sample-files/imagemagick-lzw.pdf"
        | "py-pdf_sample-files/cmyk-image.pdf"
        | "pdfminer.six/pdf-with-jbig2.pdf"
        | "pdfminer.six/encrypted_doc_no_id.pdf"
        | "pdf.js/empty.pdf"
        | "pdf.js/GHOSTSCRIPT-698804-1-fuzzed.pdf" => "NoText",
        "OCRmyPDF/invalid.pdf" | "pdf.js/poppler-742-0-fuzzed.pdf" | "pdf.js/poppler-937-0-fuzzed.pdf" => "Corrupt",
        _ => "Ok",
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Ok(_) => "Ok",
        Err(PdfError::Encrypted) => "Encrypted",
        Err(PdfError::NoText) => "NoText",
        Err(PdfError::NotPdf) => "NotPdf",
        Err(PdfError::TooManyPages { .. }) => "TooManyPages",
        Err(PdfError::TooLong { .. }) => "TooLong",
        Err(PdfError::StreamTooLarge { .. }) => "StreamTooLarge",
        Err(PdfError::Garbled { .. }) => "Garbled",
        Err(PdfError::Corrupt(_)) => "Corrupt",
    }
}

/// Pages are numbered 1..=n and hold NFKC text without control characters other than `\n`.
fn assert_well_formed(name: &str, pages: &[PdfPage]) {
    assert!(!pages.is_empty(), "{name}: Ok with no pages");
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.number as usize, i + 1, "{name}: page numbering");
        assert!(is_nfkc(&page.text), "{name} p{}: not NFKC", page.number);
        let bad = page.text.chars().find(|&c| c.is_control() && c != '\n');
        assert!(bad.is_none(), "{name} p{}: control character {bad:?}", page.number);
    }
    assert!(pages.iter().any(|p| !p.text.trim().is_empty()), "{name}: Ok but no text");
}

#[test]
fn every_corpus_pdf_ends_as_its_expected_outcome() {
    let files = pdf_files(Path::new(CORPUS));
    assert!(files.len() >= 60, "corpus not found at {CORPUS}");
    let mut wrong = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(CORPUS).unwrap_or(path).to_string_lossy().into_owned();
        let outcome = extract_with(&rel, None);
        if let Ok(pages) = &outcome {
            assert_well_formed(&rel, pages);
            // Every corpus file with text reads as text: none of its pages may be taken for
            // glyph garbage.
            let garbled: Vec<u32> = pages.iter().filter(|p| p.garbled).map(|p| p.number).collect();
            if !garbled.is_empty() {
                wrong.push(format!("{rel}: pages {garbled:?} taken for garbage"));
            }
        }
        if outcome_name(&outcome) != expected_outcome(&rel) {
            wrong.push(format!("{rel}: expected {}, got {:?}", expected_outcome(&rel), outcome.err()));
        }
    }
    assert!(wrong.is_empty(), "unexpected outcomes:\n{}", wrong.join("\n"));
}

#[test]
fn fuzz_regressions_end_as_pages_or_a_named_error() {
    let files = pdf_files(Path::new(FIXTURES));
    assert!(!files.is_empty(), "no fixtures in {FIXTURES}");
    for path in files {
        let name = path.display().to_string();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let small = PdfLimits { max_pages: 50, max_chars: 100_000, ..PdfLimits::default() };
        if let Ok(pages) = extract_bytes(&name, bytes, None, small) {
            assert_well_formed(&name, &pages);
        }
    }
}

#[test]
fn scans_without_a_text_layer_have_no_text() {
    for rel in [
        "OCRmyPDF/linn.pdf",
        "OCRmyPDF/c02-22.pdf",
        "OCRmyPDF/epson.pdf",
        "OCRmyPDF/graph.pdf",
        "py-pdf_sample-files/imagemagick-CCITTFaxDecode.pdf",
        "py-pdf_sample-files/imagemagick-lzw.pdf",
    ] {
        assert_eq!(extract_with(rel, None), Err(PdfError::NoText), "{rel}");
    }
}

#[test]
fn bytes_without_a_pdf_header_are_not_a_pdf() {
    assert_eq!(extract_with("_negative_not_a_pdf/paper-100k.pdf", None), Err(PdfError::NotPdf));
    let late_header: Vec<u8> = vec![b' '; 2048].into_iter().chain(*b"%PDF-1.4").collect();
    for bytes in [b"".to_vec(), b"hello".to_vec(), late_header] {
        let outcome = extract_bytes("inline", bytes.clone(), None, PdfLimits::default());
        assert_eq!(outcome, Err(PdfError::NotPdf), "{bytes:?}");
    }
}

#[test]
fn truncated_and_garbled_files_end_as_a_named_error_or_text() {
    let bytes = std::fs::read(corpus_path("pdf.js/tracemonkey.pdf")).unwrap_or_default();
    for cut in [10, 1_000, 100_000, bytes.len() / 2] {
        let outcome = extract_bytes("truncated", bytes[..cut.min(bytes.len())].to_vec(), None, PdfLimits::default());
        if let Ok(pages) = &outcome {
            assert_well_formed("truncated", pages);
        }
    }
    let garbage: Vec<u8> =
        b"%PDF-1.7\n".iter().copied().chain((0..50_000u32).map(|i| (i * 7919 % 251) as u8)).collect();
    let outcome = extract_bytes("garbage", garbage, None, PdfLimits::default());
    assert!(matches!(outcome, Err(PdfError::Corrupt(_))), "{outcome:?}");
}

#[test]
fn limits_stop_long_documents() {
    let rel = "pdf.js/freeculture.pdf";
    let bytes = std::fs::read(corpus_path(rel)).unwrap_or_default();
    let few_pages = PdfLimits { max_pages: 100, ..PdfLimits::default() };
    assert_eq!(extract_bytes(rel, bytes, None, few_pages), Err(PdfError::TooManyPages { pages: 352, max: 100 }));
    let rel = "pdf.js/tracemonkey.pdf";
    let total: usize = pages(rel).iter().map(|p| p.text.chars().count()).sum();
    let bytes = std::fs::read(corpus_path(rel)).unwrap_or_default();
    let exact = PdfLimits { max_chars: total, ..PdfLimits::default() };
    assert!(extract_bytes(rel, bytes.clone(), None, exact).is_ok());
    let short = PdfLimits { max_chars: total - 1, ..PdfLimits::default() };
    assert_eq!(extract_bytes(rel, bytes, None, short), Err(PdfError::TooLong { max: total - 1 }));
}
