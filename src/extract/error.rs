//! The extraction error type, its stable codes and its retry classification.

use serde::{Deserialize, Serialize};

/// A size that went over its configured maximum, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteLimit {
    /// The size found (or at least reached, when reading stopped at the limit).
    pub bytes: u64,
    /// The configured maximum.
    pub max: u64,
}

impl std::fmt::Display for ByteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, limit {}", self.bytes, self.max)
    }
}

/// Which extraction limit a document went over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// More pages than `max_pages`.
    #[error("{pages} pages, limit {max}")]
    Pages {
        /// Pages in the document.
        pages: usize,
        /// The configured maximum.
        max: usize,
    },
    /// More extracted characters than `max_chars`.
    #[error("more than {max} characters of text")]
    Chars {
        /// The configured maximum.
        max: usize,
    },
    /// A zip-based document decompresses to more than `zip_max_uncompressed_bytes`.
    #[error("zip decompresses to more than {max} bytes")]
    ZipBytes {
        /// The configured maximum.
        max: u64,
    },
    /// A zip-based document has more entries than `zip_max_entries`.
    #[error("zip has {entries} entries, limit {max}")]
    ZipEntries {
        /// Entries in the archive.
        entries: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A zip entry expands by more than `zip_max_ratio`.
    #[error("zip entry {entry} expands more than {max}× (zip bomb?)")]
    ZipRatio {
        /// The entry's name.
        entry: String,
        /// The configured maximum ratio.
        max: u64,
    },
    /// A PDF page's content streams (or one form) decode to more than `pdf_max_stream_bytes`.
    #[error("a PDF content stream decodes to more than {max} bytes")]
    PdfStream {
        /// The configured maximum.
        max: u64,
    },
    /// The sandbox child wrote more than `max_output_bytes`.
    #[error("extractor output exceeds {max} bytes")]
    Output {
        /// The configured maximum.
        max: u64,
    },
}

/// Why a document's text could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractError {
    /// The content is not a format we extract (`detected` says what it looks like).
    #[error("unsupported document type: {detected}")]
    Unsupported {
        /// What the content was recognised as.
        detected: String,
    },
    /// The document parsed but holds no extractable text (e.g. a scanned PDF).
    #[error("no extractable text")]
    NoText,
    /// Every page with text is garbled (fonts that map to no Unicode): nothing readable is
    /// left. Settled like [`ExtractError::NoText`] (code `no_text`), with the reason saying why.
    #[error("no readable text: {pages} page(s) are garbled (fonts without a Unicode mapping; the document needs OCR)")]
    Garbled {
        /// Pages found garbled.
        pages: u32,
    },
    /// The document is encrypted and no (correct) password was given.
    #[error("document is encrypted")]
    Encrypted,
    /// The file has no bytes at all.
    #[error("file is empty")]
    Empty,
    /// The file is bigger than `max_file_bytes`.
    #[error("file too large: {0}")]
    TooLarge(ByteLimit),
    /// A page, character, zip or output limit was exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(Limit),
    /// The document is malformed.
    #[error("corrupt document: {0}")]
    Corrupt(String),
    /// The extractor ran past its wall-clock limit and was killed.
    #[error("timed out after {secs} s")]
    TimedOut {
        /// The configured timeout.
        secs: u64,
    },
    /// The extractor child died (signal, panic, abort, stack overflow, malformed reply).
    #[error("{0}")]
    Crashed(String),
    /// The extractor child ran out of its memory allowance.
    #[error("extractor exceeded its memory limit")]
    MemoryLimit,
    /// Our own failure, not the document's (e.g. the child could not be spawned).
    #[error("internal extraction error: {0}")]
    Internal(String),
}

impl ExtractError {
    /// Short stable code for document status/reasons and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsupported { .. } => "unsupported_type",
            Self::NoText | Self::Garbled { .. } => "no_text",
            Self::Encrypted => "encrypted",
            Self::Empty => "empty",
            Self::TooLarge(_) => "too_large",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Corrupt(_) => "corrupt",
            Self::TimedOut { .. } => "timed_out",
            Self::Crashed(_) => "crashed",
            Self::MemoryLimit => "memory_limit",
            Self::Internal(_) => "internal",
        }
    }

    /// Whether retrying could help: only our own failures (spawning the child, pipes) are
    /// transient; everything about the document itself fails the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Internal(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_only_internal_is_transient() {
        let cases = [
            (ExtractError::NoText, "no_text", false),
            (ExtractError::Garbled { pages: 2 }, "no_text", false),
            (ExtractError::LimitExceeded(Limit::PdfStream { max: 1 }), "limit_exceeded", false),
            (ExtractError::TimedOut { secs: 60 }, "timed_out", false),
            (ExtractError::MemoryLimit, "memory_limit", false),
            (ExtractError::Internal("spawn".into()), "internal", true),
            (ExtractError::LimitExceeded(Limit::Pages { pages: 3, max: 2 }), "limit_exceeded", false),
        ];
        for (err, code, transient) in cases {
            assert_eq!(err.code(), code);
            assert_eq!(err.is_transient(), transient, "{err}");
        }
    }

    #[test]
    fn timeout_message_names_the_seconds() {
        assert_eq!(ExtractError::TimedOut { secs: 60 }.to_string(), "timed out after 60 s");
    }

    #[test]
    fn errors_round_trip_through_json() {
        let err = ExtractError::LimitExceeded(Limit::ZipRatio { entry: "word/document.xml".into(), max: 100 });
        let json = serde_json::to_string(&err).unwrap_or_default();
        let back: Result<ExtractError, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(err));
    }
}
