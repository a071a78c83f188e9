//! Extraction quality and speed on the shared PDF corpus. Run: `cargo bench --bench pdf_recall`
//! (needs `pdftotext` from poppler-utils as the reference).
//!
//! Word recall of a file = the fraction of the reference's word multiset that our text also
//! has: `Σ_w min(ours(w), ref(w)) / Σ_w ref(w)`. The reference is `pdftotext -layout` (with
//! the file's password where the corpus README gives one). Both texts are NFKC-normalised and
//! lower-cased; a word is a maximal run of alphanumeric characters, except that each Han,
//! kana and Hangul character counts as a word of its own (those scripts put no spaces between
//! words, so a "run" would be a whole line). Files where pdftotext yields no words are left
//! out of the average.
//!
//! A second figure uses a "visible" reference: pdftotext restricted (`-x -y -W -H`) to the
//! crop box when every page of a file has the same crop box, smaller than its media box.
//! Viewers show only the crop box, and we drop text outside it (printer's marks), which the
//! plain reference counts against us.
//!
//! Also prints: whether tracemonkey.pdf reads each page's left column before its right one,
//! and pages/s on freeculture.pdf (352 pages, in-process, one thread).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ragpipe::extract::pdf::{PdfLimits, extract_pdf};
use unicode_normalization::UnicodeNormalization;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/pdf");

/// Passwords from the corpus README.
const PASSWORDS: &[(&str, &str)] = &[
    ("pdfminer.six/aes-128.pdf", "foo"),
    ("pdfminer.six/rc4-128.pdf", "foo"),
    ("pdfminer.six/aes-256-r6.pdf", "usersecret"),
    ("py-pdf_sample-files/libreoffice-writer-password.pdf", "openpassword"),
    ("pdf.js/issue6010_1.pdf", "abc"),
    ("pdf.js/issue21579.pdf", "pässwört"),
];

/// Files where pdftotext's text is not the document's text, so recall against it measures
/// agreement with a wrong answer. Reported separately, with the reason.
const WRONG_REFERENCE: &[(&str, &str)] = &[
    ("pdf.js/SimFang-variant.pdf", "GBK text in a font named 黑体 printed as WinAnsi: \"È« ÊÀ\" for \"全世\""),
    ("pdf.js/ThuluthFeatures.pdf", "CIDs of fonts without /ToUnicode printed as code points (Greek/Cyrillic noise)"),
    (
        "pdfminer.six/issue-791-non-unicode-cmap.pdf",
        "CIDs printed as code points: \"3HQČåQtSURVW\" for \"Peněžní prostředky\"",
    ),
    ("py-pdf_sample-files/habibi.pdf", "Arabic in visual order (letters reversed)"),
    ("py-pdf_sample-files/habibi-oneline-cmap.pdf", "Arabic in visual order (letters reversed)"),
];

fn main() {
    let files = corpus_files();
    recall(&files);
    reading_order();
    throughput();
}

fn corpus_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from(CORPUS)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
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

fn relative(path: &Path) -> String {
    path.strip_prefix(CORPUS).unwrap_or(path).display().to_string()
}

fn password(rel: &str) -> Option<&'static str> {
    PASSWORDS.iter().find(|(f, _)| *f == rel).map(|(_, p)| *p)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

/// The word multiset of a text, as defined at the top of this file.
fn words(text: &str) -> HashMap<String, usize> {
    let norm: String = text.nfkc().flat_map(char::to_lowercase).collect();
    let mut out: HashMap<String, usize> = HashMap::new();
    let mut word = String::new();
    let mut flush = |w: &mut String| {
        if !w.is_empty() {
            *out.entry(std::mem::take(w)).or_default() += 1;
        }
    };
    for c in norm.chars() {
        if is_cjk(c) {
            flush(&mut word);
            word.push(c);
            flush(&mut word);
        } else if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word);
        }
    }
    flush(&mut word);
    out
}

fn pdftotext(path: &Path, password: Option<&str>, extra: &[&str]) -> Option<String> {
    let mut cmd = Command::new("pdftotext");
    cmd.args(extra);
    if let Some(pw) = password {
        // Some corpus passwords are owner passwords; pdftotext needs to be told which.
        cmd.args(["-opw", pw, "-upw", pw]);
    }
    let out = cmd.arg(path).arg("-").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// pdftotext's text of the visible area: page ranges that share their boxes, each run with
/// `-x -y -W -H` set to the crop box when it is smaller than the media box.
fn visible_text(path: &Path, password: Option<&str>) -> Option<String> {
    let out = Command::new("pdfinfo").args(["-box", "-f", "1", "-l", "100000"]).arg(path).output().ok()?;
    let info = String::from_utf8_lossy(&out.stdout);
    // Per page: [x0, y0, x1, y1] of the media box, then of the crop box.
    let boxes = |name: &str| -> Vec<Vec<f64>> {
        let tag = format!(" {name}:");
        info.lines()
            .filter(|l| l.contains(&tag))
            .map(|l| l.split(&tag).nth(1).unwrap_or("").split_whitespace().filter_map(|v| v.parse().ok()).collect())
            .collect()
    };
    let pages: Vec<(Vec<f64>, Vec<f64>)> = boxes("MediaBox").into_iter().zip(boxes("CropBox")).collect();
    let mut text = String::new();
    let mut first = 0;
    while first < pages.len() {
        let mut last = first;
        while pages.get(last + 1) == pages.get(first).as_ref().map(|p| *p) {
            last += 1;
        }
        let (m, c) = &pages[first];
        let (f, l) = ((first + 1).to_string(), (last + 1).to_string());
        let mut args: Vec<String> = ["-layout", "-f", &f, "-l", &l].map(String::from).to_vec();
        if m != c && m.len() == 4 && c.len() == 4 {
            let area = [c[0] - m[0], m[3] - c[3], c[2] - c[0], c[3] - c[1]];
            for (k, v) in ["-x", "-y", "-W", "-H"].iter().zip(area) {
                args.extend([k.to_string(), format!("{}", v.round())]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        text.push_str(&pdftotext(path, password, &args)?);
        first = last + 1;
    }
    Some(text)
}

fn recall_of(reference: &HashMap<String, usize>, ours: &HashMap<String, usize>) -> Option<f64> {
    let total: usize = reference.values().sum();
    let hit: usize = reference.iter().map(|(w, n)| (*n).min(ours.get(w).copied().unwrap_or(0))).sum();
    (total > 0).then(|| hit as f64 / total as f64)
}

fn recall(files: &[PathBuf]) {
    println!("== word recall against pdftotext -layout (plain | visible area) ==");
    let mut scores: Vec<(f64, String)> = Vec::new();
    let mut visible_scores: Vec<f64> = Vec::new();
    for path in files {
        let rel = relative(path);
        let pw = password(&rel);
        let reference = pdftotext(path, pw, &["-layout"]).map(|t| words(&t)).unwrap_or_default();
        let visible = visible_text(path, pw).map(|t| words(&t)).unwrap_or_else(|| reference.clone());
        let total: usize = reference.values().sum();
        let bytes = std::fs::read(path).unwrap_or_default();
        let start = Instant::now();
        let result = extract_pdf(&bytes, pw, &PdfLimits::default());
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let (ours, status) = match &result {
            Ok(pages) => {
                let text: Vec<&str> = pages.iter().map(|p| p.text.as_str()).collect();
                (words(&text.join("\n")), format!("{} pages", pages.len()))
            }
            Err(e) => (HashMap::new(), format!("{e:?}")),
        };
        if total == 0 {
            println!("   -    {:>6} {ms:>7.1}ms  {rel}  [{status}; pdftotext has no words]", 0);
            continue;
        }
        let r = recall_of(&reference, &ours).unwrap_or(0.0);
        let v = recall_of(&visible, &ours).unwrap_or(r);
        println!("{r:.3} | {v:.3}  {total:>6} {ms:>7.1}ms  {rel}  [{status}]");
        scores.push((r, rel));
        visible_scores.push(v);
    }
    let mean = |v: &mut dyn Iterator<Item = f64>, n: usize| v.sum::<f64>() / n.max(1) as f64;
    let avg = mean(&mut scores.iter().map(|s| s.0), scores.len());
    let visible_avg = mean(&mut visible_scores.iter().copied(), visible_scores.len());
    let trusted: Vec<f64> = scores
        .iter()
        .zip(&visible_scores)
        .filter(|((_, rel), _)| !WRONG_REFERENCE.iter().any(|(f, _)| f == rel))
        .map(|(_, v)| *v)
        .collect();
    let trusted_avg = mean(&mut trusted.iter().copied(), trusted.len());
    scores.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("AVERAGE recall over {} files: {avg:.4} (visible-area reference: {visible_avg:.4})", scores.len());
    println!(
        "AVERAGE over the {} files whose reference is real text (visible area): {trusted_avg:.4}; left out:",
        trusted.len()
    );
    for (rel, why) in WRONG_REFERENCE {
        println!("  {rel}: {why}");
    }
    println!("worst 5:");
    for (r, rel) in scores.iter().take(5) {
        println!("  {r:.3}  {rel}");
    }
}

/// Lines of one page as pdftotext's layout analysis sees them: (xMin, xMax, text).
fn bbox_lines(path: &Path, page: usize) -> (f64, Vec<(f64, f64, String)>) {
    let p = page.to_string();
    let html = pdftotext(path, None, &["-bbox-layout", "-f", &p, "-l", &p]).unwrap_or_default();
    let attr = |tag: &str, name: &str| -> f64 {
        let key = format!("{name}=\"");
        tag.find(&key).and_then(|i| tag[i + key.len()..].split('"').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    let width = html.find("<page ").map_or(0.0, |i| attr(&html[i..], "width"));
    let mut lines = Vec::new();
    for chunk in html.split("<line ").skip(1) {
        let text: Vec<&str> =
            chunk.split("<word ").skip(1).filter_map(|w| w.split('>').nth(1)?.split('<').next()).collect();
        lines.push((attr(chunk, "xMin"), attr(chunk, "xMax"), text.join(" ")));
    }
    (width, lines)
}

/// On every page of tracemonkey.pdf, each line pdftotext places wholly in the left column
/// must appear in our text before every line wholly in the right column. Lines are found
/// by their first five words, when those are unique on the page.
fn reading_order() {
    println!("== reading order: tracemonkey.pdf ==");
    let path = Path::new(CORPUS).join("pdf.js/tracemonkey.pdf");
    let bytes = std::fs::read(&path).unwrap_or_default();
    let Ok(pages) = extract_pdf(&bytes, None, &PdfLimits::default()) else {
        println!("FAILED: extraction error");
        return;
    };
    let mut bad_pages = 0;
    for page in &pages {
        let (width, lines) = bbox_lines(&path, page.number as usize);
        let ours = squash(&page.text);
        let mid = width / 2.0;
        let find = |(x0, x1, text): &(f64, f64, String), left: bool| {
            let column_ok = if left { *x1 < mid } else { *x0 > mid };
            let probe = squash(&text.split(' ').take(5).collect::<Vec<_>>().join(" "));
            let unique = probe.len() >= 12 && ours.matches(&probe).count() == 1;
            (column_ok && unique).then(|| ours.find(&probe)).flatten()
        };
        let last_left = lines.iter().filter_map(|l| find(l, true)).max();
        let first_right = lines.iter().filter_map(|l| find(l, false)).min();
        let ok = match (last_left, first_right) {
            (Some(l), Some(r)) => l < r,
            _ => true,
        };
        if !ok {
            bad_pages += 1;
        }
        println!("page {:>2}: {}", page.number, if ok { "left column first" } else { "MIXED" });
    }
    println!("tracemonkey reading order: {}", if bad_pages == 0 { "OK" } else { "FAILED" });
}

/// Letters and digits only, lower-cased: hyphenation and spacing differences aside.
fn squash(s: &str) -> String {
    s.nfkc().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

fn throughput() {
    println!("== throughput: freeculture.pdf ==");
    let path = Path::new(CORPUS).join("pdf.js/freeculture.pdf");
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let pages = extract_pdf(&bytes, None, &PdfLimits::default()).map_or(0, |p| p.len());
        rates.push(pages as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!("pages/s over 5 runs: median {:.0}, best {:.0}", rates[2], rates[4]);
}
