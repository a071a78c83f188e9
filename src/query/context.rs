//! The context an answer is built from: the retrieved chunks numbered `[1]`, `[2]`, … with their
//! source names, within a token budget counted with the answering model's tokenizer (seed
//! article, challenge 4). When the next chunk does not fit and more than
//! [`MIN_TRUNCATED_TOKENS`] tokens remain, it is cut at the last sentence (or else word) boundary
//! that fits; otherwise it is dropped, and so are the chunks after it. The context never exceeds
//! the budget: the whole text is counted, not the sum of its parts.

use crate::messages::ResultChunk;

/// A chunk is truncated to fit only if at least this many tokens of it would remain.
pub const MIN_TRUNCATED_TOKENS: usize = 100;

/// One numbered source in the context.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Its number in the context: `[n]`.
    pub n: usize,
    /// The retrieved chunk (its full text).
    pub chunk: ResultChunk,
    /// The text the context holds (the chunk's, or a prefix of it when truncated).
    pub text: String,
    /// Whether `text` is a truncated prefix of the chunk.
    pub truncated: bool,
}

/// The numbered context.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Context {
    /// The text given to the model.
    pub text: String,
    /// Its sources, numbered from 1.
    pub sources: Vec<Source>,
    /// Tokens in `text`.
    pub tokens: usize,
}

impl Context {
    /// The source numbered `n`.
    pub fn source(&self, n: usize) -> Option<&Source> {
        n.checked_sub(1).and_then(|i| self.sources.get(i))
    }
}

/// The header naming a chunk's source: `[n] file, page p, Heading > Path`.
fn header(n: usize, chunk: &ResultChunk) -> String {
    let mut header = format!("[{n}] {}", chunk.filename);
    if let Some(page) = chunk.page {
        header.push_str(&format!(", page {page}"));
    }
    if let Some(heading) = chunk.heading_path.as_deref().filter(|h| !h.is_empty()) {
        header.push_str(&format!(", {heading}"));
    }
    header
}

fn block(n: usize, chunk: &ResultChunk, text: &str) -> String {
    format!("{}\n{}\n\n", header(n, chunk), text.trim())
}

/// Builds the context from `chunks` (best first) within `budget` tokens as `count` counts them.
pub fn build(chunks: &[ResultChunk], budget: usize, count: &dyn Fn(&str) -> usize) -> Context {
    let mut context = Context::default();
    for chunk in chunks {
        let n = context.sources.len() + 1;
        let whole = format!("{}{}", context.text, block(n, chunk, &chunk.text));
        let tokens = count(&whole);
        if tokens <= budget {
            context.text = whole;
            context.tokens = tokens;
            context.sources.push(Source {
                n,
                chunk: chunk.clone(),
                text: chunk.text.trim().to_owned(),
                truncated: false,
            });
            continue;
        }
        let empty = count(&format!("{}{}", context.text, block(n, chunk, "")));
        if budget.saturating_sub(empty) > MIN_TRUNCATED_TOKENS
            && let Some(cut) = truncate(&context.text, n, chunk, budget, count)
        {
            let whole = format!("{}{}", context.text, block(n, chunk, &cut));
            context.tokens = count(&whole);
            context.text = whole;
            context.sources.push(Source { n, chunk: chunk.clone(), text: cut, truncated: true });
        }
        break;
    }
    context
}

/// The longest prefix of the chunk's text that ends at a sentence boundary (else a word boundary)
/// and fits the budget with the context before it, if it has at least [`MIN_TRUNCATED_TOKENS`]
/// tokens.
fn truncate(
    before: &str,
    n: usize,
    chunk: &ResultChunk,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Option<String> {
    use unicode_segmentation::UnicodeSegmentation;
    let text = chunk.text.trim();
    let fits = |end: usize| count(&format!("{before}{}", block(n, chunk, &text[..end]))) <= budget;
    // Ends of sentences, then ends of words, in increasing order; the longest that fits wins
    // (fitting is monotone in the prefix length, so a binary search finds it).
    let longest = |ends: &[usize]| -> Option<usize> {
        let (mut lo, mut hi) = (0, ends.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if fits(ends[mid]) { lo = mid + 1 } else { hi = mid }
        }
        lo.checked_sub(1).map(|i| ends[i])
    };
    let sentence_ends: Vec<usize> =
        text.split_sentence_bound_indices().map(|(i, s)| i + s.trim_end().len()).filter(|&e| e > 0).collect();
    let word_ends: Vec<usize> =
        text.split_word_bound_indices().filter(|(_, w)| !w.trim().is_empty()).map(|(i, w)| i + w.len()).collect();
    let end = longest(&sentence_ends)
        .filter(|&end| count(&text[..end]) >= MIN_TRUNCATED_TOKENS)
        .or_else(|| longest(&word_ends))?;
    let cut = text[..end].trim_end().to_owned();
    (count(&cut) >= MIN_TRUNCATED_TOKENS).then_some(cut)
}

/// A context of `texts` (chunks 1, 2, … of one file `f.txt`) within a budget nothing exceeds,
/// counting bytes: for the tests of the modules that read contexts.
#[cfg(test)]
pub(crate) fn context_of(texts: &[&str]) -> Context {
    let chunks: Vec<ResultChunk> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| ResultChunk {
            chunk_id: i as i64 + 1,
            document_id: 1,
            collection: "c".into(),
            filename: "f.txt".into(),
            text: (*t).into(),
            score: 0.9,
            char_start: 0,
            char_end: 1,
            page: None,
            heading_path: None,
        })
        .collect();
    build(&chunks, 10_000, &|t| t.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: i64, filename: &str, text: &str) -> ResultChunk {
        ResultChunk {
            chunk_id: id,
            document_id: id * 10,
            collection: "c".into(),
            filename: filename.into(),
            text: text.into(),
            score: 0.5,
            char_start: 0,
            char_end: text.chars().count() as i64,
            page: (id == 2).then_some(7),
            heading_path: (id == 3).then(|| "Install > Linux".to_owned()),
        }
    }

    /// One token per word, punctuation included: easy to reason about in tests.
    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    fn sentences(n: usize, prefix: &str) -> String {
        (0..n).map(|i| format!("{prefix} sentence number {i} has six words.")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn numbers_and_names_the_sources_within_the_budget() {
        let chunks = [chunk(1, "a.txt", "Alpha text."), chunk(2, "b.pdf", "Beta text."), chunk(3, "c.md", "Gamma.")];
        let context = build(&chunks, 1000, &words);
        assert_eq!(
            context.text,
            "[1] a.txt\nAlpha text.\n\n[2] b.pdf, page 7\nBeta text.\n\n[3] c.md, Install > Linux\nGamma.\n\n"
        );
        assert_eq!(context.sources.iter().map(|s| s.n).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(context.tokens, words(&context.text));
        assert_eq!(context.source(2).map(|s| s.chunk.chunk_id), Some(2));
        assert!(context.source(0).is_none() && context.source(4).is_none());
    }

    #[test]
    fn truncates_the_last_chunk_at_a_sentence_when_enough_room_remains() {
        let first = sentences(20, "First"); // 120 words
        let second = sentences(60, "Second"); // 360 words
        let chunks = [chunk(1, "a.txt", &first), chunk(4, "b.txt", &second)];
        let budget = 400;
        let context = build(&chunks, budget, &words);
        assert!(context.tokens <= budget, "{}", context.tokens);
        assert_eq!(context.sources.len(), 2);
        let last = &context.sources[1];
        assert!(
            last.truncated && last.text.ends_with("words."),
            "cut at a sentence end: {:?}",
            &last.text[last.text.len() - 20..]
        );
        assert!(words(&last.text) >= MIN_TRUNCATED_TOKENS);
        // The longest such prefix: one more sentence would not fit.
        let longer = format!("{} Second sentence number 99 has six words.", last.text);
        assert!(words(&format!("[1] a.txt\n{first}\n\n[2] b.txt\n{longer}\n\n")) > budget);
    }

    #[test]
    fn drops_the_last_chunk_when_too_little_room_remains_and_never_exceeds_the_budget() {
        let first = sentences(50, "First"); // 300 words
        let chunks = [chunk(1, "a.txt", &first), chunk(4, "b.txt", &sentences(60, "Second"))];
        let context = build(&chunks, 380, &words);
        assert_eq!(context.sources.len(), 1, "80 tokens left: dropped");
        assert!(context.tokens <= 380);
        // A first chunk larger than the whole budget is truncated, never overflowing.
        let context = build(&chunks[1..], 200, &words);
        assert!(context.tokens <= 200 && context.sources[0].truncated);
        // Nothing fits: an empty context.
        assert!(build(&chunks, 50, &words).sources.is_empty());
    }

    #[test]
    fn falls_back_to_a_word_boundary_for_text_without_sentences() {
        let long = "word ".repeat(500);
        let context = build(&[chunk(1, "a.txt", &long)], 300, &words);
        let source = &context.sources[0];
        assert!(source.truncated && source.text.ends_with("word") && context.tokens <= 300);
        assert!(words(&source.text) >= 290, "{}", words(&source.text));
    }
}
