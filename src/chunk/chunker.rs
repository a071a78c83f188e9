//! The chunker: settings plus a tokenizer built once, shared by every document.

use std::sync::Arc;

use super::counter::DocTokens;
use super::markdown::Outline;
use super::offsets::{CharOffsets, page_at};
use super::overlap::{Span, spans};
use super::packer::Params;
use super::settings::{MIN_MAX_TOKENS, MIN_NEW_TOKENS};
use super::tokens::{Encoding, Tokenizer};
use super::{Chunk, ChunkError, ChunkInput, ChunkSettings, Strategy, fixed, markdown, recursive, semantic};

/// Cuts documents into chunks. Build one per process (the BPE vocabulary takes tens of
/// milliseconds and tens of megabytes); clones share it.
#[derive(Clone)]
pub struct Chunker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ChunkSettings,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

impl Chunker {
    /// Validates `settings` and builds the tokenizer for its encoding.
    ///
    /// # Errors
    /// [`ChunkError::InvalidSettings`] with the message of [`ChunkSettings::validate`], or
    /// [`ChunkError::Tokenizer`] if the vocabulary cannot be loaded.
    pub fn new(settings: &ChunkSettings) -> Result<Self, ChunkError> {
        settings.validate().map_err(ChunkError::InvalidSettings)?;
        let encoding = Encoding::from_name(&settings.encoding)?;
        Ok(Self { inner: Arc::new(Inner { settings: settings.clone(), tokenizer: Tokenizer::new(encoding)? }) })
    }

    /// The settings this chunker was built with.
    pub fn settings(&self) -> &ChunkSettings {
        &self.inner.settings
    }

    /// The encoding tokens are counted in.
    pub fn encoding(&self) -> Encoding {
        self.inner.tokenizer.encoding()
    }

    /// Chunks `input` with the configured strategy (`markdown_strategy` for Markdown input).
    /// Empty or whitespace-only text gives no chunks.
    pub fn chunk(&self, input: &ChunkInput<'_>) -> Vec<Chunk> {
        let s = &self.inner.settings;
        let strategy = if input.markdown { s.markdown_strategy } else { s.strategy };
        self.chunk_with(input, strategy, s.max_tokens, s.overlap_tokens)
    }

    /// Chunks `input` with an explicit strategy and budget (debug overrides). Out-of-range
    /// budgets are clamped to what [`ChunkSettings::validate`] accepts: `max_tokens` to at
    /// least 8, `overlap_tokens` to leave at least 4 tokens of new text per chunk.
    pub fn chunk_with(
        &self,
        input: &ChunkInput<'_>,
        strategy: Strategy,
        max_tokens: usize,
        overlap_tokens: usize,
    ) -> Vec<Chunk> {
        if input.text.trim().is_empty() {
            return Vec::new();
        }
        let params = self.params(strategy, max_tokens, overlap_tokens);
        let mut doc = DocTokens::new(&self.inner.tokenizer, input.text);
        let (cores, outline) = match strategy {
            Strategy::Semantic => (semantic::cores(&mut doc, &params), None),
            Strategy::Recursive => (recursive::cores(&mut doc, &params), None),
            Strategy::Fixed => (fixed::cores(&mut doc, &params), None),
            Strategy::Markdown => {
                let (cores, outline) = markdown::cores(&mut doc, &params);
                (cores, Some(outline))
            }
        };
        let spans = spans(&mut doc, &params, &cores);
        assemble(input, &spans, outline.as_ref(), strategy)
    }

    /// Tokens in `text` in the configured encoding (same as tiktoken's `encode_ordinary`).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.inner.tokenizer.count(text)
    }

    fn params(&self, strategy: Strategy, max_tokens: usize, overlap_tokens: usize) -> Params {
        let max_tokens = max_tokens.max(MIN_MAX_TOKENS);
        let overlap_tokens = overlap_tokens.min(max_tokens - MIN_NEW_TOKENS);
        let s = &self.inner.settings;
        Params {
            strategy,
            max_tokens,
            overlap_tokens,
            min_tokens: s.min_tokens.min(max_tokens - 1),
            resync_tokens: s.resync_tokens,
        }
    }
}

/// Builds the public chunks: text, offsets in bytes and chars, pages, heading paths.
fn assemble(input: &ChunkInput<'_>, spans: &[Span], outline: Option<&Outline>, strategy: Strategy) -> Vec<Chunk> {
    let text = input.text;
    // Overlapping chunks start before the previous end: convert sorted offsets in one pass.
    let mut positions: Vec<usize> = spans.iter().flat_map(|s| [s.range.start, s.range.end]).collect();
    positions.sort_unstable();
    positions.dedup();
    let mut cursor = CharOffsets::new(text);
    let chars: Vec<usize> = positions.iter().map(|&p| cursor.char_at(p)).collect();
    let char_at = |p: usize| chars[positions.partition_point(|&q| q < p)];
    spans
        .iter()
        .map(|span| {
            let (start, end) = (span.range.start, span.range.end);
            Chunk {
                text: text[start..end].to_owned(),
                token_count: span.tokens,
                byte_start: start,
                byte_end: end,
                char_start: char_at(start),
                char_end: char_at(end),
                page_start: page_at(input.pages, start),
                page_end: page_at(input.pages, end.saturating_sub(1).max(start)),
                heading_path: outline.and_then(|o| o.path_at(end.saturating_sub(1))).map(str::to_owned),
                strategy,
            }
        })
        .collect()
}
