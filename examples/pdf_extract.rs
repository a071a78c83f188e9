//! Extracts one PDF and prints its pages, separated by form feeds; the error (if any) and
//! timing go to stderr. Used by `benches/pdf_recall.sh` for peak memory (`/usr/bin/time -v`)
//! and handy for looking at what the extractor makes of a file.
//!
//! Usage: `cargo run --release --example pdf_extract -- FILE [PASSWORD]`

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use ragpipe::extract::pdf::{PdfLimits, extract_pdf};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: pdf_extract FILE [PASSWORD]");
        return ExitCode::from(2);
    };
    let password = args.next();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let result = extract_pdf(&bytes, password.as_deref(), &PdfLimits::default());
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok(pages) => {
            let text: Vec<&str> = pages.iter().map(|p| p.text.as_str()).collect();
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().lock().write_all(text.join("\n\x0c").as_bytes());
            eprintln!("{} pages in {secs:.3}s", pages.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:?} ({e}) after {secs:.3}s");
            ExitCode::FAILURE
        }
    }
}
