//! Turning cores into final spans: overlap with the previous core, exact token counts.

use std::ops::Range;

use super::Strategy;
use super::counter::DocTokens;
use super::offsets::trim;
use super::packer::{Core, Params};
use super::units::{Level, cuts};

/// A finished chunk: trimmed byte range and its exact token count.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    /// Byte range in the document, without surrounding whitespace.
    pub range: Range<usize>,
    /// Exact tokens of the text in `range`.
    pub tokens: usize,
}

/// Bytes of the previous core searched for an overlap start, per overlap token. Generous:
/// English averages about 4 bytes per token, CJK about 3.
const OVERLAP_BYTES_PER_TOKEN: usize = 16;

/// Trims the cores and prepends up to `overlap_tokens` of the previous core (same group only),
/// starting on a word (or, for `fixed`, a piece) boundary.
pub(crate) fn spans(doc: &mut DocTokens<'_>, params: &Params, cores: &[Core]) -> Vec<Span> {
    let text = doc.text();
    let trimmed: Vec<Range<usize>> = cores.iter().map(|c| trim(text, c.range.clone())).collect();
    let mut out = Vec::with_capacity(cores.len());
    for (k, core) in cores.iter().enumerate() {
        let mut range = trimmed[k].clone();
        if params.overlap_tokens > 0
            && k > 0
            && !core.group_start
            && let Some(start) = overlap_start(doc, params, trimmed[k - 1].clone(), range.end)
        {
            range.start = start;
        }
        let tokens = doc.exact(range.clone());
        out.push(Span { range, tokens });
    }
    out
}

/// The earliest boundary in `prev` whose suffix has at most `overlap_tokens` tokens and that
/// keeps the whole chunk (up to `end`) within `max_tokens`.
fn overlap_start(doc: &mut DocTokens<'_>, params: &Params, prev: Range<usize>, end: usize) -> Option<usize> {
    let text = doc.text();
    let reach = params.overlap_tokens * OVERLAP_BYTES_PER_TOKEN + OVERLAP_BYTES_PER_TOKEN;
    // Only a search bound: candidates themselves are word (piece) starts on grapheme boundaries.
    let window_start = text.floor_char_boundary(prev.end.saturating_sub(reach).max(prev.start));
    let level = if params.strategy == Strategy::Fixed { Level::Piece } else { Level::Word };
    // Strictly after the previous core's start: a chunk never swallows the previous one.
    let mut candidates: Vec<usize> = cuts(doc, level, window_start..prev.end)
        .into_iter()
        .map(|c| trim(text, c..prev.end).start)
        .filter(|&c| c > prev.start && c < prev.end)
        .collect();
    candidates.dedup();
    // Suffix counts shrink as the start moves right, so bisect for the first that fits.
    let (mut lo, mut hi) = (0, candidates.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if doc.exact(candidates[mid]..prev.end) <= params.overlap_tokens {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    candidates[lo..].iter().copied().find(|&c| doc.exact(c..end) <= params.max_tokens)
}
