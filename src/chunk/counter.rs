//! Exact token counts of any span of one document, without re-tokenising the span.
//!
//! The document is pre-tokenised once into tiktoken pieces with a running token total. A span
//! that starts and ends on piece boundaries has exactly the sum of its pieces' tokens: the
//! pre-tokeniser has no look-behind, so matching restarts identically at a boundary, and its
//! only look-ahead (one character after a whitespace run) sees the same character inside the
//! span. A span that starts or ends inside a piece is re-tokenised only at its edges: from its
//! start until a piece ends on a document boundary again, and from the last boundary before its
//! trailing whitespace to its end. Everything between comes from the running total.

use std::ops::Range;

use super::tokens::{PieceCache, Tokenizer};

/// Pieces and running token totals of one document.
pub(crate) struct DocTokens<'a> {
    tokenizer: &'a Tokenizer,
    text: &'a str,
    /// Start of every piece, then `text.len()`.
    starts: Vec<usize>,
    /// `cum[i]` = tokens in pieces `0..i`; one longer than the number of pieces.
    cum: Vec<usize>,
    cache: PieceCache<'a>,
}

impl<'a> DocTokens<'a> {
    /// Pre-tokenises `text` once.
    pub(crate) fn new(tokenizer: &'a Tokenizer, text: &'a str) -> Self {
        let mut cache = PieceCache::default();
        let mut starts = Vec::with_capacity(text.len() / 4 + 2);
        let mut cum = Vec::with_capacity(text.len() / 4 + 2);
        let mut total = 0usize;
        for piece in tokenizer.pieces(text) {
            starts.push(piece.start);
            cum.push(total);
            total += cache.count(tokenizer, &text[piece]) as usize;
        }
        starts.push(text.len());
        cum.push(total);
        Self { tokenizer, text, starts, cum, cache }
    }

    /// The document text.
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// Piece start offsets inside `range` (excluding `range.start`), for token windows.
    pub(crate) fn piece_starts_in(&self, range: Range<usize>) -> &[usize] {
        let lo = self.starts.partition_point(|&s| s <= range.start);
        let hi = self.starts.partition_point(|&s| s < range.end);
        &self.starts[lo..hi.max(lo)]
    }

    /// Index of the piece containing byte `pos` (`pos < text.len()`), and whether `pos` is its
    /// first byte.
    fn piece_at(&self, pos: usize) -> (usize, bool) {
        let idx = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        (idx, self.starts.get(idx) == Some(&pos))
    }

    fn piece_tokens(&self, idx: usize) -> usize {
        self.cum[idx + 1] - self.cum[idx]
    }

    /// Cheap approximation of the tokens in `range`: whole pieces inside count exactly,
    /// pieces cut by an edge count in proportion to the bytes kept.
    pub(crate) fn estimate(&self, range: Range<usize>) -> usize {
        if range.start >= range.end {
            return 0;
        }
        let (first, _) = self.piece_at(range.start);
        let (last, _) = self.piece_at(range.end - 1);
        if first == last {
            return self.proportion(first, range);
        }
        let head = self.proportion(first, range.start..self.starts[first + 1]);
        let tail = self.proportion(last, self.starts[last]..range.end);
        head + (self.cum[last] - self.cum[first + 1]) + tail
    }

    fn proportion(&self, idx: usize, kept: Range<usize>) -> usize {
        let len = self.starts[idx + 1] - self.starts[idx];
        let kept = kept.end - kept.start;
        (self.piece_tokens(idx) * kept).div_ceil(len.max(1))
    }

    /// Exact tokens of `text[range]`, equal to tiktoken's count of that string.
    pub(crate) fn exact(&mut self, range: Range<usize>) -> usize {
        let (start, end) = (range.start, range.end);
        if start >= end {
            return 0;
        }
        let (mut total, resync) = self.head(start, end);
        let Some(mut pos) = resync else {
            return total;
        };
        // Trailing whitespace is matched differently at the end of a text (`\s+$`), so the
        // tail is re-tokenised from the last boundary before it.
        let content_end = start + self.text[start..end].trim_end().len();
        let tail_start = self.boundary_at_or_before(content_end);
        if tail_start > pos {
            total += self.cum[self.boundary_index(tail_start)] - self.cum[self.boundary_index(pos)];
            pos = tail_start;
        }
        if pos < end {
            total += self.count_str(pos..end);
        }
        total
    }

    /// The last piece boundary at or before `pos`.
    fn boundary_at_or_before(&self, pos: usize) -> usize {
        let idx = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        self.starts.get(idx).copied().unwrap_or(0)
    }

    /// Index in `starts` of the piece boundary `b`.
    fn boundary_index(&self, b: usize) -> usize {
        self.starts.partition_point(|&s| s < b)
    }

    /// Re-tokenises from `start` until a piece ends on a document piece boundary. Returns the
    /// tokens so far and that boundary, or `None` when the whole span was counted.
    fn head(&mut self, start: usize, end: usize) -> (usize, Option<usize>) {
        if self.piece_at(start).1 {
            return (0, Some(start));
        }
        let span = &self.text[start..end];
        let mut total = 0;
        for piece in self.tokenizer.pieces(span) {
            total += self.cache.count(self.tokenizer, &span[piece.clone()]) as usize;
            let abs = start + piece.end;
            if abs == end {
                return (total, None);
            }
            if self.piece_at(abs).1 {
                return (total, Some(abs));
            }
        }
        (total, None)
    }

    /// Tokens of `text[range]` by pre-tokenising it on its own.
    fn count_str(&mut self, range: Range<usize>) -> usize {
        let span = &self.text[range];
        let mut total = 0;
        for piece in self.tokenizer.pieces(span) {
            total += self.cache.count(self.tokenizer, &span[piece]) as usize;
        }
        total
    }
}
