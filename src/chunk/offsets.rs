//! Byte ranges: grapheme-safe trimming, char offsets, page numbers.

use std::ops::Range;

use unicode_segmentation::GraphemeCursor;

/// Whether `pos` is an extended grapheme cluster boundary of `text`.
pub(crate) fn is_grapheme_boundary(text: &str, pos: usize) -> bool {
    if pos == 0 || pos >= text.len() {
        return pos <= text.len();
    }
    if !text.is_char_boundary(pos) {
        return false;
    }
    let bytes = text.as_bytes();
    let (before, after) = (bytes[pos - 1], bytes[pos]);
    // Fast path: between two ASCII characters the only cluster is CR LF. (An ASCII character
    // followed by a non-ASCII one may still join it, e.g. `e` + combining acute.)
    if before.is_ascii() && after.is_ascii() {
        return !(before == b'\r' && after == b'\n');
    }
    GraphemeCursor::new(pos, text.len(), true).is_boundary(text, 0).unwrap_or(false)
}

/// The grapheme boundary at or before `pos`.
pub(crate) fn grapheme_floor(text: &str, mut pos: usize) -> usize {
    while pos > 0 && !is_grapheme_boundary(text, pos) {
        pos -= 1;
    }
    pos
}

/// The grapheme boundary at or after `pos`.
pub(crate) fn grapheme_ceil(text: &str, mut pos: usize) -> usize {
    while pos < text.len() && !is_grapheme_boundary(text, pos) {
        pos += 1;
    }
    pos
}

/// `range` without surrounding whitespace. A whitespace character that starts a grapheme
/// cluster (a space carrying a combining mark) is kept, so the result never cuts a cluster
/// that `range` did not cut already.
pub(crate) fn trim(text: &str, range: Range<usize>) -> Range<usize> {
    let inner = &text[range.clone()];
    let lead = inner.len() - inner.trim_start().len();
    let mut start = range.start + lead;
    let mut end = range.start + inner.trim_end().len();
    if start >= end {
        return start..start;
    }
    if start != range.start {
        start = grapheme_floor(text, start).max(range.start);
    }
    if end != range.end {
        end = grapheme_ceil(text, end).min(range.end);
    }
    start..end
}

/// Maps byte offsets to char (Unicode scalar) offsets. Queries must come in ascending order
/// for linear cost; a query behind the cursor restarts from the beginning.
pub(crate) struct CharOffsets<'a> {
    bytes: &'a [u8],
    byte: usize,
    chars: usize,
}

impl<'a> CharOffsets<'a> {
    /// A cursor at the start of `text`.
    pub(crate) fn new(text: &'a str) -> Self {
        Self { bytes: text.as_bytes(), byte: 0, chars: 0 }
    }

    /// The char offset of byte offset `pos` (a char boundary).
    pub(crate) fn char_at(&mut self, pos: usize) -> usize {
        if pos < self.byte {
            self.byte = 0;
            self.chars = 0;
        }
        let pos = pos.min(self.bytes.len());
        // A char starts at every byte that is not a UTF-8 continuation byte (0b10xx_xxxx).
        self.chars += self.bytes[self.byte..pos].iter().filter(|&&b| (b as i8) >= -0x40).count();
        self.byte = pos;
        self.chars
    }
}

/// The page holding byte `pos`: the page whose range contains it, or the next page when `pos`
/// falls between pages. `None` past the last page or for unpaged input.
pub(crate) fn page_at(pages: &[(u32, Range<usize>)], pos: usize) -> Option<u32> {
    let idx = pages.partition_point(|(_, r)| r.end <= pos);
    pages.get(idx).map(|(n, _)| *n)
}
