//! Shared by the fuzz targets: limits small enough for libFuzzer's RSS cap, and the invariants
//! every successful extraction must hold.
#![allow(dead_code)] // each target uses a subset

use ragpipe::extract::{ExtractError, ExtractSettings, Extracted, Hints, extract_in_process};

/// Default settings with smaller zip and text budgets (the limits themselves are under test).
pub fn settings() -> ExtractSettings {
    ExtractSettings { zip_max_uncompressed_bytes: 16 * 1024 * 1024, max_chars: 1_000_000, ..ExtractSettings::default() }
}

/// Whether the input would take the PDF path (the PDF parser is fuzzed separately).
pub fn is_pdf(data: &[u8]) -> bool {
    data[..data.len().min(1024)].windows(5).any(|w| w == b"%PDF-")
}

/// Extracts and checks the output invariants.
pub fn extract_and_check(data: &[u8], hints: &Hints<'_>) {
    let settings = settings();
    match extract_in_process(data, hints, &settings) {
        Ok(extracted) => check(&extracted, &settings),
        Err(err) => check_error(&err),
    }
}

fn check(extracted: &Extracted, settings: &ExtractSettings) {
    let text = &extracted.text;
    assert!(!text.trim().is_empty(), "Ok with empty text");
    assert!(!text.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "control character in output");
    assert!(text.chars().count() <= settings.max_chars, "character limit not enforced");
    assert!(extracted.pages.is_empty(), "pages for an unpaged kind");
}

fn check_error(err: &ExtractError) {
    // In process, only document-level failures are possible.
    assert!(
        !matches!(
            err,
            ExtractError::TimedOut { .. }
                | ExtractError::Crashed(_)
                | ExtractError::MemoryLimit
                | ExtractError::Internal(_)
        ),
        "sandbox-only error in process: {err:?}"
    );
    assert!(!err.to_string().is_empty());
}
