//! Bounded access to the zip container: entry-count cap, and a decompression budget counted on
//! the bytes actually inflated (declared sizes in a zip are attacker-controlled and never used to
//! size anything), plus a per-entry compression-ratio check against zip bombs.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use zip::ZipArchive;
use zip::result::ZipError;

use crate::extract::error::{ExtractError, Limit};

/// Ratio checks start after this many bytes of one entry: small XML parts of repetitive markup
/// legitimately compress 100× or more (Apache POI's `ZipSecureFile` uses the same idea).
const RATIO_GRACE_BYTES: u64 = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Limits applied while reading entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ZipLimits {
    /// Total bytes that may be decompressed, all entries together.
    pub(crate) max_uncompressed: u64,
    /// Maximum number of entries.
    pub(crate) max_entries: usize,
    /// Maximum decompressed/compressed ratio per entry, and of all entries read to the file.
    pub(crate) max_ratio: u64,
}

/// An opened OPC package: the zip plus a case-insensitive part-name index (OPC part names are
/// ASCII case-insensitive).
pub(crate) struct Archive<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    names: HashMap<String, usize>,
    limits: ZipLimits,
    decompressed: u64,
    file_len: u64,
}

impl<'a> Archive<'a> {
    /// Opens the zip and checks the entry count.
    ///
    /// # Errors
    ///
    /// [`ExtractError::Corrupt`] for an unreadable zip, [`ExtractError::LimitExceeded`] for too
    /// many entries.
    pub(crate) fn open(bytes: &'a [u8], limits: ZipLimits) -> Result<Self, ExtractError> {
        let zip = ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
        if zip.len() > limits.max_entries {
            return Err(ExtractError::LimitExceeded(Limit::ZipEntries { entries: zip.len(), max: limits.max_entries }));
        }
        let mut names = HashMap::with_capacity(zip.len());
        for index in 0..zip.len() {
            if let Some(Ok(name)) = zip.name_for_index(index) {
                let key = name.trim_start_matches('/').to_ascii_lowercase();
                names.entry(key).or_insert(index);
            }
        }
        Ok(Self { zip, names, limits, decompressed: 0, file_len: bytes.len() as u64 })
    }

    /// Whether a part exists (name without leading `/`, any case).
    pub(crate) fn contains(&self, part: &str) -> bool {
        self.names.contains_key(&part_key(part))
    }

    /// Reads a part as text (BOM-aware: UTF-8, UTF-16), or `None` if absent.
    ///
    /// # Errors
    ///
    /// Zip corruption, or any of the decompression limits.
    pub(crate) fn read_text(&mut self, part: &str) -> Result<Option<String>, ExtractError> {
        let Some(bytes) = self.read(part)? else {
            return Ok(None);
        };
        Ok(Some(decode_xml(&bytes)))
    }

    /// Reads a part's bytes, or `None` if absent.
    ///
    /// # Errors
    ///
    /// Zip corruption, or any of the decompression limits.
    pub(crate) fn read(&mut self, part: &str) -> Result<Option<Vec<u8>>, ExtractError> {
        let Some(&index) = self.names.get(&part_key(part)) else {
            return Ok(None);
        };
        let remaining = self.limits.max_uncompressed.saturating_sub(self.decompressed);
        let (max_total, max_ratio) = (self.limits.max_uncompressed, self.limits.max_ratio);
        let file_len = self.file_len;
        let mut entry = self.zip.by_index(index).map_err(zip_error)?;
        // The compressed size is declared too, but the zip reader cannot read past the end of
        // the file, so the file length bounds it.
        let compressed = entry.compressed_size().clamp(1, file_len.max(1));
        let mut out = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let n = entry
                .read(&mut chunk)
                .map_err(|err| ExtractError::Corrupt(format!("cannot decompress zip entry {part}: {err}")))?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            let produced = out.len() as u64;
            if produced > remaining {
                return Err(ExtractError::LimitExceeded(Limit::ZipBytes { max: max_total }));
            }
            if produced > RATIO_GRACE_BYTES && produced / compressed > max_ratio {
                return Err(ExtractError::LimitExceeded(Limit::ZipRatio { entry: part.to_owned(), max: max_ratio }));
            }
            // The whole archive too: a bomb of many parts, each inside the grace size, must not
            // inflate up to the total budget.
            let total = self.decompressed + produced;
            if total > RATIO_GRACE_BYTES && total / file_len.max(1) > max_ratio {
                return Err(ExtractError::LimitExceeded(Limit::ZipRatio {
                    entry: format!("{part} (with the parts read before it)"),
                    max: max_ratio,
                }));
            }
        }
        self.decompressed += out.len() as u64;
        Ok(Some(out))
    }
}

fn part_key(part: &str) -> String {
    part.trim_start_matches('/').to_ascii_lowercase()
}

/// XML parts are UTF-8 or UTF-16 (with BOM); invalid bytes become U+FFFD rather than losing the
/// whole part.
fn decode_xml(bytes: &[u8]) -> String {
    match encoding_rs::Encoding::for_bom(bytes) {
        Some((encoding, bom_len)) => {
            encoding.decode_without_bom_handling(bytes.get(bom_len..).unwrap_or_default()).0.into_owned()
        }
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Maps zip errors to extraction errors: password-protected entries are `Encrypted`, all other
/// failures name the problem as corruption.
fn zip_error(err: ZipError) -> ExtractError {
    match err {
        ZipError::UnsupportedArchive(ZipError::PASSWORD_REQUIRED) | ZipError::InvalidPassword => {
            ExtractError::Encrypted
        }
        ZipError::CompressionMethodNotSupported(method) => {
            ExtractError::Corrupt(format!("zip entry uses unsupported compression method {method}"))
        }
        other => ExtractError::Corrupt(format!("invalid zip: {other}")),
    }
}
