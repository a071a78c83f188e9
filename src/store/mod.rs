//! The relational store: collections, documents, chunks (with their embeddings) and the query log.
//!
//! [`Store`] is what the pipeline and the query worker need, nothing more. Two adapters implement
//! it with the same schema and meaning: [`postgres::PgStore`] over a sized sqlx pool, and
//! [`sqlite::SqliteStore`] over the embedded SQLite file; [`connect`] picks one by
//! `database.url`. Both pass the same conformance suite (`tests/store_conformance.rs`). The
//! store knows nothing of stages or workers.

pub mod log_positions;
pub mod postgres;
pub mod query_log;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::DatabaseSettings;
use crate::embedded::LazyDatabase;
use crate::error::Failure;
pub use crate::messages::DocumentStatus;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, the pool was exhausted, or the server gave up.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The collection already holds vectors of another model or dimension.
    #[error(
        "collection `{collection}` holds {existing_model} vectors of dimension {existing_dims}; \
         refusing {model} vectors of dimension {dims} (changing models needs a reindex)"
    )]
    ModelMismatch {
        /// Collection name.
        collection: String,
        /// Model already stored.
        existing_model: String,
        /// Dimension already stored.
        existing_dims: i32,
        /// Model offered.
        model: String,
        /// Dimension offered.
        dims: i32,
    },
    /// The document was deleted while it was being ingested: its chunks are not stored.
    #[error("document {0} was deleted while it was being ingested")]
    Deleted(i64),
    /// Any other database error (constraint, bad data): retrying will not help.
    #[error("database error: {0}")]
    Query(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(String),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Unavailable(_) => Failure::transient("database", error.to_string()),
            StoreError::ModelMismatch { .. } => Failure::permanent("model_mismatch", error.to_string()),
            StoreError::Deleted(_) => Failure::permanent("deleted", error.to_string()),
            StoreError::Query(_) | StoreError::Migrate(_) => Failure::permanent("database", error.to_string()),
        }
    }
}

/// A collection row.
#[derive(Debug, Clone, PartialEq)]
pub struct Collection {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
}

/// A document about to be ingested.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// Collection it belongs to.
    pub collection_id: i64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// The upload that brought it.
    pub upload_id: String,
    /// Original file name.
    pub filename: String,
    /// Declared content type.
    pub content_type: Option<String>,
    /// Size in bytes.
    pub size_bytes: i64,
    /// Where the bytes are kept (content-addressable path); empty when `content` holds them.
    pub storage_path: String,
    /// The bytes themselves, for a small upload: kept in the document's row and committed with
    /// its claim, so it needs no file of its own (see `[storage] in_database_max_bytes`).
    pub content: Option<std::sync::Arc<[u8]>>,
    /// Upload metadata.
    pub metadata: serde_json::Value,
}

/// What [`Store::claim_document`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// A new document row, or an earlier attempt (failed, pending, deleted) to resume: process it.
    Process {
        /// The document row.
        document_id: i64,
    },
    /// The same bytes are already ingested in this collection by another upload.
    Duplicate {
        /// The existing document.
        document_id: i64,
        /// Its chunk count.
        chunks: i64,
        /// Its status (ingested or no text).
        status: DocumentStatus,
    },
    /// This very upload was already ingested (a redelivery): make sure it is indexed, then ack.
    AlreadyDone {
        /// The document row.
        document_id: i64,
        /// Its chunk count.
        chunks: i64,
        /// Its status (ingested or no text).
        status: DocumentStatus,
    },
}

/// A chunk ready to be written, with its embedding.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Position in the document, from 0.
    pub ordinal: i32,
    /// The chunk's text.
    pub text: String,
    /// Tokens in the text.
    pub token_count: i32,
    /// Start in the extracted text, in characters.
    pub char_start: i32,
    /// End in the extracted text, in characters.
    pub char_end: i32,
    /// First page, for paged sources.
    pub page_start: Option<i32>,
    /// Last page, for paged sources.
    pub page_end: Option<i32>,
    /// Heading path for structured sources.
    pub heading_path: Option<String>,
    /// The embedding.
    pub embedding: Vec<f32>,
}

/// Vectors of one document as stored: what the index needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredVectors {
    /// Chunk ids, in ordinal order.
    pub ids: Vec<i64>,
    /// Their embeddings, concatenated (`ids.len() * dims` values).
    pub vectors: Vec<f32>,
}

/// A batched store call ([`Store::persist_documents`], [`Store::claim_documents`]) from an
/// adapter's all-or-nothing `together`: the whole batch first, and when its transaction fails,
/// each item on its own, so one bad document never fails its neighbours.
pub(crate) async fn each_alone_on_failure<'a, T, R, F, Fut>(items: &'a [T], together: F) -> Vec<Result<R, StoreError>>
where
    F: Fn(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Result<R, StoreError>>, StoreError>>,
{
    match together(items).await {
        Ok(results) => results,
        Err(error) if items.len() == 1 => vec![Err(error)],
        Err(error) => {
            tracing::debug!(%error, items = items.len(), "batched store call failed; trying each item alone");
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let one = together(std::slice::from_ref(item)).await;
                results.push(one.and_then(|mut r| r.pop().unwrap_or(Err(StoreError::Query("no result".into())))));
            }
            results
        }
    }
}

/// One document's chunks, for [`Store::persist_documents`].
#[derive(Debug, Clone, Copy)]
pub struct DocumentChunks<'a> {
    /// The claimed document.
    pub document_id: i64,
    /// Its chunks with their embeddings.
    pub chunks: &'a [NewChunk],
}

/// Result of [`Store::persist_chunks`].
#[derive(Debug, Clone, PartialEq)]
pub struct Persisted {
    /// False when the document was already ingested (a concurrent or repeated attempt).
    pub inserted: bool,
    /// The document's chunk ids and vectors (inserted now, or read back).
    pub stored: StoredVectors,
}

/// What an index change log entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOp {
    /// The chunks were stored: add their vectors.
    Add,
    /// The chunks were deleted: remove their vectors.
    Remove,
}

impl LogOp {
    /// The name stored in `index_log.op`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "add" => Ok(Self::Add),
            "remove" => Ok(Self::Remove),
            other => Err(StoreError::Query(format!("unknown index log op `{other}`"))),
        }
    }
}

/// One entry of a collection's index change log. Within a collection, entries commit in
/// sequence order (gap-safe), so replaying `seq > applied` in order is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the log.
    pub seq: i64,
    /// Add or remove.
    pub op: LogOp,
    /// The chunks concerned.
    pub chunk_ids: Vec<i64>,
}

/// Which documents a delete names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentRef {
    /// A document id.
    Id(i64),
    /// The SHA-256 of its bytes (hex).
    Sha256(String),
    /// The upload that brought it.
    UploadId(String),
}

impl DocumentRef {
    /// A document id if `text` is a number, a SHA-256 if it is 64 hex digits, else an upload id.
    pub fn parse(text: &str) -> Self {
        if let Ok(id) = text.parse() {
            Self::Id(id)
        } else if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Self::Sha256(text.to_ascii_lowercase())
        } else {
            Self::UploadId(text.to_owned())
        }
    }
}

/// A document a delete removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The document.
    pub document_id: i64,
    /// Its collection's name.
    pub collection: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Its chunks, now soft-deleted and logged for removal from the indexes.
    pub chunk_ids: Vec<i64>,
}

/// A chunk fetched for a query reply, with its document's citation data.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkHit {
    /// Chunk id.
    pub chunk_id: i64,
    /// Document id.
    pub document_id: i64,
    /// Document file name.
    pub filename: String,
    /// Chunk text.
    pub text: String,
    /// Start offset in characters.
    pub char_start: i64,
    /// End offset in characters.
    pub char_end: i64,
    /// First page.
    pub page: Option<i32>,
    /// Heading path.
    pub heading_path: Option<String>,
    /// The document's upload metadata (what query filters match).
    pub metadata: serde_json::Value,
}

/// One row of `ragpipe status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    /// Collection name.
    pub collection: String,
    /// Document status.
    pub status: DocumentStatus,
    /// Documents with that status.
    pub documents: i64,
    /// Their chunks.
    pub chunks: i64,
    /// Tokens of their chunks (what embedding them cost, in the embedder's tokens).
    pub tokens: i64,
}

/// What the query log holds for a period, for `ragpipe status`: the cache layers' hit rates,
/// failures, latency, cost and clients' ratings, across every query worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuerySummary {
    /// Queries logged (answered or failed; feedback messages are not queries).
    pub queries: i64,
    /// Of those, the ones answered with an error reply (expired and timed out included).
    pub errors: i64,
    /// Answered queries by the cache layer that answered: `response`, `retrieval`, or `none`
    /// (searched and built afresh), in that order, each present.
    pub by_cache_layer: Vec<(String, i64)>,
    /// Mean time to answer, over answered queries.
    pub mean_latency_ms: Option<f64>,
    /// Estimated LLM cost of the answers (cached ones cost nothing).
    pub llm_cost_usd: f64,
    /// Ratings received: thumbs up.
    pub feedback_up: i64,
    /// Ratings received: thumbs down.
    pub feedback_down: i64,
}

impl QuerySummary {
    /// Builds the summary from grouped rows: (cache layer or `None`, failed, count, summed
    /// latency in ms, summed cost) and the rating counts. Both adapters group alike through this.
    pub(crate) fn from_groups(groups: &[(Option<String>, bool, i64, f64, f64)], up: i64, down: i64) -> Self {
        let mut summary = Self { feedback_up: up, feedback_down: down, ..Self::default() };
        let mut layers: Vec<(String, i64)> =
            ["response", "retrieval", "none"].iter().map(|l| ((*l).to_owned(), 0)).collect();
        let (mut answered, mut latency) = (0_i64, 0.0);
        for (layer, failed, count, latency_sum, cost) in groups {
            summary.queries += count;
            summary.llm_cost_usd += cost;
            if *failed {
                summary.errors += count;
                continue;
            }
            answered += count;
            latency += latency_sum;
            let name = layer.as_deref().unwrap_or("none");
            match layers.iter_mut().find(|(l, _)| l == name) {
                Some((_, n)) => *n += count,
                None => layers.push((name.to_owned(), *count)),
            }
        }
        summary.by_cache_layer = layers;
        summary.mean_latency_ms = (answered > 0).then(|| latency / answered as f64);
        summary
    }
}

/// A document that failed for good.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedDocument {
    /// Its id.
    pub document_id: i64,
    /// Its collection's name.
    pub collection: String,
    /// The file name it was uploaded with.
    pub filename: String,
    /// The declared content type.
    pub content_type: Option<String>,
    /// Where its original bytes are (the blob store); empty when `content` holds them.
    pub storage_path: String,
    /// Its original bytes, when kept in the store (a small upload).
    pub content: Option<Vec<u8>>,
    /// The metadata it was uploaded with.
    pub metadata: serde_json::Value,
    /// Why it failed.
    pub failure_reason: Option<String>,
}

/// A rebuild of a collection's vector index, as recorded in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRecord {
    /// The collection.
    pub collection_id: i64,
    /// The generation the rebuild built.
    pub generation: i64,
    /// Whether it passed verification (and replaced the previous generation).
    pub ok: bool,
    /// Index kind and parameters ([`crate::index::IndexKind::describe`]).
    pub kind: String,
    /// Vectors in the built index.
    pub vectors: i64,
    /// Live vectors the store held for it.
    pub expected: i64,
    /// Measured recall@10 against exact search (`None` for exact kinds or when not measured).
    pub recall: Option<f64>,
    /// The change log position the build started from.
    pub log_seq: i64,
    /// Why verification failed.
    pub reason: Option<String>,
    /// Seconds per phase (fetch, train, add, tune, write).
    pub timings: serde_json::Value,
    /// When it finished (set by the store).
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A query log entry.
#[derive(Debug, Clone)]
pub struct QueryLogEntry {
    /// The id the reply carried (feedback refers to it).
    pub query_id: String,
    /// Collection searched.
    pub collection: String,
    /// Query text.
    pub query: String,
    /// Results asked for.
    pub top_k: i32,
    /// Returned chunk ids.
    pub chunk_ids: Vec<i64>,
    /// Their scores.
    pub scores: Vec<f32>,
    /// Error code, if the query failed.
    pub error_code: Option<String>,
    /// Time to answer.
    pub latency_ms: i32,
    /// Retrieval mode.
    pub mode: Option<String>,
    /// The cache layer that answered, if any.
    pub cache_layer: Option<String>,
    /// LLM prompt tokens of the answer.
    pub input_tokens: Option<i64>,
    /// LLM generated tokens.
    pub output_tokens: Option<i64>,
    /// Estimated LLM cost in US dollars.
    pub cost_usd: Option<f64>,
}

/// Query log rows one insert statement writes at most (13 parameters each: far below both
/// backends' limits on bound parameters).
pub const QUERY_LOG_ROWS_PER_INSERT: usize = 256;

/// The head of both backends' multi-row query log insert: the columns, in the order each
/// backend binds an entry's values.
pub(crate) const QUERY_LOG_INSERT: &str = "INSERT INTO query_log (collection, query, top_k, result_chunk_ids, \
     scores, error_code, latency_ms, query_id, mode, cache_layer, input_tokens, output_tokens, cost_usd) ";

/// A client's rating of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEntry {
    /// The reply's query id.
    pub query_id: String,
    /// `up` or `down`.
    pub rating: String,
    /// Optional words.
    pub comment: Option<String>,
}

/// The relational store the pipeline and the query worker use.
#[async_trait]
pub trait Store: Send + Sync {
    /// Returns the collection with this name, creating it if needed.
    async fn ensure_collection(&self, name: &str) -> Result<Collection, StoreError>;
    /// Looks a collection up by name.
    async fn collection(&self, name: &str) -> Result<Option<Collection>, StoreError>;
    /// Inserts the document or finds the existing one with the same `(collection, sha256)`.
    async fn claim_document(&self, doc: &NewDocument) -> Result<Claim, StoreError> {
        let mut claims = self.claim_documents(std::slice::from_ref(doc)).await;
        claims.pop().unwrap_or_else(|| Err(StoreError::Query("claim returned no result".into())))
    }
    /// [`Store::claim_document`] for several uploads with one commit: one result per upload, in
    /// order, exactly as if each had been claimed alone in that order (the second of two uploads
    /// of the same bytes finds the first's row). When the shared transaction fails, each is
    /// claimed on its own.
    async fn claim_documents(&self, docs: &[NewDocument]) -> Vec<Result<Claim, StoreError>>;
    /// Marks a document `failed` with a reason.
    async fn mark_failed(&self, document_id: i64, reason: &str) -> Result<(), StoreError>;
    /// Marks a document `no_text` (parsed fine, nothing to index).
    async fn mark_no_text(&self, document_id: i64, reason: &str) -> Result<(), StoreError>;
    /// Writes all chunks of a document, marks it `ingested` and logs an `add` entry, in one
    /// transaction. Idempotent: if the document is already ingested, nothing is written and its
    /// stored vectors are returned. A document deleted meanwhile is [`StoreError::Deleted`].
    async fn persist_chunks(
        &self,
        document_id: i64,
        model: &str,
        dimensions: usize,
        chunks: &[NewChunk],
    ) -> Result<Persisted, StoreError> {
        let one = [DocumentChunks { document_id, chunks }];
        let mut results = self.persist_documents(model, dimensions, &one).await;
        results.pop().unwrap_or_else(|| Err(StoreError::Query("persist returned no result".into())))
    }
    /// [`Store::persist_chunks`] for several documents with one commit (many small documents
    /// cost one transaction, not one each): one result per document, in order. A document
    /// refused for itself (deleted, another model) does not hold the others back, and when the
    /// shared transaction fails, each document is tried on its own, so one bad document never
    /// fails its neighbours.
    async fn persist_documents(
        &self,
        model: &str,
        dimensions: usize,
        documents: &[DocumentChunks<'_>],
    ) -> Vec<Result<Persisted, StoreError>>;
    /// Stored vectors of one document (for re-indexing after a redelivery).
    async fn document_vectors(&self, document_id: i64, dimensions: usize) -> Result<StoredVectors, StoreError>;
    /// Soft-deletes the documents `target` names (in `collection` if given) that are not deleted
    /// yet, and their chunks, logging a `remove` entry per document, in one transaction.
    async fn delete_documents(
        &self,
        target: &DocumentRef,
        collection: Option<&str>,
    ) -> Result<Vec<Deleted>, StoreError>;
    /// The collection's index log entries with `seq > after`, in order, at most `limit`.
    async fn log_after(&self, collection_id: i64, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError>;
    /// The collection's last index log sequence (0 when it has none).
    async fn last_log_seq(&self, collection_id: i64) -> Result<i64, StoreError>;
    /// This store's identity (created with its schema): snapshots made from another store are
    /// never loaded.
    async fn identity(&self) -> Result<String, StoreError>;
    /// Stored vectors of the given chunks, in ascending id order (missing ids are skipped).
    async fn vectors_by_ids(&self, ids: &[i64], dimensions: usize) -> Result<StoredVectors, StoreError>;
    /// Every collection, by name.
    async fn collections(&self) -> Result<Vec<Collection>, StoreError>;
    /// Up to `limit` live (not deleted) stored vectors of the collection with chunk ids above
    /// `after_id`, in ascending id order: pages of a rebuild.
    async fn live_vectors(
        &self,
        collection_id: i64,
        after_id: i64,
        limit: i64,
        dimensions: usize,
    ) -> Result<StoredVectors, StoreError>;
    /// Live (not deleted) chunks of the collection — what a complete index holds — and the
    /// collection's last change log sequence, read together (one consistent view).
    async fn live_state(&self, collection_id: i64) -> Result<(i64, i64), StoreError>;
    /// Records a rebuild's outcome.
    async fn record_generation(&self, record: &GenerationRecord) -> Result<(), StoreError>;
    /// The collection's most recent rebuild, passed or failed.
    async fn last_generation(&self, collection_id: i64) -> Result<Option<GenerationRecord>, StoreError>;
    /// Claims the run of `job` scheduled for `scheduled_for` for `holder`: true for exactly one
    /// claimant per trigger, however many schedulers ask; a claim left unfinished for longer
    /// than `lease` (its holder died) may be taken over.
    async fn claim_run(
        &self,
        job: &str,
        scheduled_for: chrono::DateTime<chrono::Utc>,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Marks a claimed run finished (it is never taken over).
    async fn finish_run(&self, job: &str, scheduled_for: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError>;
    /// Up to `limit` live chunks of the collection with ids above `after_id` that have no staged
    /// re-embedding for `model` yet, as (id, text), in id order.
    async fn chunks_to_reembed(
        &self,
        collection_id: i64,
        model: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// Stages new vectors of `model` for chunks (replacing earlier staged ones).
    async fn stage_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<(), StoreError>;
    /// If every live chunk of the collection has a staged vector of `model`, moves them into
    /// the chunks and makes `model`/`dimensions` the collection's, in one transaction (concurrent
    /// persists wait for it, then must use the new model); returns 0. Otherwise changes nothing
    /// and returns how many live chunks still lack one.
    async fn switch_model(&self, collection_id: i64, model: &str, dimensions: usize) -> Result<i64, StoreError>;
    /// The collection's stored model and dimension (`None` before its first vectors).
    async fn collection_model(&self, collection_id: i64) -> Result<Option<(String, i64)>, StoreError>;
    /// Fetches chunks and their documents in one query, skipping deleted ones; order follows `ids`.
    async fn fetch_chunks(&self, ids: &[i64]) -> Result<Vec<ChunkHit>, StoreError>;
    /// Appends entries to the query log, all or none, in a fixed number of statements (one per
    /// [`QUERY_LOG_ROWS_PER_INSERT`] entries). The log is analytics: a backend may commit it
    /// without waiting for the disk (PostgreSQL does).
    async fn log_queries(&self, entries: &[QueryLogEntry]) -> Result<(), StoreError>;
    /// Stores a rating beside the query log (the query's row may not be written yet).
    async fn record_feedback(&self, feedback: &FeedbackEntry) -> Result<(), StoreError>;
    /// Document and chunk counts per collection and status.
    async fn status(&self) -> Result<Vec<StatusRow>, StoreError>;
    /// The query log and ratings since `since`, summarised.
    async fn query_summary(&self, since: chrono::DateTime<chrono::Utc>) -> Result<QuerySummary, StoreError>;
    /// Documents that failed for good (all collections, or one), oldest first, with where their
    /// original bytes are: what `ragpipe ingest --retry-failed` sends again.
    async fn failed_documents(&self, collection: Option<&str>) -> Result<Vec<FailedDocument>, StoreError>;
    /// Cheap liveness check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Occupancy of each connection pool, for metrics.
    fn pools(&self) -> Vec<PoolStats>;
}

/// Awaits `acquire` (a pool's `acquire()` or `begin()`), recording the wait in
/// `ragpipe_db_pool_wait_seconds{pool}`: a pool too small for the load shows there first.
pub(crate) async fn timed_acquire<T>(
    pool: &'static str,
    acquire: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let started = std::time::Instant::now();
    let result = acquire.await;
    crate::telemetry::metrics::DB_POOL_WAIT.with_label_values(&[pool]).observe(started.elapsed().as_secs_f64());
    result
}

/// One connection pool's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Which pool (`main`; embedded: `reader`, `writer`).
    pub name: &'static str,
    /// Connections open.
    pub open: u32,
    /// Open connections not in use.
    pub idle: usize,
    /// Most connections the pool opens.
    pub max: u32,
}

impl PoolStats {
    /// The occupancy of an sqlx pool.
    pub fn of<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> Self {
        Self { name, open: pool.size(), idle: pool.num_idle(), max: pool.options().get_max_connections() }
    }
}

/// The collection's model as stored (`None` before its first vectors).
#[derive(Clone)]
pub(crate) struct StoredModel {
    /// Collection name, for the error.
    pub collection: String,
    /// Model id.
    pub model: Option<String>,
    /// Dimension.
    pub dimensions: Option<i32>,
}

/// Whether vectors of `model`/`dimensions` may go into the collection: `Ok(true)` when it has no
/// model yet (the caller records this one), `Ok(false)` when it is the same, an error otherwise.
/// Both adapters decide alike through this.
pub(crate) fn admit_model(stored: StoredModel, model: &str, dimensions: usize) -> Result<bool, StoreError> {
    let dims = i32::try_from(dimensions).unwrap_or(i32::MAX);
    match (stored.model, stored.dimensions) {
        (Some(m), Some(d)) if m == model && d == dims => Ok(false),
        (Some(existing_model), Some(existing_dims)) => Err(StoreError::ModelMismatch {
            collection: stored.collection,
            existing_model,
            existing_dims,
            model: model.into(),
            dims,
        }),
        _ => Ok(true),
    }
}

/// A document of a persist batch as the store found its row (locked, in PostgreSQL).
pub(crate) struct FoundDocument {
    pub status: DocumentStatus,
    pub collection_id: i64,
    pub model: StoredModel,
}

/// What a batch persist does, decided alike by both adapters from the documents' rows.
pub(crate) struct PersistPlan {
    /// Each document's result where already known (refused, or read back); `None` until then.
    pub results: Vec<Option<Result<Persisted, StoreError>>>,
    /// Documents that get their chunks now: (index in the batch, collection id).
    pub writes: Vec<(usize, i64)>,
    /// Collections whose model this batch fixes (their first vectors).
    pub admitted: Vec<i64>,
    /// Documents another attempt already stored: the adapter reads their vectors back.
    pub reread: Vec<usize>,
}

/// The rows a batch persist selected (`id, status, collection_id, name, embedding_model,
/// embedding_dimensions`, the same columns in both adapters), by document id.
pub(crate) fn found_documents<R>(
    rows: &[R],
    map_err: fn(sqlx::Error) -> StoreError,
) -> Result<std::collections::HashMap<i64, FoundDocument>, StoreError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status").map_err(map_err)?;
        let model = StoredModel {
            collection: row.try_get("name").map_err(map_err)?,
            model: row.try_get("embedding_model").map_err(map_err)?,
            dimensions: row.try_get("embedding_dimensions").map_err(map_err)?,
        };
        let document = FoundDocument {
            status: status.parse().map_err(StoreError::Query)?,
            collection_id: row.try_get("collection_id").map_err(map_err)?,
            model,
        };
        found.insert(row.try_get("id").map_err(map_err)?, document);
    }
    Ok(found)
}

/// Plans a batch persist from the rows `found` by document id: a missing or deleted document,
/// or one of a collection with another model, is refused alone; an ingested one is read back.
pub(crate) fn plan_persist(
    documents: &[DocumentChunks<'_>],
    found: &std::collections::HashMap<i64, FoundDocument>,
    model: &str,
    dimensions: usize,
) -> PersistPlan {
    let mut plan = PersistPlan {
        results: documents.iter().map(|_| None).collect(),
        writes: Vec::with_capacity(documents.len()),
        admitted: Vec::new(),
        reread: Vec::new(),
    };
    for (i, document) in documents.iter().enumerate() {
        let Some(row) = found.get(&document.document_id) else {
            let missing = StoreError::Query(format!("document {} does not exist", document.document_id));
            plan.results[i] = Some(Err(missing));
            continue;
        };
        match row.status {
            DocumentStatus::Ingested => {
                plan.reread.push(i);
                continue;
            }
            DocumentStatus::Deleted => {
                plan.results[i] = Some(Err(StoreError::Deleted(document.document_id)));
                continue;
            }
            _ => {}
        }
        match admit_model(row.model.clone(), model, dimensions) {
            Ok(first_use) => {
                if first_use && !plan.admitted.contains(&row.collection_id) {
                    plan.admitted.push(row.collection_id);
                }
                plan.writes.push((i, row.collection_id));
            }
            Err(error) => plan.results[i] = Some(Err(error)),
        }
    }
    plan
}

/// The results of a committed batch persist: `stored` holds the chunk ids of each of
/// `plan.writes`, whose vectors are the documents' own.
pub(crate) fn finish_persist(
    plan: PersistPlan,
    documents: &[DocumentChunks<'_>],
    stored: Vec<Vec<i64>>,
    dimensions: usize,
) -> Vec<Result<Persisted, StoreError>> {
    let mut results = plan.results;
    for (&(i, _), chunk_ids) in plan.writes.iter().zip(stored) {
        let chunks = documents[i].chunks;
        let mut vectors = Vec::with_capacity(chunks.len() * dimensions);
        for chunk in chunks {
            vectors.extend_from_slice(&chunk.embedding);
        }
        results[i] = Some(Ok(Persisted { inserted: true, stored: StoredVectors { ids: chunk_ids, vectors } }));
    }
    results.into_iter().map(|r| r.unwrap_or(Err(StoreError::Query("no result".into())))).collect()
}

/// The claim for an upload whose bytes already have a document row in the collection, or `None`
/// when this upload takes a failed or deleted document over (the caller resets it to pending).
/// Both adapters decide alike through this.
pub(crate) fn claim_existing(
    document_id: i64,
    status: DocumentStatus,
    same_upload: bool,
    chunks: i64,
) -> Option<Claim> {
    match status {
        DocumentStatus::Ingested | DocumentStatus::NoText if same_upload => {
            Some(Claim::AlreadyDone { document_id, chunks, status })
        }
        DocumentStatus::Ingested | DocumentStatus::NoText => Some(Claim::Duplicate { document_id, chunks, status }),
        // Another attempt may be in flight; persist_chunks settles who wins.
        DocumentStatus::Pending => Some(Claim::Process { document_id }),
        DocumentStatus::Failed | DocumentStatus::Deleted => None,
    }
}

/// Connects the store `[database]` names: PostgreSQL for a `postgres://` URL, SQLite for a
/// `sqlite://` URL or none (then `embedded`, the data directory's database file). Creates the
/// database and applies migrations when `migrate_on_start` (SQLite: always; it is one file).
///
/// # Errors
/// The server is unreachable, the file cannot be opened, or a migration fails.
pub async fn connect(settings: &DatabaseSettings, embedded: &LazyDatabase) -> Result<Connected, StoreError> {
    let url = settings.url.as_ref().map(secrecy::ExposeSecret::expose_secret);
    match url {
        Some(url) if url.starts_with("postgres") => {
            if settings.migrate_on_start {
                postgres::PgStore::create_database_if_missing(settings).await?;
            }
            let store = postgres::PgStore::connect(settings).await?;
            if settings.migrate_on_start {
                store.migrate().await?;
            }
            let kind =
                format!("postgres ({})", settings.url.as_ref().map(crate::config::redact_url).unwrap_or_default());
            Ok(Connected { kind, store: Arc::new(store) })
        }
        Some(url) => {
            let path = crate::embedded::path_from_url(url).map_err(StoreError::Unavailable)?;
            let db = crate::embedded::Database::open(&path).await.map_err(|e| StoreError::Migrate(e.to_string()))?;
            Ok(Connected {
                kind: format!("sqlite ({})", path.display()),
                store: Arc::new(sqlite::SqliteStore::new(db)),
            })
        }
        None => {
            let db = embedded.get().await.map_err(|e| StoreError::Migrate(e.to_string()))?;
            let kind = format!("sqlite ({})", db.path().display());
            Ok(Connected { kind, store: Arc::new(sqlite::SqliteStore::new(db.clone())) })
        }
    }
}

/// A connected store and which backend it is.
pub struct Connected {
    /// `postgres (url)` or `sqlite (path)`, for logs and `ragpipe status`.
    pub kind: String,
    /// The store.
    pub store: Arc<dyn Store>,
}

/// Parses an `index_log.op` value (both adapters).
pub(crate) fn log_op(text: &str) -> Result<LogOp, StoreError> {
    LogOp::parse(text)
}

/// Encodes an embedding as little-endian f32 bytes (the `bytea` format).
pub fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Appends the f32 values of a little-endian `bytea` embedding to `out`.
///
/// # Errors
/// The byte length is not `dimensions * 4`.
pub fn decode_vector_into(bytes: &[u8], dimensions: usize, out: &mut Vec<f32>) -> Result<(), StoreError> {
    if bytes.len() != dimensions * 4 {
        return Err(StoreError::Query(format!(
            "stored embedding has {} bytes, expected {} for dimension {dimensions}",
            bytes.len(),
            dimensions * 4
        )));
    }
    out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_references_are_told_apart_by_their_shape() {
        assert_eq!(DocumentRef::parse("42"), DocumentRef::Id(42));
        let sha = "AB".repeat(32);
        assert_eq!(DocumentRef::parse(&sha), DocumentRef::Sha256("ab".repeat(32)));
        assert_eq!(DocumentRef::parse("upload-7"), DocumentRef::UploadId("upload-7".into()));
    }

    #[test]
    fn vectors_round_trip_through_bytes() {
        let v = vec![0.5f32, -1.25, 3.0];
        let mut out = Vec::new();
        decode_vector_into(&encode_vector(&v), 3, &mut out).expect("decode");
        assert_eq!(out, v);
        assert!(decode_vector_into(&encode_vector(&v), 4, &mut out).is_err());
    }
}
