//! Fuzzes `extract_pdf` with small limits. libFuzzer's panic hook aborts on any panic, so
//! panics that production would catch (`catch_unwind` in `extract_pdf`) are still found.
//!
//! Run from the repository root (see `fuzz/run.sh`):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run pdf -s none fuzz/corpus/pdf ../shared/corpus/pdf -- -timeout=10 -rss_limit_mb=1024`

#![no_main]

use libfuzzer_sys::fuzz_target;

// The module is compiled here directly rather than through the `ragpipe` crate, whose other
// modules pull in heavy native dependencies; it only uses paths relative to itself.
#[path = "../../src/extract/pdf.rs"]
#[allow(dead_code)]
mod pdf;

fuzz_target!(|data: &[u8]| {
    let limits = pdf::PdfLimits { max_pages: 50, max_chars: 200_000, ..pdf::PdfLimits::default() };
    let _ = pdf::extract_pdf(data, None, &limits);
    let _ = pdf::extract_pdf(data, Some("foo"), &limits);
});
