//! Text family: encoding detection, normalisation, Markdown detection, HTML tokenizer sink.
//! The first byte picks the declared type so all three paths are reached.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use ragpipe::extract::Hints;

const NAMES: [Option<&str>; 4] = [None, Some("a.txt"), Some("a.md"), Some("a.html")];
const TYPES: [Option<&str>; 4] =
    [None, Some("text/plain; charset=iso-8859-2"), Some("text/markdown"), Some("text/html; charset=shift_jis")];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if common::is_pdf(body) || body.starts_with(b"PK") {
        return;
    }
    let hints = Hints {
        filename: NAMES[usize::from(selector & 3)],
        content_type: TYPES[usize::from((selector >> 2) & 3)],
        password: None,
    };
    common::extract_and_check(body, &hints);
});
