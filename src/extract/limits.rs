//! `[extract]` settings: time, memory and size limits for extraction.

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// Settings section `[extract]` of `workers.toml`.
///
/// Every field has a default, so an absent section or key keeps the default; unknown keys are
/// rejected so a typo does not silently leave a limit at its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractSettings {
    /// Wall-clock limit for one document in the sandbox child, in seconds; the child's whole
    /// process group is killed when it expires.
    pub timeout_secs: u64,
    /// Memory the extractor child may use on top of its start-up footprint, in MiB (enforced with
    /// `RLIMIT_AS`, so it counts address space, not resident memory).
    pub max_memory_mb: u64,
    /// Largest result the parent reads back from the child, in bytes; bigger output kills the
    /// child. Must leave room for `max_chars` characters of 4 UTF-8 bytes each.
    pub max_output_bytes: u64,
    /// Largest accepted input file, in bytes; bigger files are refused before any parsing.
    pub max_file_bytes: u64,
    /// Largest number of pages accepted for paged formats (PDF).
    pub max_pages: usize,
    /// Largest number of extracted characters (Unicode scalar values) accepted per document.
    pub max_chars: usize,
    /// Cap on the bytes actually decompressed from a zip-based document (DOCX), all entries
    /// together; counted while reading, never taken from the archive's declared sizes.
    pub zip_max_uncompressed_bytes: u64,
    /// Cap on the number of entries in a zip-based document.
    pub zip_max_entries: usize,
    /// Cap on an entry's decompressed/compressed size ratio, checked once the entry has produced
    /// more than 1 MiB (small entries of repetitive XML legitimately compress very well).
    pub zip_max_ratio: u64,
    /// Cap on the bytes one PDF page's content streams (or one form they draw) decode to; a
    /// page past it fails the document as `limit_exceeded` rather than reading as empty.
    /// Decoded content costs several times its size in memory while it is read.
    pub pdf_max_stream_bytes: u64,
    /// Documents one sandbox child extracts before it is replaced. Starting a child costs more
    /// than extracting a small document, so children are kept and reused; 1 starts a fresh
    /// process per document (the strictest isolation between documents). A child is also
    /// replaced early when it crashed, timed out, or holds more than a quarter of its memory
    /// allowance after a document.
    pub documents_per_child: u64,
}

impl Default for ExtractSettings {
    fn default() -> Self {
        Self {
            timeout_secs: 60,
            max_memory_mb: 512,
            max_output_bytes: 32 * MIB,
            max_file_bytes: 50 * MIB,
            max_pages: 2_000,
            max_chars: 5_000_000,
            zip_max_uncompressed_bytes: 200 * MIB,
            zip_max_entries: 10_000,
            zip_max_ratio: 100,
            pdf_max_stream_bytes: 32 * MIB,
            documents_per_child: 200,
        }
    }
}

impl ExtractSettings {
    /// Checks the settings for values that cannot work together.
    ///
    /// # Errors
    ///
    /// A message naming the offending `extract.*` key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        let positive: [(&str, u64); 11] = [
            ("timeout_secs", self.timeout_secs),
            ("max_memory_mb", self.max_memory_mb),
            ("max_output_bytes", self.max_output_bytes),
            ("max_file_bytes", self.max_file_bytes),
            ("max_pages", self.max_pages as u64),
            ("max_chars", self.max_chars as u64),
            ("zip_max_uncompressed_bytes", self.zip_max_uncompressed_bytes),
            ("zip_max_entries", self.zip_max_entries as u64),
            ("zip_max_ratio", self.zip_max_ratio),
            ("pdf_max_stream_bytes", self.pdf_max_stream_bytes),
            ("documents_per_child", self.documents_per_child),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("extract.{key} must be greater than 0"));
        }
        if self.timeout_secs > 24 * 3600 {
            return Err("extract.timeout_secs must be at most 86400 (one day)".to_owned());
        }
        let memory_bytes = self.max_memory_mb.saturating_mul(MIB);
        if self.max_file_bytes >= memory_bytes {
            return Err(format!(
                "extract.max_file_bytes ({}) must be below extract.max_memory_mb ({} MiB): \
                 the child holds the whole file in memory",
                self.max_file_bytes, self.max_memory_mb
            ));
        }
        if self.pdf_max_stream_bytes >= memory_bytes {
            return Err(format!(
                "extract.pdf_max_stream_bytes ({}) must be below extract.max_memory_mb ({} MiB): \
                 the child holds a page's decoded content in memory while it reads it",
                self.pdf_max_stream_bytes, self.max_memory_mb
            ));
        }
        let needed = self.min_output_bytes();
        if self.max_output_bytes < needed {
            return Err(format!(
                "extract.max_output_bytes ({}) must be at least {needed} so that a document of \
                 extract.max_chars ({}) characters and extract.max_pages ({}) pages fits",
                self.max_output_bytes, self.max_chars, self.max_pages
            ));
        }
        Ok(())
    }

    /// Output size a document at the character and page limits can need: 4 bytes per
    /// character (control characters are stripped, so JSON never escapes one into 6 bytes),
    /// a page span's JSON per page, and some room for the envelope.
    fn min_output_bytes(&self) -> u64 {
        const PAGE_JSON_BYTES: u64 = 64;
        const ENVELOPE_BYTES: u64 = 4096;
        (self.max_chars as u64)
            .saturating_mul(4)
            .saturating_add((self.max_pages as u64).saturating_mul(PAGE_JSON_BYTES))
            .saturating_add(ENVELOPE_BYTES)
    }

    /// Wall-clock timeout as a [`std::time::Duration`].
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ExtractSettings::default().validate(), Ok(()));
    }

    #[test]
    fn zero_limit_is_rejected_with_its_key() {
        let settings = ExtractSettings { zip_max_entries: 0, ..ExtractSettings::default() };
        let err = settings.validate().err().unwrap_or_default();
        assert!(err.contains("extract.zip_max_entries"), "{err}");
    }

    #[test]
    fn output_cap_too_small_for_char_limit_is_rejected() {
        let settings = ExtractSettings { max_output_bytes: 1024, ..ExtractSettings::default() };
        let err = settings.validate().err().unwrap_or_default();
        assert!(err.contains("extract.max_output_bytes"), "{err}");
    }

    #[test]
    fn file_limit_above_memory_is_rejected() {
        let settings = ExtractSettings { max_memory_mb: 16, ..ExtractSettings::default() };
        let err = settings.validate().err().unwrap_or_default();
        assert!(err.contains("extract.max_file_bytes"), "{err}");
    }

    #[test]
    fn missing_keys_take_defaults_and_unknown_keys_fail() {
        let partial: ExtractSettings = serde_json::from_str(r#"{"timeout_secs": 5}"#).unwrap_or_default();
        assert_eq!(partial.timeout_secs, 5);
        assert_eq!(partial.max_memory_mb, 512);
        let unknown = serde_json::from_str::<ExtractSettings>(r#"{"timeout": 5}"#);
        assert!(unknown.is_err());
    }
}
