//! The `[chunk]` section of `workers.toml` and its validation.

use serde::{Deserialize, Serialize};

use super::tokens::Encoding;

/// Smallest `max_tokens` accepted: one Unicode scalar can take up to 4 tokens, so a budget below
/// twice that leaves no room to guarantee progress on hostile text.
pub const MIN_MAX_TOKENS: usize = 8;

/// Fewest tokens of new text a chunk must be able to carry once the overlap is reserved; one
/// scalar value needs at most 4 tokens, so this always makes progress.
pub const MIN_NEW_TOKENS: usize = 4;

/// How a document is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Paragraphs packed up to the budget; an oversized paragraph is cut at sentences, an
    /// oversized sentence at words, then graphemes.
    Semantic,
    /// Token windows of `max_tokens` (with `overlap_tokens` repeated), ignoring structure.
    Fixed,
    /// Markdown blocks (headings, list items, code blocks, tables, paragraphs) packed within
    /// their section; every chunk carries its heading path.
    Markdown,
    /// A hierarchy of separators: paragraphs, lines, sentences, words, graphemes.
    Recursive,
}

impl Strategy {
    /// The lowercase name used in `workers.toml` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Semantic => "semantic",
            Strategy::Fixed => "fixed",
            Strategy::Markdown => "markdown",
            Strategy::Recursive => "recursive",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "semantic" => Ok(Strategy::Semantic),
            "fixed" => Ok(Strategy::Fixed),
            "markdown" => Ok(Strategy::Markdown),
            "recursive" => Ok(Strategy::Recursive),
            other => Err(format!("unknown chunk strategy {other:?} (expected semantic, fixed, markdown or recursive)")),
        }
    }
}

/// `[chunk]` section of `workers.toml`. Every field has a default; unknown keys are rejected.
/// The defaults were chosen by measurement: `cargo bench --bench chunk_defaults`, and
/// `benches/chunk_vs_langchain.py --minilm-fit` for `max_tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkSettings {
    /// Strategy for plain text (and for Markdown when `markdown_strategy` says so).
    pub strategy: Strategy,
    /// Strategy used when the input is Markdown.
    pub markdown_strategy: Strategy,
    /// Hard ceiling on tokens per chunk, counted in `encoding`. Never exceeded. The default
    /// (192) keeps prose chunks inside all-MiniLM-L6-v2's 256-word-piece window.
    pub max_tokens: usize,
    /// Tokens of the previous chunk repeated at the start of the next one (0 = chunks are
    /// disjoint). Never crosses a sync point or a Markdown section.
    pub overlap_tokens: usize,
    /// A trailing chunk below this many tokens is merged into its neighbour, or balanced with
    /// it, as long as the result stays within `max_tokens`.
    pub min_tokens: usize,
    /// tiktoken encoding used to count tokens: cl100k_base, o200k_base, p50k_base or r50k_base.
    pub encoding: String,
    /// Average distance in tokens between content-defined sync points, where packing restarts
    /// so an edit cannot shift chunk boundaries further than the next one. A paragraph (or
    /// sentence, line, word being packed) of `t` tokens starts a new packing group with
    /// probability `t / resync_tokens`, decided by a hash of its own text; one of at least
    /// `resync_tokens` tokens always does. 0 turns sync points off (plain greedy packing).
    pub resync_tokens: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Semantic,
            markdown_strategy: Strategy::Markdown,
            max_tokens: 192,
            overlap_tokens: 0,
            min_tokens: 32,
            encoding: Encoding::Cl100kBase.name().to_owned(),
            resync_tokens: 2048,
        }
    }
}

impl ChunkSettings {
    /// Checks the settings; the message names the key and what is wrong with it.
    ///
    /// # Errors
    /// Returns a human-readable message for the first invalid value.
    pub fn validate(&self) -> Result<(), String> {
        Encoding::from_name(&self.encoding).map_err(|e| e.to_string())?;
        let (max, overlap, min) = (self.max_tokens, self.overlap_tokens, self.min_tokens);
        if max < MIN_MAX_TOKENS {
            return Err(format!("chunk.max_tokens ({max}) must be at least {MIN_MAX_TOKENS}"));
        }
        if overlap >= max {
            return Err(format!("chunk.overlap_tokens ({overlap}) must be smaller than chunk.max_tokens ({max})"));
        }
        if max - overlap < MIN_NEW_TOKENS {
            return Err(format!(
                "chunk.overlap_tokens ({overlap}) must leave at least {MIN_NEW_TOKENS} tokens of \
                 new text per chunk (chunk.max_tokens is {max})"
            ));
        }
        if min >= max {
            return Err(format!("chunk.min_tokens ({min}) must be smaller than chunk.max_tokens ({max})"));
        }
        if self.resync_tokens != 0 && self.resync_tokens < max {
            return Err(format!(
                "chunk.resync_tokens ({}) must be 0 (off) or at least chunk.max_tokens ({max})",
                self.resync_tokens
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ChunkSettings::default().validate(), Ok(()));
    }

    #[test]
    fn missing_keys_take_their_defaults() {
        let parsed: ChunkSettings =
            serde_json::from_str(r#"{"max_tokens": 512, "strategy": "recursive"}"#).expect("valid section");
        let expected = ChunkSettings { max_tokens: 512, strategy: Strategy::Recursive, ..ChunkSettings::default() };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn unknown_keys_and_strategies_are_rejected() {
        assert!(serde_json::from_str::<ChunkSettings>(r#"{"max_token": 512}"#).is_err());
        assert!(serde_json::from_str::<ChunkSettings>(r#"{"strategy": "sentences"}"#).is_err());
    }

    #[test]
    fn validation_names_the_key_and_the_problem() {
        let with = |f: fn(&mut ChunkSettings)| {
            let mut s = ChunkSettings { max_tokens: 256, ..ChunkSettings::default() };
            f(&mut s);
            s.validate().expect_err("invalid on purpose")
        };
        assert_eq!(
            with(|s| s.overlap_tokens = 300),
            "chunk.overlap_tokens (300) must be smaller than chunk.max_tokens (256)"
        );
        assert_eq!(with(|s| s.max_tokens = 4), "chunk.max_tokens (4) must be at least 8");
        assert!(with(|s| s.overlap_tokens = 254).starts_with("chunk.overlap_tokens (254) must leave"));
        assert!(with(|s| s.min_tokens = 256).starts_with("chunk.min_tokens (256)"));
        assert!(with(|s| s.resync_tokens = 100).starts_with("chunk.resync_tokens (100)"));
        assert!(with(|s| s.encoding = "gpt2".into()).starts_with("chunk.encoding (\"gpt2\")"));
    }

    #[test]
    fn strategies_parse_from_their_names() {
        for s in [Strategy::Semantic, Strategy::Fixed, Strategy::Markdown, Strategy::Recursive] {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert!("words".parse::<Strategy>().is_err());
    }
}
