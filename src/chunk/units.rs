//! Cutting a span into consecutive units at one structural level.
//!
//! Units always cover their span exactly (separators stay with the unit before them), so
//! packing whole units can never lose text. Every cut is a grapheme cluster boundary.

use std::ops::Range;

use unicode_segmentation::UnicodeSegmentation;

use super::counter::DocTokens;
use super::offsets::is_grapheme_boundary;

/// A structural level, coarsest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Text between blank lines.
    Paragraph,
    /// One Markdown block (kind decides the level below; see `markdown.rs`).
    Block,
    /// One line.
    Line,
    /// One sentence (Unicode UAX #29).
    Sentence,
    /// One word (UAX #29: in CJK text, one ideograph).
    Word,
    /// One tiktoken pre-tokeniser piece (about a token).
    Piece,
    /// One extended grapheme cluster.
    Grapheme,
    /// One Unicode scalar: used only when a single grapheme exceeds the budget.
    Char,
}

impl Level {
    /// Whether units at this level can start a content-defined sync point. Pieces, graphemes
    /// and chars are too small to be worth hashing.
    pub(crate) fn can_sync(self) -> bool {
        matches!(self, Level::Paragraph | Level::Block | Level::Line | Level::Sentence | Level::Word)
    }
}

/// One unit of a span, and the level to cut it at if it alone exceeds the budget.
#[derive(Debug, Clone)]
pub(crate) struct Unit {
    /// Byte range in the document, including trailing separators.
    pub range: Range<usize>,
    /// Level for cutting this unit further.
    pub child: Level,
}

/// Cut positions strictly inside `span` at `level` (not for `Level::Block`, which Markdown
/// computes itself).
pub(crate) fn cuts(doc: &DocTokens<'_>, level: Level, span: Range<usize>) -> Vec<usize> {
    let text = doc.text();
    match level {
        Level::Paragraph => line_starts(text, span, true),
        Level::Block | Level::Line => line_starts(text, span, false),
        Level::Sentence => segment_starts(text, span, sentence_starts),
        Level::Word => word_starts(text, span),
        Level::Piece => doc.piece_starts_in(span).iter().copied().filter(|&p| is_grapheme_boundary(text, p)).collect(),
        Level::Grapheme => segment_starts(text, span, |s| s.grapheme_indices(true).map(|(i, _)| i).collect()),
        Level::Char => {
            let base = span.start;
            text[span].char_indices().skip(1).map(|(i, _)| base + i).collect()
        }
    }
}

/// Units of `span` from its cut positions; every unit gets the same `child` level.
pub(crate) fn units_from_cuts(span: Range<usize>, cuts: &[usize], child: Level) -> Vec<Unit> {
    let mut units = Vec::with_capacity(cuts.len() + 1);
    let mut start = span.start;
    for &cut in cuts.iter().chain(std::iter::once(&span.end)) {
        if cut > start {
            units.push(Unit { range: start..cut, child });
            start = cut;
        }
    }
    units
}

/// Starts of non-blank lines inside `span` that follow earlier content; with `after_blank`,
/// only those that follow a blank line (paragraph starts).
fn line_starts(text: &str, span: Range<usize>, after_blank: bool) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut seen_content = false;
    let mut blank_since_content = false;
    let mut line_start = span.start;
    while line_start < span.end {
        let line_end = memchr::memchr(b'\n', &bytes[line_start..span.end]).map_or(span.end, |i| line_start + i + 1);
        let blank = text[line_start..line_end].trim().is_empty();
        if !blank {
            let cut = seen_content && (!after_blank || blank_since_content);
            if cut && line_start > span.start {
                out.push(line_start);
            }
            seen_content = true;
            blank_since_content = false;
        } else if seen_content {
            blank_since_content = true;
        }
        line_start = line_end;
    }
    out
}

/// Starts of UAX #29 segments computed by `segment` on `text[span]`, made absolute, without
/// the span start and without positions inside a grapheme cluster.
fn segment_starts(text: &str, span: Range<usize>, segment: impl Fn(&str) -> Vec<usize>) -> Vec<usize> {
    let base = span.start;
    segment(&text[span])
        .into_iter()
        .filter(|&i| i > 0)
        .map(|i| base + i)
        .filter(|&p| is_grapheme_boundary(text, p))
        .collect()
}

/// UAX #29 sentence starts. UAX #29 ends a sentence at every line feed, which in hard-wrapped
/// text is mid-sentence, so line breaks are read as spaces (same byte length, same offsets).
fn sentence_starts(span: &str) -> Vec<usize> {
    let flat = span.replace(['\n', '\r'], " ");
    flat.split_sentence_bound_indices().map(|(i, _)| i).collect()
}

/// Starts of UAX #29 words that are not whitespace, so spaces stay with the word before.
fn word_starts(text: &str, span: Range<usize>) -> Vec<usize> {
    let base = span.start;
    text[span]
        .split_word_bound_indices()
        .filter(|&(i, w)| i > 0 && !w.starts_with(char::is_whitespace))
        .map(|(i, _)| base + i)
        .filter(|&p| is_grapheme_boundary(text, p))
        .collect()
}
