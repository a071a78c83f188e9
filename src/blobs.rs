//! Content-addressable storage of original bytes: `<root>/ab/<sha256>`.
//!
//! One level of 256 fan-out folders, as git keeps its objects: a second level (`ab/cd/`) made
//! almost every small document create a folder (a new inode: 6 % of the embedded worker's CPU
//! samples under `perf` in `benches/small_docs.sh`); 256 folders hold millions of blobs (ext4
//! and XFS index large folders). Blobs written under the older `ab/cd/` layout stay where they
//! are: documents keep the path they were stored at.
//!
//! The name is the full hash, never the upload's file name (the seed article stored files under
//! their names and two uploads of `report.pdf` overwrote each other). Writes are atomic: temp
//! file, fsync, rename, fsync the directory, so a crash never leaves a half-written blob under
//! a valid name.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A directory of blobs named by their SHA-256.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Fan-out directories known to exist (at most 256): creating one again is a syscall per
    /// blob that contends on the parent directory.
    made: Arc<Mutex<HashSet<PathBuf>>>,
}

impl BlobStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), made: Arc::default() }
    }

    /// Where the blob with this hash lives (whether or not it exists).
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2.min(sha256.len())]).join(sha256)
    }

    /// Stores `bytes` under their hash unless already present; returns the path.
    ///
    /// Blocking file I/O: call it from `spawn_blocking`.
    ///
    /// # Errors
    /// Any I/O error creating directories or writing the file.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path_of(sha256);
        if path.exists() {
            return Ok(path);
        }
        let dir = path.parent().unwrap_or(&self.root);
        if !self.made.lock().unwrap_or_else(PoisonError::into_inner).contains(dir) {
            std::fs::create_dir_all(dir)?;
            self.made.lock().unwrap_or_else(PoisonError::into_inner).insert(dir.to_path_buf());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        sync_dir(dir)?;
        Ok(path)
    }
}

/// fsyncs a directory so a rename inside it survives a crash.
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_by_hash_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path());
        let hash = sha256_hex(b"hello");
        let path = store.put(&hash, b"hello").expect("put");
        assert!(path.ends_with(format!("2c/{hash}")));
        assert_eq!(std::fs::read(&path).expect("read"), b"hello");
        assert_eq!(store.put(&hash, b"hello").expect("again"), path);
    }
}
