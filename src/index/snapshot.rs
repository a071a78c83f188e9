//! Index snapshots on disk: `<dir>/<collection>/manifest.json` naming one `index-*.faiss` file.
//!
//! Writing: the index goes to a fresh file (temp name, fsync, rename), then the manifest (temp,
//! fsync, rename), then the directory is fsynced and unreferenced index files are removed. The
//! manifest rename is the commit point, so a crash at any moment leaves either the old snapshot
//! or the new one. Loading verifies the checksum, count, dimension and model, and that the
//! snapshot belongs to this store (its identity and the collection's id) and is not ahead of the
//! store's change log (a restored backup); anything off means "rebuild from the store", never
//! "load it anyway".

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::vectors::{IndexError, IndexKind, VectorIndex};
use crate::blobs::sync_dir;

/// Snapshot format version (2: the change log position and the store's identity).
const FORMAT: u32 = 2;
const MANIFEST: &str = "manifest.json";

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this manifest.
    pub format: u32,
    /// Collection name.
    pub collection: String,
    /// Index generation (bumped by rebuilds).
    pub generation: u64,
    /// The last change log entry of the collection the index contains.
    pub log_seq: i64,
    /// The store the vectors came from ([`crate::store::Store::identity`]).
    pub store_id: String,
    /// The collection's id in that store (a recreated collection is another one).
    pub collection_id: i64,
    /// Index structure and search parameters.
    #[serde(flatten)]
    pub index: IndexKind,
    /// Ids removed but still inside the structure (HNSW cannot remove in place).
    #[serde(default)]
    pub tombstones: Vec<i64>,
    /// Vectors in the index file.
    pub count: usize,
    /// Vector dimension.
    pub dimensions: usize,
    /// Embedding model of the vectors.
    pub model: String,
    /// Index file name, relative to the collection directory.
    pub file: String,
    /// CRC-32 of the index file, hex.
    pub crc32: String,
}

/// A loaded snapshot.
pub struct Loaded {
    /// The index.
    pub index: VectorIndex,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Directory of one collection's snapshots.
pub fn collection_dir(root: &Path, collection: &str) -> PathBuf {
    root.join(collection)
}

/// Writes a snapshot of `index` described by `manifest` (whose `file`, `count` and `crc32` are
/// filled in here). Blocking: run it off the async threads.
///
/// # Errors
/// Any I/O or FAISS error; the previous snapshot stays valid.
pub fn write(root: &Path, index: &VectorIndex, mut manifest: Manifest) -> Result<Manifest, IndexError> {
    let dir = collection_dir(root, &manifest.collection);
    std::fs::create_dir_all(&dir).map_err(io("create snapshot directory"))?;
    // A replica that has not adopted a rebuild yet must not replace the rebuild's snapshot with
    // its older generation (processes sharing the directory).
    if let Some(existing) = std::fs::read(dir.join(MANIFEST))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
        .filter(|m| m.store_id == manifest.store_id && m.collection_id == manifest.collection_id)
        .filter(|m| m.generation > manifest.generation)
    {
        tracing::debug!(
            collection = %manifest.collection,
            ours = manifest.generation,
            newer = existing.generation,
            "a newer index generation is on disk; not overwriting it"
        );
        return Ok(existing);
    }
    let file = format!("index-{}-{}-{}.faiss", manifest.generation, manifest.log_seq, uuid::Uuid::new_v4().simple());
    // The writer's pid in the name: a temp file of a process that died (SIGKILL mid-write) is
    // told from one being written, and removed at the next load or snapshot.
    let tmp = dir.join(format!(".{file}.{}{TMP_SUFFIX}", std::process::id()));
    index.write(&tmp)?;
    let crc = file_crc32(&tmp)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("sync index file"))?;
    std::fs::rename(&tmp, dir.join(&file)).map_err(io("rename index file"))?;

    manifest.format = FORMAT;
    manifest.file = file;
    manifest.count = index.len();
    manifest.index = index.kind();
    manifest.tombstones = index.tombstones().iter().copied().collect();
    manifest.tombstones.sort_unstable();
    manifest.crc32 = format!("{crc:08x}");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| IndexError::Snapshot(e.to_string()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io("create manifest"))?;
    tmp.write_all(&json).map_err(io("write manifest"))?;
    tmp.as_file().sync_all().map_err(io("sync manifest"))?;
    tmp.persist(dir.join(MANIFEST)).map_err(|e| IndexError::Snapshot(format!("rename manifest: {}", e.error)))?;
    sync_dir(&dir).map_err(io("sync snapshot directory"))?;
    remove_unreferenced(&dir, &manifest.file);
    Ok(manifest)
}

/// What a snapshot must match to be loaded.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// Collection name.
    pub collection: &'a str,
    /// Vector dimension.
    pub dimensions: usize,
    /// Embedding model.
    pub model: &'a str,
    /// The store's identity.
    pub store_id: &'a str,
    /// The collection's id in the store.
    pub collection_id: i64,
    /// The store's last log sequence for the collection: a snapshot ahead of it comes from a
    /// newer state of the data than the store holds (a restored backup).
    pub last_seq: i64,
}

/// Loads the collection's snapshot if there is one that matches `expected`.
///
/// `Ok(None)` means "no usable snapshot" (none, torn, mismatched, from another store or ahead of
/// it); the reason is logged and the caller rebuilds from the store.
///
/// # Errors
/// Never for a bad snapshot; only for an unreadable directory.
pub fn load(root: &Path, expected: &Expected<'_>) -> Result<Option<Loaded>, IndexError> {
    let collection = expected.collection;
    let dir = collection_dir(root, collection);
    remove_abandoned_tmp(&dir);
    let manifest_path = dir.join(MANIFEST);
    let bytes = match std::fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IndexError::Snapshot(format!("read {}: {e}", manifest_path.display()))),
    };
    match verify(&dir, &bytes, expected) {
        Ok(loaded) => Ok(Some(loaded)),
        Err(reason) => {
            tracing::warn!(collection, %reason, "index snapshot rejected; rebuilding from the store");
            Ok(None)
        }
    }
}

fn verify(dir: &Path, manifest: &[u8], expected: &Expected<'_>) -> Result<Loaded, String> {
    let (collection, dimensions, model) = (expected.collection, expected.dimensions, expected.model);
    let format: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("manifest unreadable: {e}"))?;
    if format.get("format").and_then(serde_json::Value::as_u64) != Some(u64::from(FORMAT)) {
        return Err(format!("manifest format {} (expected {FORMAT})", format["format"]));
    }
    let manifest: Manifest = serde_json::from_value(format).map_err(|e| format!("manifest unreadable: {e}"))?;
    if manifest.store_id != expected.store_id || manifest.collection_id != expected.collection_id {
        return Err(format!(
            "snapshot was made from another store or another incarnation of the collection (store {}, collection \
             id {}; this store is {}, collection id {})",
            manifest.store_id, manifest.collection_id, expected.store_id, expected.collection_id
        ));
    }
    if manifest.log_seq > expected.last_seq {
        return Err(format!(
            "snapshot contains change log entries up to {} but the store's log ends at {} (a restored backup?)",
            manifest.log_seq, expected.last_seq
        ));
    }
    if manifest.collection != collection || manifest.dimensions != dimensions || manifest.model != model {
        return Err(format!(
            "snapshot is for {}/{}d/{}, expected {collection}/{dimensions}d/{model}",
            manifest.collection, manifest.dimensions, manifest.model
        ));
    }
    if manifest.file.contains('/') || manifest.file.contains("..") {
        return Err(format!("manifest names a file outside its directory: {}", manifest.file));
    }
    let path = dir.join(&manifest.file);
    let crc = file_crc32(&path).map_err(|e| e.to_string())?;
    if format!("{crc:08x}") != manifest.crc32 {
        return Err(format!("checksum mismatch on {}", manifest.file));
    }
    let tombstones = manifest.tombstones.iter().copied().collect();
    let index = VectorIndex::read(&path, manifest.index, tombstones).map_err(|e| e.to_string())?;
    if index.len() != manifest.count || index.dimensions() != dimensions {
        return Err(format!(
            "index holds {} vectors of {}d; manifest says {}",
            index.len(),
            index.dimensions(),
            manifest.count
        ));
    }
    Ok(Loaded { index, manifest })
}

fn file_crc32(path: &Path) -> Result<u32, IndexError> {
    let mut file = std::fs::File::open(path).map_err(io("open index file"))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io("read index file"))?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Ending of an index file being written: `.index-….faiss.<pid>.faiss-tmp`.
const TMP_SUFFIX: &str = ".faiss-tmp";

/// Removes index files other than `keep`, and abandoned temp files. Best effort: a file another
/// writer is still producing will be collected by a later snapshot.
fn remove_unreferenced(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.ends_with(".faiss") && name != keep) || abandoned_tmp(&entry) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes the temp files of writers that died mid-write, which nothing else would remove.
fn remove_abandoned_tmp(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten().filter(abandoned_tmp) {
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::info!(file = %entry.path().display(), "removed an index file a killed writer left"),
            Err(error) => {
                tracing::warn!(file = %entry.path().display(), %error, "could not remove an abandoned index file")
            }
        }
    }
}

/// Whether `entry` is a temp index file nobody writes any more: its writer's process is gone
/// (the directory may be shared by processes of this machine), or it is over an hour old (also
/// an older release's `.faiss.tmp`, which has no pid).
fn abandoned_tmp(entry: &std::fs::DirEntry) -> bool {
    let name = entry.file_name();
    let name = name.to_string_lossy();
    let pid =
        name.strip_suffix(TMP_SUFFIX).and_then(|rest| rest.rsplit('.').next()).and_then(|p| p.parse::<u32>().ok());
    let is_tmp = pid.is_some() || name.ends_with(".faiss.tmp");
    // (Where there is no /proc, only age tells.)
    let writer_gone = pid.is_some_and(|pid| {
        pid != std::process::id() && Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
    });
    let old =
        entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600));
    is_tmp && (writer_gone || old)
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> IndexError {
    move |e| IndexError::Snapshot(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            collection: "c".into(),
            generation: 1,
            log_seq: 9,
            store_id: "store-a".into(),
            collection_id: 1,
            index: IndexKind::Flat,
            tombstones: Vec::new(),
            count: 0,
            dimensions: 2,
            model: "m".into(),
            file: String::new(),
            crc32: String::new(),
        }
    }

    #[test]
    fn snapshots_round_trip_and_torn_files_are_rejected() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut index = VectorIndex::new(2).expect("index");
        index.add(&[3, 9], &[1.0, 0.0, 0.0, 1.0]).expect("add");
        let written = write(root.path(), &index, manifest()).expect("write");
        let loaded = load(root.path(), &expected()).expect("load").expect("snapshot");
        assert_eq!(loaded.manifest, written);
        assert!(loaded.index.contains(9));
        assert!(load(root.path(), &Expected { model: "other-model", ..expected() }).expect("load").is_none());
        // Another store, another incarnation of the collection, or a store behind the snapshot.
        assert!(load(root.path(), &Expected { store_id: "store-b", ..expected() }).expect("load").is_none());
        assert!(load(root.path(), &Expected { collection_id: 2, ..expected() }).expect("load").is_none());
        assert!(load(root.path(), &Expected { last_seq: 8, ..expected() }).expect("load").is_none());

        // Corrupt the index file: the checksum must catch it.
        let path = root.path().join("c").join(&written.file);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        assert!(load(root.path(), &expected()).expect("load").is_none());
    }

    fn expected() -> Expected<'static> {
        Expected { collection: "c", dimensions: 2, model: "m", store_id: "store-a", collection_id: 1, last_seq: 9 }
    }

    #[test]
    fn a_new_snapshot_replaces_the_old_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let index = VectorIndex::new(2).expect("index");
        let first = write(root.path(), &index, manifest()).expect("first");
        let second = write(root.path(), &index, Manifest { log_seq: 20, ..manifest() }).expect("second");
        assert!(!root.path().join("c").join(&first.file).exists());
        assert!(root.path().join("c").join(&second.file).exists());
    }

    #[test]
    fn temp_files_of_killed_writers_are_removed_at_load_and_live_ones_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut index = VectorIndex::new(2).expect("index");
        index.add(&[3], &[1.0, 0.0]).expect("add");
        write(root.path(), &index, manifest()).expect("snapshot");
        let dir = root.path().join("c");
        // Pids above the kernel's maximum (2^22) never run; pid 1 and this process do.
        let dead = dir.join(format!(".index-1-9-a.faiss.{}{TMP_SUFFIX}", 9_999_999));
        let init = dir.join(format!(".index-1-9-b.faiss.1{TMP_SUFFIX}"));
        let ours = dir.join(format!(".index-1-9-c.faiss.{}{TMP_SUFFIX}", std::process::id()));
        for file in [&dead, &init, &ours] {
            std::fs::write(file, b"partial").expect("temp file");
        }
        assert!(load(root.path(), &expected()).expect("load").is_some());
        assert!(!dead.exists(), "a killed writer's file is removed");
        assert!(init.exists() && ours.exists(), "files of live writers stay");
    }
}
