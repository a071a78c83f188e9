//! DOCX word recall against pandoc's expected parses (`corpus/docx/pandoc/_expected_native/`):
//! per file, worst first, then the average. Run: `cargo bench --bench docx_recall`.

#[path = "../tests/support/pandoc_native.rs"]
mod pandoc_native;

use std::path::Path;

use ragpipe::extract::{ExtractSettings, Hints, extract_in_process};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/docx/pandoc");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = ExtractSettings::default();
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(Path::new(CORPUS).join("_expected_native"))? {
        let native_path = entry?.path();
        let Some(stem) = native_path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let docx = Path::new(CORPUS).join(format!("{stem}.docx"));
        let expected = pandoc_native::str_words(&std::fs::read_to_string(&native_path)?);
        let bytes = std::fs::read(&docx)?;
        let text = extract_in_process(&bytes, &Hints::default(), &settings).map(|e| e.text).unwrap_or_default();
        let (recall, missing) = pandoc_native::word_recall(&expected, &text);
        rows.push((recall, stem.to_owned(), expected.len(), missing));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    println!("{:<36} {:>6} {:>7}  missing (first 8)", "file", "words", "recall");
    for (recall, name, words, missing) in &rows {
        let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
        println!("{name:<36} {words:>6} {recall:>7.4}  {}", shown.join(" "));
    }
    let average = rows.iter().map(|r| r.0).sum::<f64>() / rows.len().max(1) as f64;
    let (words, missed) = rows.iter().fold((0, 0), |(w, m), r| (w + r.2, m + r.3.len()));
    println!(
        "files: {}  average recall: {average:.4}  pooled recall: {:.4}",
        rows.len(),
        1.0 - missed as f64 / words.max(1) as f64
    );
    Ok(())
}
