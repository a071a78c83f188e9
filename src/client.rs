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
}

/// Files under `paths` (directories walked recursively, hidden entries skipped), sorted.
///
/// # Errors
/// A path that does not exist or cannot be listed.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ClientError> {
    let mut files = Vec::new();
    for path in paths {
        walk(path, &mut files)?;
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ClientError> {
    let io = |error| ClientError::Io { path: path.to_path_buf(), error };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                walk(&entry.path(), out)?;
            }
        }
    }
    Ok(())
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
            let id = match &outcome {
                Outcome::Ingested(e) => e.upload_id.clone(),
                Outcome::Failed(e) => e.upload_id.clone(),
            };
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
