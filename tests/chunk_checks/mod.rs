//! Invariants every chunk list must satisfy, checked against independent references:
//! tiktoken-rs's own `encode_ordinary` for token counts and unicode-segmentation for graphemes.

use ragpipe::chunk::Chunk;
use unicode_segmentation::UnicodeSegmentation;

/// Tokens of `text` according to tiktoken-rs itself (cl100k_base), not the chunker.
pub fn reference_count(text: &str) -> usize {
    tiktoken_rs::cl100k_base_singleton().encode_ordinary(text).len()
}

/// Checks `chunks` of `text` chunked with `max_tokens` / `overlap_tokens`; returns the first
/// violation as a message.
pub fn check_chunks(text: &str, chunks: &[Chunk], max_tokens: usize, overlap_tokens: usize) -> Result<(), String> {
    let char_starts: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let graphemes: Vec<usize> = text.grapheme_indices(true).map(|(i, _)| i).chain([text.len()]).collect();
    for (i, c) in chunks.iter().enumerate() {
        let at = format!("chunk {i} ({}..{})", c.byte_start, c.byte_end);
        if text.get(c.byte_start..c.byte_end) != Some(c.text.as_str()) || c.text.is_empty() {
            return Err(format!("{at}: text is not the input slice at its byte offsets"));
        }
        if char_starts.get(c.char_start) != Some(&c.byte_start) || char_starts.get(c.char_end) != Some(&c.byte_end) {
            return Err(format!("{at}: char offsets {}..{} do not point at its bytes", c.char_start, c.char_end));
        }
        let tokens = reference_count(&c.text);
        if tokens != c.token_count {
            return Err(format!("{at}: token_count {} but tiktoken counts {tokens}", c.token_count));
        }
        if tokens > max_tokens {
            return Err(format!("{at}: {tokens} tokens over the budget of {max_tokens}"));
        }
        for pos in [c.byte_start, c.byte_end] {
            check_grapheme_boundary(text, &graphemes, pos, max_tokens - overlap_tokens)
                .map_err(|e| format!("{at}: {e}"))?;
        }
        check_trimmed(&c.text).map_err(|e| format!("{at}: {e}"))?;
    }
    check_order_and_overlap(text, chunks, overlap_tokens)?;
    check_coverage(text, chunks)
}

/// A chunk edge may fall inside a grapheme cluster only if that cluster alone is over the
/// budget for new text (the documented last resort: it is then cut between scalars).
fn check_grapheme_boundary(text: &str, graphemes: &[usize], pos: usize, core_budget: usize) -> Result<(), String> {
    let idx = graphemes.partition_point(|&g| g < pos);
    if graphemes.get(idx) == Some(&pos) {
        return Ok(());
    }
    let cluster = &text[graphemes[idx - 1]..graphemes[idx]];
    let tokens = reference_count(cluster);
    if tokens > core_budget {
        Ok(())
    } else {
        Err(format!("edge {pos} splits the grapheme {cluster:?} ({tokens} tokens)"))
    }
}

/// No surrounding whitespace, unless the whitespace belongs to a cluster with more in it
/// (a space carrying a combining mark), which trimming must not cut.
fn check_trimmed(chunk: &str) -> Result<(), String> {
    let first = chunk.graphemes(true).next().unwrap_or_default();
    let last = chunk.graphemes(true).next_back().unwrap_or_default();
    let lone_space =
        |g: &str| g.chars().all(char::is_whitespace) || (g.chars().count() == 1 && g.starts_with(char::is_whitespace));
    if (first.starts_with(char::is_whitespace) && lone_space(first))
        || (last.ends_with(char::is_whitespace) && lone_space(last))
    {
        return Err(format!("not trimmed: {chunk:?}"));
    }
    Ok(())
}

/// Chunks come in document order; consecutive chunks overlap only when overlap is configured,
/// and then by at most `overlap_tokens` tokens.
fn check_order_and_overlap(text: &str, chunks: &[Chunk], overlap_tokens: usize) -> Result<(), String> {
    for (i, pair) in chunks.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if b.byte_start <= a.byte_start || b.byte_end <= a.byte_end {
            return Err(format!("chunks {i} and {} are out of order", i + 1));
        }
        if b.byte_start < a.byte_end {
            let shared = reference_count(&text[b.byte_start..a.byte_end]);
            if overlap_tokens == 0 || shared > overlap_tokens {
                return Err(format!("chunks {i} and {} share {shared} tokens (overlap {overlap_tokens})", i + 1));
            }
        }
    }
    Ok(())
}

/// Every non-whitespace character of the input is inside some chunk.
fn check_coverage(text: &str, chunks: &[Chunk]) -> Result<(), String> {
    let mut covered = vec![false; text.len()];
    for c in chunks {
        covered[c.byte_start..c.byte_end].fill(true);
    }
    match text.char_indices().find(|&(i, ch)| !ch.is_whitespace() && !covered[i]) {
        Some((i, ch)) => Err(format!("{ch:?} at byte {i} is in no chunk")),
        None => Ok(()),
    }
}
