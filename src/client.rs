//! The client side of the wire formats: build uploads for files, publish them, wait for their
//! outcomes on the events exchange, and send queries over request/reply. Used by `ragpipe ingest`
//! and `ragpipe query`, and by any Rust program that feeds ragpipe.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;

use crate::fetch::FetchPolicy;
use crate::messages::{
    self, CollectionName, DOCUMENT_FAILED, DOCUMENT_INGESTED, DocumentFailed, DocumentIngested, QueryRequest,
    UploadMessage, VERSION,
};
use crate::queue::{EventBus, Events, QueueError, RequestReply};

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file could not be read or listed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// A file is too large to send inline and is not under an allowed root.
    #[error(
        "{path}: {size} bytes is too large to send inline (ingest.max_inline_bytes = {max}); \
         add its directory to storage.allowed_roots so the worker reads it in place"
    )]
    TooLargeInline {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The inline limit.
        max: usize,
    },
    /// The broker failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A reply could not be decoded.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// A `--from-jsonl` manifest entry is unusable.
    #[error("manifest: {0}")]
    BadManifest(String),
}

/// Which files a directory walk takes.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Globs a file must match (any of them) to be taken; empty takes every file. A glob
    /// without `/` matches the file name, one with `/` the path below the walked directory;
    /// `*` and `?` stay within one path segment, `**` crosses segments.
    pub include: Vec<String>,
    /// Globs that leave a file (or a whole directory) out, matched like `include`.
    pub exclude: Vec<String>,
    /// Take hidden files and directories (names starting with `.`) too.
    pub hidden: bool,
}

/// The files under `paths` (files given directly are always taken), sorted and deduplicated.
/// Symbolic links are followed only while they stay inside the directory being walked, so a
/// link cannot pull in files from elsewhere (or loop).
///
/// # Errors
/// A path cannot be read or listed.
pub fn collect_files(paths: &[PathBuf], options: &WalkOptions) -> Result<Vec<PathBuf>, ClientError> {
    let mut files = Vec::new();
    for path in paths {
        let io = |error| ClientError::Io { path: path.clone(), error };
        if std::fs::metadata(path).map_err(io)?.is_file() {
            files.push(path.clone());
        } else {
            let root = path.canonicalize().map_err(io)?;
            walk(path, &root, Path::new(""), options, &mut files)?;
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(
    dir: &Path,
    root: &Path,
    relative: &Path,
    options: &WalkOptions,
    out: &mut Vec<PathBuf>,
) -> Result<(), ClientError> {
    let io = |error| ClientError::Io { path: dir.to_path_buf(), error };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && !options.hidden {
            continue;
        }
        let path = entry.path();
        let rel = relative.join(&name);
        let rel_text = rel.to_string_lossy().replace('\\', "/");
        if options.exclude.iter().any(|g| glob_matches(g, &name, &rel_text)) {
            continue;
        }
        if entry.file_type().map_err(io)?.is_symlink() {
            match path.canonicalize() {
                Ok(target) if target.starts_with(root) && target != root => {}
                _ => {
                    tracing::warn!(path = %path.display(), "skipped: a symbolic link out of the walked directory (or broken)");
                    continue;
                }
            }
        }
        let meta = std::fs::metadata(&path).map_err(|error| ClientError::Io { path: path.clone(), error })?;
        if meta.is_dir() {
            walk(&path, root, &rel, options, out)?;
        } else if meta.is_file()
            && (options.include.is_empty() || options.include.iter().any(|g| glob_matches(g, &name, &rel_text)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `glob` matches a file: against its `name` when the glob has no `/`, else against its
/// `path` below the walked directory.
fn glob_matches(glob: &str, name: &str, path: &str) -> bool {
    let target = if glob.contains('/') { path } else { name };
    glob_match(glob.as_bytes(), target.as_bytes())
}

/// `*` and `?` within one segment, `**` across segments.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    match glob {
        [] => text.is_empty(),
        [b'*', b'*', rest @ ..] => {
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=text.len()).any(|i| glob_match(rest, &text[i..]))
        }
        [b'*', rest @ ..] => {
            (0..=text.len()).take_while(|&i| i == 0 || text[i - 1] != b'/').any(|i| glob_match(rest, &text[i..]))
        }
        [b'?', rest @ ..] => text.first().is_some_and(|&c| c != b'/') && glob_match(rest, &text[1..]),
        [c, rest @ ..] => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

/// Builds the upload for one file: by reference (`file://`) when the worker may read it in
/// place (under `storage.allowed_roots`), inline (`content_b64`) otherwise.
///
/// # Errors
/// The file cannot be read, or is too large to inline.
pub fn upload_for_file(
    path: &Path,
    collection: &CollectionName,
    policy: &FetchPolicy,
) -> Result<UploadMessage, ClientError> {
    let io = |error| ClientError::Io { path: path.to_path_buf(), error };
    let canonical = path.canonicalize().map_err(io)?;
    let filename = canonical.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut upload = UploadMessage {
        v: VERSION,
        upload_id: uuid::Uuid::new_v4().to_string(),
        collection: collection.clone(),
        filename,
        content_type: guess_content_type(&canonical).map(str::to_owned),
        uri: None,
        content_b64: None,
        metadata: BTreeMap::new(),
    };
    if policy.allows(&canonical) {
        let uri =
            url::Url::from_file_path(&canonical).map_err(|()| io(std::io::Error::other("not an absolute path")))?;
        upload.uri = Some(uri.to_string());
    } else {
        let size = std::fs::metadata(&canonical).map_err(io)?.len();
        if size > policy.max_inline_bytes as u64 {
            return Err(ClientError::TooLargeInline { path: path.to_path_buf(), size, max: policy.max_inline_bytes });
        }
        let bytes = std::fs::read(&canonical).map_err(io)?;
        upload.content_b64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(upload)
}

/// Builds an inline (`content_b64`) upload of `bytes` named `filename`.
pub fn upload_for_bytes(filename: &str, bytes: &[u8], collection: &CollectionName) -> UploadMessage {
    UploadMessage {
        v: VERSION,
        upload_id: uuid::Uuid::new_v4().to_string(),
        collection: collection.clone(),
        filename: filename.to_owned(),
        content_type: guess_content_type(Path::new(filename)).map(str::to_owned),
        uri: None,
        content_b64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        metadata: BTreeMap::new(),
    }
}

/// One line of a `ragpipe ingest --from-jsonl` manifest: a file (`path`, relative to the
/// manifest's directory) or a `uri` the worker fetches, with the metadata to store with it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// A local file, sent like a file given on the command line.
    pub path: Option<PathBuf>,
    /// A location the worker reads itself (`file://` under its `storage.allowed_roots`).
    pub uri: Option<String>,
    /// Metadata stored with the document (filterable in queries).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl ManifestEntry {
    /// Parses one manifest line; `Ok(None)` for a blank one.
    ///
    /// # Errors
    /// Not a JSON object of the expected fields, or neither or both of `path` and `uri`.
    pub fn parse(line: &str) -> Result<Option<Self>, String> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let entry: Self = serde_json::from_str(line).map_err(|e| e.to_string())?;
        match (&entry.path, &entry.uri) {
            (Some(_), None) | (None, Some(_)) => Ok(Some(entry)),
            _ => Err("give exactly one of `path` and `uri`".to_owned()),
        }
    }

    /// The upload for this entry; `base` is the manifest's directory.
    ///
    /// # Errors
    /// The file cannot be read or inlined, or the URI does not parse.
    pub fn to_upload(
        &self,
        base: &Path,
        collection: &CollectionName,
        policy: &FetchPolicy,
    ) -> Result<UploadMessage, ClientError> {
        let mut upload = match (&self.path, &self.uri) {
            (Some(path), _) => upload_for_file(&base.join(path), collection, policy)?,
            (None, Some(uri)) => {
                let parsed = url::Url::parse(uri).map_err(|e| ClientError::BadManifest(format!("{uri}: {e}")))?;
                let filename = parsed.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned();
                UploadMessage {
                    v: VERSION,
                    upload_id: uuid::Uuid::new_v4().to_string(),
                    collection: collection.clone(),
                    content_type: guess_content_type(Path::new(&filename)).map(str::to_owned),
                    filename: if filename.is_empty() { uri.clone() } else { filename },
                    uri: Some(uri.clone()),
                    content_b64: None,
                    metadata: BTreeMap::new(),
                }
            }
            (None, None) => return Err(ClientError::BadManifest("an entry without `path` or `uri`".to_owned())),
        };
        upload.metadata.clone_from(&self.metadata);
        Ok(upload)
    }
}

/// A content-type hint from the file extension (the worker sniffs the content anyway).
pub fn guess_content_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "txt" | "text" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _ => return None,
    })
}

/// The outcome of one upload, as reported by the events exchange.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored and indexed (or a duplicate, or `no_text`).
    Ingested(DocumentIngested),
    /// Failed for good.
    Failed(DocumentFailed),
}

impl Outcome {
    /// The upload it answers.
    pub fn upload_id(&self) -> &str {
        match self {
            Outcome::Ingested(e) => &e.upload_id,
            Outcome::Failed(e) => &e.upload_id,
        }
    }
}

/// Subscribes to upload outcomes. Subscribe *before* publishing so no event is missed.
///
/// # Errors
/// The broker fails.
pub async fn subscribe_outcomes(events: &dyn EventBus) -> Result<Events, ClientError> {
    Ok(events.subscribe(&[DOCUMENT_INGESTED, DOCUMENT_FAILED]).await?)
}

/// Waits until every upload in `pending` has an outcome or `timeout` passes; calls `progress`
/// per outcome. Returns the outcomes by upload id (missing ones timed out).
pub async fn wait_for_outcomes(
    events: &mut Events,
    pending: &[String],
    timeout: Duration,
    mut progress: impl FnMut(&Outcome),
) -> HashMap<String, Outcome> {
    let wanted: std::collections::HashSet<&str> = pending.iter().map(String::as_str).collect();
    let mut outcomes = HashMap::new();
    let collect = async {
        while outcomes.len() < wanted.len() {
            let Some(Ok(event)) = events.next().await else { break };
            let outcome = match event.routing_key.as_str() {
                DOCUMENT_INGESTED => serde_json::from_slice(&event.body).ok().map(Outcome::Ingested),
                DOCUMENT_FAILED => serde_json::from_slice(&event.body).ok().map(Outcome::Failed),
                _ => None,
            };
            let Some(outcome) = outcome else { continue };
            let id = outcome.upload_id().to_owned();
            if wanted.contains(id.as_str()) && !outcomes.contains_key(&id) {
                progress(&outcome);
                outcomes.insert(id, outcome);
            }
        }
    };
    let _ = tokio::time::timeout(timeout, collect).await;
    outcomes
}

/// Sends a query and decodes the reply (either a response or an error body).
///
/// # Errors
/// The broker fails, no reply arrives in time, or the reply is not JSON.
pub async fn query(
    requests: &dyn RequestReply,
    request: &QueryRequest,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let reply = requests.request(&messages::encode(request), timeout).await?;
    serde_json::from_slice(&reply).map_err(|e| ClientError::BadReply(e.to_string()))
}

/// Sends a query with `stream: true`, handing each streamed piece of the answer to `on_part` in
/// order as it arrives, and decodes the final reply.
///
/// # Errors
/// As [`query`]; also a part that is missing or out of order.
pub async fn query_streaming(
    requests: &dyn RequestReply,
    request: &QueryRequest,
    timeout: Duration,
    mut on_part: impl FnMut(&str),
) -> Result<serde_json::Value, ClientError> {
    let mut request = request.clone();
    request.stream = Some(true);
    let mut messages = requests.request_parts(&messages::encode(&request), timeout).await?;
    let mut next_seq = 0;
    while let Some(message) = messages.next().await {
        let message = message?;
        let value: serde_json::Value =
            serde_json::from_slice(&message.body).map_err(|e| ClientError::BadReply(e.to_string()))?;
        let seq = value.get("seq").and_then(serde_json::Value::as_u64);
        // (A request rejected before it was understood gets a plain, unnumbered error reply.)
        if seq != Some(next_seq) && !(message.last && seq.is_none()) {
            return Err(ClientError::BadReply(format!("reply part {seq:?} arrived where {next_seq} was due")));
        }
        next_seq += 1;
        if message.last {
            return Ok(value);
        }
        let part: messages::AnswerPart =
            serde_json::from_value(value).map_err(|e| ClientError::BadReply(e.to_string()))?;
        on_part(&part.delta);
    }
    Err(ClientError::BadReply("the reply ended before its final message".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_or_paths() {
        assert!(glob_matches("*.pdf", "a.pdf", "x/a.pdf"));
        assert!(!glob_matches("*.pdf", "a.pdf.txt", "a.pdf.txt"));
        assert!(glob_matches("reports/*.md", "q1.md", "reports/q1.md"));
        assert!(!glob_matches("reports/*.md", "q1.md", "reports/2024/q1.md"));
        assert!(glob_matches("reports/**/*.md", "q1.md", "reports/2024/q1.md"));
        assert!(glob_matches("reports/**/*.md", "q1.md", "reports/q1.md"));
        assert!(glob_matches("**/draft-?.txt", "draft-1.txt", "a/b/draft-1.txt"));
        assert!(!glob_matches("draft-?.txt", "draft-10.txt", "draft-10.txt"));
    }

    #[test]
    fn manifest_lines_need_exactly_one_source() {
        let entry = ManifestEntry::parse(r#"{"path": "a.txt", "metadata": {"team": "ops"}}"#).expect("valid");
        assert_eq!(entry.expect("entry").metadata["team"], "ops");
        assert!(ManifestEntry::parse("   ").expect("blank").is_none());
        assert!(ManifestEntry::parse(r#"{"path": "a", "uri": "file:///a"}"#).is_err());
        assert!(ManifestEntry::parse(r#"{"metadata": {}}"#).is_err());
        assert!(ManifestEntry::parse(r#"{"path": "a", "colour": "red"}"#).is_err());
        assert!(ManifestEntry::parse("not json").is_err());
    }
}
