//! Versioned wire types (DESIGN.md §8): uploads, queries, replies and events, all JSON.
//!
//! Parsing goes through [`decode`], which checks the version before the shape, so an unknown
//! version is reported as such rather than as a confusing missing-field error.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The only wire version this build speaks.
pub const VERSION: u32 = 1;

/// Why a message could not be decoded. Always permanent: redelivery would not fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A version this build does not understand.
    #[error("unsupported message version {found}; this worker speaks v{VERSION}")]
    UnsupportedVersion {
        /// The `v` field as sent.
        found: serde_json::Value,
    },
    /// The `collection` field is not a valid collection name.
    #[error(transparent)]
    InvalidCollection(#[from] InvalidCollection),
}

impl DecodeError {
    /// Stable short code for replies, headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::InvalidCollection(_) => "invalid_collection",
        }
    }
}

/// Decodes a versioned JSON message.
///
/// # Errors
/// [`DecodeError::Malformed`] for bad JSON or shape, [`DecodeError::UnsupportedVersion`] for a
/// `v` other than [`VERSION`].
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match value.get("v") {
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => return Err(DecodeError::UnsupportedVersion { found: v.clone() }),
        None => return Err(DecodeError::Malformed("missing field `v` (message version)".into())),
    }
    // Checked here, before the shape, so a bad name gets its own code rather than "malformed".
    if let Some(name) = value.get("collection").and_then(serde_json::Value::as_str) {
        CollectionName::new(name)?;
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encodes a message as JSON. Our types always serialise, so this cannot fail.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_else(|e| {
        // Only reachable with a non-string map key, which none of our types have.
        format!(r#"{{"v":1,"error":{{"code":"internal","message":"encode: {e}"}}}}"#).into_bytes()
    })
}

/// A collection name, checked when a message is decoded: collection names become directory
/// names (index snapshots), so they keep to a safe alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CollectionName(String);

/// Why a name is not a valid [`CollectionName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("collection name `{0}` must be 1-128 characters of A-Z a-z 0-9 - _ . and not start with `.`")]
pub struct InvalidCollection(pub String);

impl CollectionName {
    /// Checks `name`.
    ///
    /// # Errors
    /// Empty, longer than 128 characters, starting with `.`, or outside `A-Z a-z 0-9 - _ .`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidCollection> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok { Ok(Self(name)) } else { Err(InvalidCollection(name)) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CollectionName {
    type Error = InvalidCollection;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl From<CollectionName> for String {
    fn from(name: CollectionName) -> Self {
        name.0
    }
}

impl std::str::FromStr for CollectionName {
    type Err = InvalidCollection;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl std::fmt::Display for CollectionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for CollectionName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Document status, on the wire and in the store (`documents.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentStatus {
    /// Claimed; an attempt is (or was) processing it.
    Pending,
    /// Chunks and vectors are stored.
    Ingested,
    /// Parsed fine, nothing to index.
    NoText,
    /// Failed for good, with a reason.
    Failed,
    /// Soft-deleted.
    Deleted,
}

impl DocumentStatus {
    /// The name stored in `documents.status` and sent in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ingested => "ingested",
            Self::NoText => "no_text",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }

    /// Whether the document is settled for good (another upload of it is a duplicate).
    pub fn is_done(self) -> bool {
        matches!(self, Self::Ingested | Self::NoText)
    }
}

impl std::str::FromStr for DocumentStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "pending" => Self::Pending,
            "ingested" => Self::Ingested,
            "no_text" => Self::NoText,
            "failed" => Self::Failed,
            "deleted" => Self::Deleted,
            other => return Err(format!("unknown document status `{other}`")),
        })
    }
}

impl std::fmt::Display for DocumentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A document to ingest. Exactly one of `uri` and `content_b64` carries the bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadMessage {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// Caller's id for this upload; echoed in events.
    pub upload_id: String,
    /// Collection (tenant) the document belongs to.
    pub collection: CollectionName,
    /// Original file name (used for type hints and citations, never for storage paths).
    pub filename: String,
    /// Declared MIME type, a hint only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `file://` URI under one of the configured allowed roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The document's bytes, base64 (standard alphabet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_b64: Option<String>,
    /// Free-form metadata kept with the document (e.g. `password` for an encrypted PDF).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// A query, sent to the query queue with `reply_to` and `correlation_id` properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// The question or search text.
    pub query: String,
    /// Collection to search; the worker's default collection when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<CollectionName>,
    /// Several collections searched at once, results merged by score (instead of `collection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<CollectionName>>,
    /// Results wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// How to retrieve; the worker's `[query] default_mode` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SearchMode>,
    /// Drop results scoring below this: a cosine in dense mode (inner product of normalised
    /// vectors), a BM25 score in lexical mode, and in hybrid mode a cosine floor on the dense leg
    /// before fusion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Ask for an answer with citations (by the LLM if one is configured, else extractive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<bool>,
    /// Metadata filters, applied before ranking: `{"key": value}` (equality), `{"key": [a, b]}`
    /// or `{"key": {"in": [a, b]}}` (any of); every key must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<BTreeMap<String, serde_json::Value>>,
    /// Stream the answer: [`AnswerPart`]s as it is written, then the final reply (with
    /// `answer: true`; without an answer there is only the final reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// When the requester stops waiting, in Unix milliseconds: a request past it is not worked
    /// on (and gets no reply), work that outlives it is abandoned with a `timeout` error reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

impl QueryRequest {
    /// A request (current version) for the `top_k` best chunks of `collection` for `query`;
    /// set the other fields on the result if needed.
    pub fn new(query: impl Into<String>, collection: CollectionName, top_k: usize) -> Self {
        Self {
            v: VERSION,
            query: query.into(),
            collection: Some(collection),
            collections: None,
            top_k: Some(top_k),
            mode: None,
            min_score: None,
            answer: None,
            filters: None,
            stream: None,
            deadline_ms: None,
        }
    }
}

/// How chunks are retrieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Nearest vectors (FAISS); scores are cosines.
    Dense,
    /// BM25 over the chunk texts; scores are BM25's.
    Lexical,
    /// Both, fused by reciprocal rank (`[query] rrf_k`); scores are the fused ones.
    Hybrid,
    /// Documents first, then passages: documents rank by their best hybrid chunk, and the
    /// results are the best chunks of the top `[query] hierarchical_documents` documents.
    Hierarchical,
}

impl std::str::FromStr for SearchMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "dense" => Ok(Self::Dense),
            "lexical" => Ok(Self::Lexical),
            "hybrid" => Ok(Self::Hybrid),
            "hierarchical" => Ok(Self::Hierarchical),
            other => Err(format!("unknown mode `{other}`: dense, lexical, hybrid or hierarchical")),
        }
    }
}

impl SearchMode {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Lexical => "lexical",
            Self::Hybrid => "hybrid",
            Self::Hierarchical => "hierarchical",
        }
    }
}

/// One retrieved chunk with its citation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultChunk {
    /// Chunk id (also its FAISS id).
    pub chunk_id: i64,
    /// Document the chunk belongs to.
    pub document_id: i64,
    /// Collection the chunk belongs to.
    #[serde(default)]
    pub collection: String,
    /// The document's original file name.
    pub filename: String,
    /// The chunk's text.
    pub text: String,
    /// Score in the request's mode: cosine (dense), BM25 (lexical) or fused (hybrid).
    pub score: f32,
    /// Start of the chunk in the extracted text, in characters.
    pub char_start: i64,
    /// End of the chunk in the extracted text, in characters.
    pub char_end: i64,
    /// First page of the chunk, for paged sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<i32>,
    /// Heading path (`Install > Linux`) for structured sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading_path: Option<String>,
}

/// A rating of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    /// Helpful.
    Up,
    /// Not helpful.
    Down,
}

/// A client's feedback on a reply, sent to the query queue like a query: `{v: 1, feedback:
/// {query_id, rating: "up" | "down", comment?}}`. Stored beside the query log; with `reply_to`,
/// acknowledged with `{v: 1, ok: true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackMessage {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// The rating.
    pub feedback: Feedback,
}

/// The body of a [`FeedbackMessage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The `query_id` of the reply rated.
    pub query_id: String,
    /// Up or down.
    pub rating: Rating,
    /// Optional words (at most 2,000 characters are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// How an answer was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// Written by the configured LLM from the numbered context.
    Generated,
    /// The context's best-matching sentences, quoted (no LLM configured).
    Extractive,
}

/// A source an answer cites: `[n]` in the answer's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// The number the answer cites it by.
    pub n: usize,
    /// The chunk cited.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: i64,
    /// The document's original file name.
    pub filename: String,
    /// First page of the chunk, for paged sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<i32>,
    /// Heading path for structured sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading_path: Option<String>,
    /// Start of the chunk in the extracted text, in characters.
    pub char_start: i64,
    /// End of the chunk in the extracted text, in characters.
    pub char_end: i64,
}

/// Citations taken out of an answer, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitationsRemoved {
    /// Citing a number that was not in the context.
    pub unknown: usize,
    /// Citing a chunk that does not support the sentence.
    pub unsupported: usize,
}

/// Tokens an answer cost, and the estimated price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens (system prompt, context and question).
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Estimated cost in US dollars, from the configured prices.
    pub cost_usd: f64,
}

/// An answer to the question, with the sources it cites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// How it was made.
    pub kind: AnswerKind,
    /// The answer, citing its sources as `[n]`.
    pub text: String,
    /// The sources still cited after the citation check, in order of first citation.
    pub sources: Vec<Citation>,
    /// Citations the check removed.
    pub citations_removed: CitationsRemoved,
    /// Tokens of context the answer was made from.
    pub context_tokens: usize,
    /// Model tokens and cost (generated answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
}

/// A successful query reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// The query's id in the query log: what feedback refers to.
    #[serde(default)]
    pub query_id: String,
    /// The answer, when `answer: true` was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// Retrieved chunks, best first.
    pub chunks: Vec<ResultChunk>,
    /// Whether the results came from a cache (`cache_layer` says which).
    pub cached: bool,
    /// The cache layer that answered: `response` (the whole reply) or `retrieval` (the chunks;
    /// an answer asked for was still made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_layer: Option<String>,
    /// Index generation the results came from.
    pub generation: u64,
    /// Time spent per step, in milliseconds.
    pub timings_ms: BTreeMap<String, f64>,
}

/// One streamed part of an answer (`stream: true`), sent to `reply_to` with the request's
/// `correlation_id` (AMQP `type` `ragpipe.reply.part`): `{v, query_id, seq, final: false, delta}`.
/// Parts carry the answer's text as it is written, `seq` counting from 0; the final reply (a
/// [`QueryResponse`] or [`ErrorReply`], AMQP `type` `ragpipe.reply`) follows with the next `seq`
/// and `final: true`, and its `answer.text` is the checked text (citations the check removed are
/// gone from it), which replaces the parts' concatenation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerPart {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// The query's id (the same in every message of the reply).
    pub query_id: String,
    /// Position in the reply, from 0.
    pub seq: u32,
    /// Always `false` for a part.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The next piece of the answer's text.
    pub delta: String,
}

/// `reply` (an encoded [`QueryResponse`] or [`ErrorReply`]) marked as the final message of a
/// streamed reply: `seq` and `final: true` added.
pub fn streamed_final(reply: &impl Serialize, seq: u32) -> Vec<u8> {
    let mut value = serde_json::to_value(reply).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("seq".into(), seq.into());
        object.insert("final".into(), true.into());
    }
    encode(&value)
}

/// A failed query reply: `{v:1, error:{code, message}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// What went wrong.
    pub error: ErrorBody,
    /// The query's id in the query log (query replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_id: Option<String>,
}

/// Body of an [`ErrorReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code: `malformed`, `unsupported_version`, `invalid_request`, `unknown_collection`, `internal`, ...
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { v: VERSION, error: ErrorBody { code: code.into(), message: message.into() }, query_id: None }
    }
}

/// A delete request from an upstream system, sent like an upload (same exchange, routing key
/// and queue): `{"v": 1, "delete": "<document-id | sha256 | upload-id>", "collection": "…"}`.
/// The ingest worker soft-deletes what it names, publishes `document.deleted` per document and
/// acknowledges; a delete that names nothing (already deleted, a redelivery) is acknowledged too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteMessage {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// A document id, a SHA-256 (64 hex digits) or an upload id.
    pub delete: String,
    /// Only in this collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<CollectionName>,
}

/// Routing key of [`DocumentIngested`].
pub const DOCUMENT_INGESTED: &str = "document.ingested";
/// Routing key of [`DocumentFailed`].
pub const DOCUMENT_FAILED: &str = "document.failed";
/// Routing key of [`DocumentDeleted`].
pub const DOCUMENT_DELETED: &str = "document.deleted";
/// Routing key of [`IndexRebuilt`].
pub const INDEX_REBUILT: &str = "index.rebuilt";

/// Published when a new generation of a collection's index passed verification and its snapshot
/// is written: replicas swap to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRebuilt {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// The collection.
    pub collection: String,
    /// The new generation.
    pub generation: u64,
    /// Vectors it holds.
    pub vectors: usize,
    /// Structure and search parameters, e.g. `ivf (nlist 4000, nprobe 24)`.
    pub kind: String,
    /// Measured recall@10 against exact search (absent for exact kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
}

/// Published once a document's chunks are committed and indexed (or it was a duplicate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentIngested {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// The upload this event answers.
    pub upload_id: String,
    /// Collection of the document.
    pub collection: String,
    /// The document (for a duplicate: the one already stored).
    pub document_id: i64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// Chunks stored for the document.
    pub chunks: i64,
    /// The bytes were already ingested in this collection; nothing new was stored.
    pub duplicate: bool,
    /// Final document status: `ingested`, or `no_text` for a file with no extractable text.
    pub status: DocumentStatus,
    /// Pages left out because their text was glyph garbage (fonts without a Unicode mapping):
    /// they would need OCR. With nothing readable left the status is `no_text`.
    #[serde(default)]
    pub garbled_pages: u32,
}

/// Published once a delete has committed: the document's chunks are soft-deleted and logged for
/// removal from every index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentDeleted {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// Collection of the document.
    pub collection: String,
    /// The document.
    pub document_id: i64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Chunks removed.
    pub chunks: i64,
}

/// Published when an upload fails permanently (or a transient failure gives up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentFailed {
    /// Wire version, always [`VERSION`].
    pub v: u32,
    /// The upload this event answers (empty when the message was too malformed to tell).
    pub upload_id: String,
    /// Collection, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Document row marked `failed`, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<i64>,
    /// Stable short code (`malformed`, `not_found`, `forbidden_path`, `unsupported_type`, ...).
    pub code: String,
    /// Human-readable reason.
    pub reason: String,
    /// Whether the message was requeued for another attempt.
    pub retryable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_are_named() {
        let err = decode::<UploadMessage>(br#"{"v":2,"upload_id":"u"}"#).expect_err("v2");
        assert_eq!(err.code(), "unsupported_version");
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn collection_names_are_checked_where_messages_are_decoded() {
        assert!(CollectionName::new("docs-2024_v1.0").is_ok());
        for bad in ["", "../etc", "a/b", ".hidden", "é"] {
            assert!(CollectionName::new(bad).is_err(), "{bad}");
        }
        let body = br#"{"v":1,"upload_id":"u","collection":"../x","filename":"a.txt","content_b64":""}"#;
        assert_eq!(decode::<UploadMessage>(body).expect_err("bad collection").code(), "invalid_collection");
        let body = br#"{"v":1,"query":"q","collection":"a/b"}"#;
        assert_eq!(decode::<QueryRequest>(body).expect_err("bad collection").code(), "invalid_collection");
        assert_eq!("ingested".parse::<DocumentStatus>(), Ok(DocumentStatus::Ingested));
        assert_eq!(serde_json::to_string(&DocumentStatus::NoText).expect("json"), r#""no_text""#);
    }

    #[test]
    fn malformed_json_is_malformed() {
        assert_eq!(decode::<QueryRequest>(b"{nope").expect_err("bad").code(), "malformed");
        assert_eq!(decode::<QueryRequest>(br#"{"query":"x"}"#).expect_err("no v").code(), "malformed");
    }

    #[test]
    fn uploads_round_trip() {
        let msg = UploadMessage {
            v: VERSION,
            upload_id: "u1".into(),
            collection: CollectionName::new("c").expect("valid name"),
            filename: "a.txt".into(),
            content_type: None,
            uri: Some("file:///tmp/a.txt".into()),
            content_b64: None,
            metadata: BTreeMap::new(),
        };
        assert_eq!(decode::<UploadMessage>(&encode(&msg)).expect("round trip"), msg);
    }
}
