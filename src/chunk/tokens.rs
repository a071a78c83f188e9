//! Token counting with tiktoken-rs vocabularies, but a faster pre-tokeniser.
//!
//! tiktoken splits text into "pieces" with a regex, then byte-pair-encodes each piece on its
//! own; the token count of a text is the sum over its pieces. Two thirds of tiktoken-rs's time
//! goes into that regex, which needs `fancy-regex` for one negative lookahead (`\s+(?!\S)`).
//! Here the same patterns run on regex-automata (the `regex` crate's engine, 2–3× faster, and
//! anchored since pieces are contiguous) with the lookahead replaced by `\s+` plus a fix-up: a
//! whitespace run followed by a non-space loses its last character, which is exactly what the
//! lookahead does. Each piece is then counted by tiktoken-rs itself. `tests/chunk_props.rs`
//! checks the counts against `CoreBPE::encode_ordinary` for every encoding on arbitrary
//! Unicode text, and every corpus test checks every chunk's count the same way.

use std::ops::Range;

use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};
use rustc_hash::FxHashMap;
use tiktoken_rs::CoreBPE;

use super::ChunkError;

/// A tiktoken encoding the chunker can count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GPT-4 / GPT-3.5 / text-embedding-3 (the default).
    Cl100kBase,
    /// GPT-4o and later.
    O200kBase,
    /// Codex-era models.
    P50kBase,
    /// GPT-3 (`gpt2`).
    R50kBase,
}

/// cl100k_base's pattern with `\s+(?!\S)|\s` replaced by `\s+` (see the module comment).
/// Possessive quantifiers became greedy ones: each is followed by a disjoint class, so
/// backtracking can never change a match.
const CL100K_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]|\s+";

/// o200k_base's pattern with the same replacement.
const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+",
);

/// The GPT-2 pattern shared by p50k_base and r50k_base, with the same replacement.
const GPT2_PATTERN: &str = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+$|\s+";

impl Encoding {
    /// All encodings, for validation messages and tests.
    pub const ALL: [Encoding; 4] = [Encoding::Cl100kBase, Encoding::O200kBase, Encoding::P50kBase, Encoding::R50kBase];

    /// Parses the name used in `workers.toml`.
    ///
    /// # Errors
    /// [`ChunkError::UnknownEncoding`] for anything but the four supported names.
    pub fn from_name(name: &str) -> Result<Self, ChunkError> {
        Self::ALL.into_iter().find(|e| e.name() == name).ok_or_else(|| ChunkError::UnknownEncoding(name.to_owned()))
    }

    /// The tiktoken name of this encoding.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::O200kBase => "o200k_base",
            Encoding::P50kBase => "p50k_base",
            Encoding::R50kBase => "r50k_base",
        }
    }

    /// Builds tiktoken-rs's BPE for this encoding (tens of milliseconds; do it once).
    ///
    /// # Errors
    /// [`ChunkError::Tokenizer`] if tiktoken-rs cannot load its embedded vocabulary.
    fn bpe(self) -> Result<CoreBPE, ChunkError> {
        let built = match self {
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
            Encoding::O200kBase => tiktoken_rs::o200k_base(),
            Encoding::P50kBase => tiktoken_rs::p50k_base(),
            Encoding::R50kBase => tiktoken_rs::r50k_base(),
        };
        built.map_err(|e| ChunkError::Tokenizer(format!("{}: {e}", self.name())))
    }

    fn pattern(self) -> &'static str {
        match self {
            Encoding::Cl100kBase => CL100K_PATTERN,
            Encoding::O200kBase => O200K_PATTERN,
            Encoding::P50kBase | Encoding::R50kBase => GPT2_PATTERN,
        }
    }

    /// cl100k and o200k match whitespace ending in a line break with an alternative of its
    /// own, tried before the lookahead one; such matches must not be shortened.
    fn has_newline_alternative(self) -> bool {
        matches!(self, Encoding::Cl100kBase | Encoding::O200kBase)
    }
}

/// Counts tokens exactly as tiktoken-rs's `encode_ordinary(text).len()` does.
pub(crate) struct Tokenizer {
    encoding: Encoding,
    bpe: CoreBPE,
    pretokenizer: Regex,
}

impl Tokenizer {
    /// Builds the vocabulary and the pre-tokeniser for `encoding`.
    ///
    /// # Errors
    /// [`ChunkError::Tokenizer`] if either cannot be built.
    pub(crate) fn new(encoding: Encoding) -> Result<Self, ChunkError> {
        let pretokenizer =
            Regex::new(encoding.pattern()).map_err(|e| ChunkError::Tokenizer(format!("pre-tokeniser pattern: {e}")))?;
        Ok(Self { encoding, bpe: encoding.bpe()?, pretokenizer })
    }

    /// The encoding this tokenizer counts in.
    pub(crate) fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The byte ranges of tiktoken's pieces of `text`, in order, covering all of it.
    pub(crate) fn pieces<'t>(&'t self, text: &'t str) -> Pieces<'t> {
        Pieces { tokenizer: self, text, pos: 0 }
    }

    /// Tokens in one piece (a match of the pre-tokeniser).
    pub(crate) fn piece_tokens(&self, piece: &str) -> usize {
        self.bpe.encode_ordinary(piece).len()
    }

    /// Tokens in `text`, with a cache for repeated pieces.
    pub(crate) fn count(&self, text: &str) -> usize {
        let mut cache = PieceCache::default();
        self.pieces(text).map(|r| cache.count(self, &text[r]) as usize).sum()
    }
}

/// Token counts of pieces already seen in one document. Most pieces are a short word with
/// its leading space; those are keyed by their bytes packed into an integer, which is much
/// cheaper to hash and compare than a string.
#[derive(Default)]
pub(crate) struct PieceCache<'a> {
    short: FxHashMap<u64, u32>,
    long: FxHashMap<&'a str, u32>,
}

impl<'a> PieceCache<'a> {
    /// Tokens in `piece`, counted by tiktoken-rs the first time it is seen.
    pub(crate) fn count(&mut self, tokenizer: &Tokenizer, piece: &'a str) -> u32 {
        let compute = || u32::try_from(tokenizer.piece_tokens(piece)).unwrap_or(u32::MAX);
        match pack(piece) {
            Some(key) => *self.short.entry(key).or_insert_with(compute),
            None => *self.long.entry(piece).or_insert_with(compute),
        }
    }
}

/// Up to 7 bytes and their length in one `u64` (the length byte keeps "a" and "a\0" apart).
fn pack(piece: &str) -> Option<u64> {
    let bytes = piece.as_bytes();
    if bytes.len() > 7 {
        return None;
    }
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[7] = bytes.len() as u8;
    Some(u64::from_le_bytes(buf))
}

/// Iterator over pre-tokeniser pieces; see [`Tokenizer::pieces`].
pub(crate) struct Pieces<'t> {
    tokenizer: &'t Tokenizer,
    text: &'t str,
    pos: usize,
}

impl Iterator for Pieces<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        // Every character matches some alternative, so each piece starts where the last one
        // ended: an anchored search needs no reverse pass to find the start.
        let input = Input::new(self.text).range(self.pos..).anchored(Anchored::Yes);
        let found = self.tokenizer.pretokenizer.search(&input)?;
        let end = self.lookahead_end(found.start(), found.end());
        self.pos = end;
        Some(found.start()..end)
    }
}

impl Pieces<'_> {
    /// Emulates `\s+(?!\S)`: a run of two or more whitespace characters followed by a
    /// non-space gives its last character to the next piece.
    fn lookahead_end(&self, start: usize, end: usize) -> usize {
        let piece = &self.text[start..end];
        let Some(last) = piece.chars().next_back() else {
            return end;
        };
        let followed_by_text = self.text[end..].chars().next().is_some_and(|c| !c.is_whitespace());
        let from_newline_alternative = self.tokenizer.encoding.has_newline_alternative() && matches!(last, '\r' | '\n');
        let whitespace_run = piece.chars().all(char::is_whitespace) && piece.len() > last.len_utf8();
        if followed_by_text && whitespace_run && !from_newline_alternative { end - last.len_utf8() } else { end }
    }
}
