//! Getting an upload's bytes: a `file://` URI under an allowed root, or inline base64.
//!
//! Paths are canonicalised (symlinks and `..` resolved) before the root check, so neither
//! traversal nor a symlink can reach outside the allowed roots.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::error::Failure;
use crate::messages::UploadMessage;

/// Limits and roots for fetching.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Canonicalised allowed roots.
    pub allowed_roots: Vec<PathBuf>,
    /// Largest file read.
    pub max_file_bytes: u64,
    /// Largest inline upload.
    pub max_inline_bytes: usize,
}

impl FetchPolicy {
    /// Canonicalises the configured roots; roots that do not exist are skipped with a warning.
    pub fn new(roots: &[PathBuf], max_file_bytes: u64, max_inline_bytes: usize) -> Self {
        let allowed_roots = roots
            .iter()
            .filter_map(|root| match root.canonicalize() {
                Ok(path) => Some(path),
                Err(error) => {
                    tracing::warn!(root = %root.display(), %error, "storage.allowed_roots entry skipped");
                    None
                }
            })
            .collect();
        Self { allowed_roots, max_file_bytes, max_inline_bytes }
    }

    /// Whether `path` (canonical) lies under an allowed root.
    pub fn allows(&self, path: &Path) -> bool {
        self.allowed_roots.iter().any(|root| path.starts_with(root))
    }
}

/// Reads the upload's bytes. Blocking (file I/O): call from `spawn_blocking`.
///
/// # Errors
/// Permanent failures: neither or both sources given, bad URI, path outside the roots, missing
/// or unreadable file, over the size limit, bad base64.
pub fn fetch(upload: &UploadMessage, policy: &FetchPolicy) -> Result<Vec<u8>, Failure> {
    match (&upload.uri, &upload.content_b64) {
        (Some(uri), None) => read_uri(uri, policy),
        (None, Some(b64)) => decode_inline(b64, policy),
        (Some(_), Some(_)) => {
            Err(Failure::permanent("invalid_message", "give either `uri` or `content_b64`, not both"))
        }
        (None, None) => Err(Failure::permanent("invalid_message", "the upload has neither `uri` nor `content_b64`")),
    }
}

fn read_uri(uri: &str, policy: &FetchPolicy) -> Result<Vec<u8>, Failure> {
    let url = url::Url::parse(uri).map_err(|e| Failure::permanent("invalid_uri", format!("`{uri}`: {e}")))?;
    if url.scheme() != "file" {
        return Err(Failure::permanent(
            "invalid_uri",
            format!("scheme `{}` is not supported; use file:// or content_b64", url.scheme()),
        ));
    }
    let path = url
        .to_file_path()
        .map_err(|()| Failure::permanent("invalid_uri", format!("`{uri}` is not a local file path")))?;
    let canonical = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::permanent("not_found", format!("{} does not exist", path.display())));
        }
        Err(e) => return Err(Failure::permanent("unreadable", format!("{}: {e}", path.display()))),
    };
    if !policy.allows(&canonical) {
        return Err(Failure::permanent(
            "forbidden_path",
            format!("{} is outside storage.allowed_roots", canonical.display()),
        ));
    }
    let file = std::fs::File::open(&canonical)
        .map_err(|e| Failure::permanent("unreadable", format!("{}: {e}", canonical.display())))?;
    let meta =
        file.metadata().map_err(|e| Failure::permanent("unreadable", format!("{}: {e}", canonical.display())))?;
    if !meta.is_file() {
        return Err(Failure::permanent("unreadable", format!("{} is not a regular file", canonical.display())));
    }
    if meta.len() > policy.max_file_bytes {
        return Err(too_large(meta.len(), policy.max_file_bytes));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Read at most one byte past the limit, in case the file grew after the size check.
    file.take(policy.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::permanent("unreadable", format!("{}: {e}", canonical.display())))?;
    if bytes.len() as u64 > policy.max_file_bytes {
        return Err(too_large(bytes.len() as u64, policy.max_file_bytes));
    }
    Ok(bytes)
}

fn decode_inline(b64: &str, policy: &FetchPolicy) -> Result<Vec<u8>, Failure> {
    let limit = policy.max_inline_bytes.min(usize::try_from(policy.max_file_bytes).unwrap_or(usize::MAX));
    if b64.len() / 4 * 3 > limit + 3 {
        return Err(too_large((b64.len() / 4 * 3) as u64, limit as u64));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| Failure::permanent("invalid_content", format!("content_b64 is not valid base64: {e}")))
}

fn too_large(size: u64, max: u64) -> Failure {
    Failure::permanent("too_large", format!("{size} bytes is over the limit of {max} bytes (extract.max_file_bytes)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(uri: Option<String>, b64: Option<&str>) -> UploadMessage {
        UploadMessage {
            v: 1,
            upload_id: "u".into(),
            collection: crate::messages::CollectionName::new("c").expect("valid name"),
            filename: "f.txt".into(),
            content_type: None,
            uri,
            content_b64: b64.map(str::to_owned),
            metadata: Default::default(),
        }
    }

    #[test]
    fn files_under_allowed_roots_are_read_and_others_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("a.txt"), b"hello").expect("write");
        std::fs::write(outside.path().join("b.txt"), b"secret").expect("write");
        let policy = FetchPolicy::new(&[root.path().to_path_buf()], 1024, 1024);
        let ok = upload(Some(format!("file://{}/a.txt", root.path().display())), None);
        assert_eq!(fetch(&ok, &policy).expect("read"), b"hello");
        // Both temp dirs share a parent, so `..` walks from one into the other.
        let outside_name = outside.path().file_name().expect("name").to_string_lossy().into_owned();
        let sneaky = upload(Some(format!("file://{}/../{outside_name}/b.txt", root.path().display())), None);
        assert_eq!(fetch(&sneaky, &policy).expect_err("outside").code, "forbidden_path");
        let missing = upload(Some(format!("file://{}/nope.txt", root.path().display())), None);
        assert_eq!(fetch(&missing, &policy).expect_err("missing").code, "not_found");
    }

    #[test]
    fn inline_content_is_decoded_and_limited() {
        let policy = FetchPolicy::new(&[], 1024, 8);
        assert_eq!(fetch(&upload(None, Some("aGVsbG8=")), &policy).expect("decode"), b"hello");
        assert_eq!(fetch(&upload(None, Some("!!!")), &policy).expect_err("bad").code, "invalid_content");
        let big = "QUFB".repeat(10);
        assert_eq!(fetch(&upload(None, Some(&big)), &policy).expect_err("big").code, "too_large");
        assert_eq!(fetch(&upload(None, None), &policy).expect_err("none").code, "invalid_message");
    }
}
