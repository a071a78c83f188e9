//! Human and JSON rendering of a chunk list, for `ragpipe chunk <file>`.

use std::fmt::Write as _;

use super::Chunk;

/// Characters of a chunk shown before and after the elision in human output.
const PREVIEW_HEAD: usize = 72;
const PREVIEW_TAIL: usize = 24;

/// Renders `chunks` as pretty JSON (`json`), or as a summary line plus one entry per chunk
/// with token count, byte/char offsets, pages, heading path and a one-line text preview.
pub fn render(chunks: &[Chunk], json: bool) -> String {
    if json {
        // Serialising plain strings and integers cannot fail; keep the output JSON if it does.
        return serde_json::to_string_pretty(chunks)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    }
    let mut out = summary(chunks);
    for (i, c) in chunks.iter().enumerate() {
        let _ = write!(
            out,
            "#{i:<4} {:>4} tok  {:<9} bytes {}..{}  chars {}..{}",
            c.token_count,
            c.strategy.name(),
            c.byte_start,
            c.byte_end,
            c.char_start,
            c.char_end
        );
        match (c.page_start, c.page_end) {
            (Some(a), Some(b)) if a != b => {
                let _ = write!(out, "  pages {a}-{b}");
            }
            (Some(a), _) | (None, Some(a)) => {
                let _ = write!(out, "  page {a}");
            }
            (None, None) => {}
        }
        if let Some(path) = &c.heading_path {
            let _ = write!(out, "  [{path}]");
        }
        let _ = writeln!(out, "\n      {}", preview(&c.text));
    }
    out
}

fn summary(chunks: &[Chunk]) -> String {
    let counts: Vec<usize> = chunks.iter().map(|c| c.token_count).collect();
    let total: usize = counts.iter().sum();
    let (min, max) = (counts.iter().min(), counts.iter().max());
    match (min, max) {
        (Some(min), Some(max)) => {
            format!("{} chunks, {total} tokens (min {min}, mean {}, max {max})\n", chunks.len(), total / chunks.len())
        }
        _ => "0 chunks\n".to_owned(),
    }
}

/// One line: the start and end of the text, with line breaks shown as ⏎.
fn preview(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| match c {
            '\n' => '⏎',
            '\r' | '\t' => ' ',
            c => c,
        })
        .collect();
    let n = flat.chars().count();
    if n <= PREVIEW_HEAD + PREVIEW_TAIL + 3 {
        return flat;
    }
    let head: String = flat.chars().take(PREVIEW_HEAD).collect();
    let tail: String = flat.chars().skip(n - PREVIEW_TAIL).collect();
    format!("{head} … {tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Strategy;

    fn sample() -> Vec<Chunk> {
        vec![Chunk {
            text: "Install it with apt.\nThen run it.".to_owned(),
            token_count: 9,
            byte_start: 20,
            byte_end: 53,
            char_start: 18,
            char_end: 51,
            page_start: Some(2),
            page_end: Some(3),
            heading_path: Some("Install > Linux".to_owned()),
            strategy: Strategy::Markdown,
        }]
    }

    #[test]
    fn human_output_shows_counts_offsets_pages_path_and_preview() {
        let out = render(&sample(), false);
        assert!(out.starts_with("1 chunks, 9 tokens"), "{out}");
        for part in ["bytes 20..53", "chars 18..51", "pages 2-3", "[Install > Linux]", "apt.⏎Then"] {
            assert!(out.contains(part), "{part} missing from {out}");
        }
    }

    #[test]
    fn json_output_round_trips() {
        let chunks = sample();
        let parsed: Vec<Chunk> = serde_json::from_str(&render(&chunks, true)).expect("valid JSON");
        assert_eq!(parsed, chunks);
    }

    #[test]
    fn long_text_is_elided_in_the_middle() {
        assert_eq!(preview(&"x".repeat(500)).chars().count(), PREVIEW_HEAD + PREVIEW_TAIL + 3);
        assert_eq!(render(&[], false), "0 chunks\n");
    }
}
