//! The whole in-process entry point (type sniffing and every extractor) except PDF.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ragpipe::extract::Hints;

fuzz_target!(|data: &[u8]| {
    if common::is_pdf(data) {
        return;
    }
    common::extract_and_check(data, &Hints::default());
});
