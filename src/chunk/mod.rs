//! Chunking: document text → token-bounded chunks with byte/char offsets, pages and heading
//! paths. Pure: no I/O, no services.
//!
//! Four strategies share one engine (`packer.rs`): the text is cut into units at a structural
//! level (paragraphs, Markdown blocks, lines, sentences, words, tiktoken pieces, graphemes), and
//! whole units are packed greedily into chunks of at most `max_tokens` tokens, going one level
//! finer only for a unit that alone is too big. Counting is exact and cheap (`counter.rs`): the
//! document is pre-tokenised once and any span's count comes from running totals plus a
//! re-tokenisation of its two edges. Content-defined sync points keep boundaries stable under
//! edits. See `settings.rs` for the knobs and `render.rs` for the debug output.
//!
//! Map: `settings` (config), `chunker` (entry point), `tokens` (tiktoken encodings, fast
//! pre-tokeniser), `counter` (exact span counts), `units` (cutting at a level), `packer`
//! (greedy packing, sync points, tiny tails), `overlap` (overlap, final spans), `offsets`
//! (trimming, char offsets, pages), one file per strategy, `render`.

mod chunker;
mod counter;
mod fixed;
mod markdown;
mod offsets;
mod overlap;
mod packer;
mod recursive;
mod render;
mod semantic;
mod settings;
mod tokens;
mod units;

use std::ops::Range;

use serde::{Deserialize, Serialize};

pub use chunker::Chunker;
pub use render::render;
pub use settings::{ChunkSettings, MIN_MAX_TOKENS, MIN_NEW_TOKENS, Strategy};
pub use tokens::Encoding;

/// What to chunk.
#[derive(Debug, Clone, Copy)]
pub struct ChunkInput<'a> {
    /// The extracted text (BOM stripped, line endings normalised by extraction).
    pub text: &'a str,
    /// Whether `text` is Markdown (selects `markdown_strategy`).
    pub markdown: bool,
    /// Paged sources (PDF): (page number, byte range of that page in `text`), ascending,
    /// non-overlapping. Empty otherwise.
    pub pages: &'a [(u32, Range<usize>)],
}

impl<'a> ChunkInput<'a> {
    /// Plain, unpaged text.
    pub fn text(text: &'a str) -> Self {
        Self { text, markdown: false, pages: &[] }
    }

    /// Unpaged Markdown.
    pub fn markdown(text: &'a str) -> Self {
        Self { text, markdown: true, pages: &[] }
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Exactly `input.text[byte_start..byte_end]`, without surrounding whitespace.
    pub text: String,
    /// Tokens in `text` in the configured encoding; never above `max_tokens`.
    pub token_count: usize,
    /// Byte offset of the first byte in the input.
    pub byte_start: usize,
    /// Byte offset one past the last byte.
    pub byte_end: usize,
    /// Offset in Unicode scalar values (chars) of `byte_start`, for the wire format.
    pub char_start: usize,
    /// Offset in chars of `byte_end`.
    pub char_end: usize,
    /// Page of the first byte (paged input only).
    pub page_start: Option<u32>,
    /// Page of the last byte (paged input only).
    pub page_end: Option<u32>,
    /// Headings above the chunk, outermost first, e.g. `Install > Linux` (Markdown strategy).
    pub heading_path: Option<String>,
    /// Strategy that produced the chunk.
    pub strategy: Strategy,
}

/// Why a chunker cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// `chunk.encoding` names no supported tiktoken encoding.
    #[error("chunk.encoding ({0:?}) is not one of cl100k_base, o200k_base, p50k_base, r50k_base")]
    UnknownEncoding(String),
    /// A setting is out of range; the message names the key.
    #[error("invalid chunk settings: {0}")]
    InvalidSettings(String),
    /// tiktoken-rs could not build the vocabulary, or the pre-tokeniser did not compile.
    #[error("cannot build the tokenizer: {0}")]
    Tokenizer(String),
}
