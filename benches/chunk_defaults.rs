//! The measurements behind the `[chunk]` defaults, on the shared corpus at the default
//! `max_tokens` (how that one was chosen: `benches/chunk_vs_langchain.py --minilm-fit`).
//!
//! `cargo bench --bench chunk_defaults`
//!
//! 1. Strategies: chunks, fill, tiny chunks, and how often a chunk ends cleanly (at a paragraph
//!    end or after sentence-final punctuation) rather than mid-sentence.
//! 2. `resync_tokens`: extra chunks it costs versus how many chunks one edit disturbs. Each
//!    edit appends a sentence to one paragraph (chosen by a fixed pseudo-random sequence, never
//!    a code fence line, which would turn the rest of a Markdown file inside out); a disturbed
//!    chunk is one of the edited document whose text the original did not have. Besides the
//!    corpus, a synthetic document of 300 paragraphs of just under half `max_tokens`: two fit
//!    a chunk, and a paragraph that grows by the edit no longer pairs with its neighbour, the
//!    worst case for plain greedy packing.
//! 3. `min_tokens`: how many tiny chunks remain.
//! 4. `overlap_tokens`: how many more tokens get embedded.

use std::collections::HashMap;

use ragpipe::chunk::{Chunk, ChunkInput, ChunkSettings, Chunker, Strategy};

const EDITS_PER_DOC: usize = 40;

struct Doc {
    text: String,
    markdown: bool,
}

fn corpus() -> std::io::Result<Vec<Doc>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/");
    let load = |path: &str| -> std::io::Result<String> {
        let raw = std::fs::read_to_string(format!("{root}{path}"))?;
        // As extraction hands it over: no BOM, LF line ends.
        Ok(raw.trim_start_matches('\u{feff}').replace("\r\n", "\n"))
    };
    let mut quijote = load("text/pg2000_don_quijote_es.txt")?;
    quijote.truncate(quijote.floor_char_boundary(600_000));
    Ok(vec![
        Doc { text: load("markdown/pandoc_MANUAL.md")?, markdown: true },
        Doc { text: load("markdown/mammoth.js_README.md")?, markdown: true },
        Doc { text: load("text/rfc2616.txt")?, markdown: false },
        Doc { text: load("text/tinyshakespeare.txt")?, markdown: false },
        Doc { text: load("text/alice29.txt")?, markdown: false },
        Doc { text: quijote, markdown: false },
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let docs = corpus()?;
    println!("max_tokens = {}", max_tokens());
    strategies(&docs)?;
    println!("\n2a. corpus");
    resync(&docs)?;
    println!("\n2b. synthetic: 300 paragraphs of just under half max_tokens");
    resync(&[uniform_paragraphs(&docs[4].text)?])?;
    min_tokens(&docs)?;
    overlap(&docs)?;
    Ok(())
}

fn max_tokens() -> usize {
    ChunkSettings::default().max_tokens
}

fn chunker(settings: ChunkSettings) -> Result<Chunker, Box<dyn std::error::Error>> {
    Ok(Chunker::new(&settings)?)
}

fn input(doc: &Doc) -> ChunkInput<'_> {
    ChunkInput { text: &doc.text, markdown: doc.markdown, pages: &[] }
}

fn strategies(docs: &[Doc]) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n1. strategies at {} tokens (all documents)", max_tokens());
    println!("{:<10} {:>7} {:>6} {:>9} {:>11}", "strategy", "chunks", "fill", "<32 tok", "clean ends");
    let chunker = chunker(ChunkSettings::default())?;
    for strategy in [Strategy::Semantic, Strategy::Markdown, Strategy::Recursive, Strategy::Fixed] {
        let (mut chunks, mut tokens, mut tiny, mut clean) = (0, 0, 0, 0);
        for doc in docs {
            let out = chunker.chunk_with(&input(doc), strategy, max_tokens(), 0);
            chunks += out.len();
            tokens += out.iter().map(|c| c.token_count).sum::<usize>();
            tiny += out.iter().filter(|c| c.token_count < 32).count();
            clean += out.iter().filter(|c| ends_cleanly(&doc.text, c)).count();
        }
        println!(
            "{:<10} {chunks:>7} {:>5.0}% {:>8.1}% {:>10.1}%",
            strategy.name(),
            100.0 * tokens as f64 / (chunks * max_tokens()) as f64,
            100.0 * tiny as f64 / chunks as f64,
            100.0 * clean as f64 / chunks as f64
        );
    }
    Ok(())
}

/// The chunk ends where a paragraph ends, or after sentence-final punctuation.
fn ends_cleanly(text: &str, chunk: &Chunk) -> bool {
    let rest = &text[chunk.byte_end..];
    let paragraph_end = rest.trim_start_matches([' ', '\t']).starts_with("\n\n") || rest.trim().is_empty();
    let last = chunk.text.trim_end_matches(['"', '\'', ')', ']', '`', '*', '”', '’', '»']).chars().next_back();
    paragraph_end || matches!(last, Some('.' | '!' | '?' | ':' | ';' | '。' | '！' | '？'))
}

/// 300 distinct paragraphs of `max_tokens / 2 - 4` tokens or a few more, from consecutive
/// words of `source`: two always fit one chunk, but not once one has grown by the edit.
fn uniform_paragraphs(source: &str) -> Result<Doc, Box<dyn std::error::Error>> {
    let counter = chunker(ChunkSettings::default())?;
    let mut words = source.split_whitespace().cycle();
    let mut paragraphs = Vec::new();
    while paragraphs.len() < 300 {
        let mut p = String::new();
        while counter.count_tokens(&p) < max_tokens() / 2 - 4 {
            p.push_str(words.next().unwrap_or("word"));
            p.push(' ');
        }
        paragraphs.push(p.trim_end().to_owned());
    }
    Ok(Doc { text: paragraphs.join("\n\n"), markdown: false })
}

fn resync(docs: &[Doc]) -> Result<(), Box<dyn std::error::Error>> {
    println!("resync_tokens: cost in chunks vs chunks disturbed by one edit ({EDITS_PER_DOC} edits per document)");
    println!("{:<8} {:>7} {:>6} {:>14} {:>9} {:>5}", "resync", "chunks", "fill", "disturbed mean", "p95", "max");
    for resync in [0, 512, 1024, 2048, 4096, 8192] {
        let chunker = chunker(ChunkSettings { resync_tokens: resync, ..ChunkSettings::default() })?;
        let (mut chunks, mut tokens, mut disturbed) = (0, 0, Vec::new());
        for doc in docs {
            let original = chunker.chunk(&input(doc));
            chunks += original.len();
            tokens += original.iter().map(|c| c.token_count).sum::<usize>();
            for edited in edits(&doc.text) {
                let after = chunker.chunk(&ChunkInput { text: &edited, ..input(doc) });
                disturbed.push(changed(&original, &after));
            }
        }
        disturbed.sort_unstable();
        let mean = disturbed.iter().sum::<usize>() as f64 / disturbed.len() as f64;
        let p95 = disturbed[disturbed.len() * 95 / 100];
        println!(
            "{resync:<8} {chunks:>7} {:>5.0}% {mean:>14.1} {p95:>9} {:>5}",
            100.0 * tokens as f64 / (chunks * max_tokens()) as f64,
            disturbed.last().copied().unwrap_or(0)
        );
    }
    Ok(())
}

/// Copies of `text`, each with a sentence appended to one paragraph.
fn edits(text: &str) -> Vec<String> {
    let ends: Vec<usize> = text
        .match_indices("\n\n")
        .map(|(i, _)| i)
        .filter(|&i| {
            let line = text[..i].rsplit('\n').next().unwrap_or_default().trim_start();
            !line.starts_with("```") && !line.starts_with("~~~")
        })
        .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..EDITS_PER_DOC)
        .filter_map(|_| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let at = *ends.get((seed >> 33) as usize % ends.len().max(1))?;
            Some(format!("{} This sentence was added by an edit.{}", &text[..at], &text[at..]))
        })
        .collect()
}

/// Chunks of `after` whose text `before` did not have (as a multiset).
fn changed(before: &[Chunk], after: &[Chunk]) -> usize {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for c in before {
        *seen.entry(c.text.as_str()).or_default() += 1;
    }
    after
        .iter()
        .filter(|c| match seen.get_mut(c.text.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .count()
}

fn min_tokens(docs: &[Doc]) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n3. min_tokens: tiny chunks left (default strategies)");
    println!("{:<6} {:>7} {:>9} {:>9}", "min", "chunks", "<16 tok", "<32 tok");
    for min in [0, 16, 32, 64] {
        let chunker = chunker(ChunkSettings { min_tokens: min, ..ChunkSettings::default() })?;
        let all: Vec<Chunk> = docs.iter().flat_map(|d| chunker.chunk(&input(d))).collect();
        let below = |n: usize| all.iter().filter(|c| c.token_count < n).count();
        println!("{min:<6} {:>7} {:>9} {:>9}", all.len(), below(16), below(32));
    }
    Ok(())
}

fn overlap(docs: &[Doc]) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n4. overlap_tokens: embedding cost (default strategies)");
    println!("{:<8} {:>7} {:>15}", "overlap", "chunks", "tokens embedded");
    let chunker = chunker(ChunkSettings::default())?;
    for overlap in [0, 16, 32, 64] {
        let (mut chunks, mut tokens) = (0, 0);
        for doc in docs {
            let strategy = if doc.markdown { Strategy::Markdown } else { Strategy::Semantic };
            let out = chunker.chunk_with(&input(doc), strategy, max_tokens(), overlap);
            chunks += out.len();
            tokens += out.iter().map(|c| c.token_count).sum::<usize>();
        }
        println!("{overlap:<8} {chunks:>7} {tokens:>15}");
    }
    Ok(())
}
