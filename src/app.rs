//! The connected parts of a process ([`Services`]) and the narrow context each role gets from
//! them ([`IngestContext`], [`QueryContext`], [`IndexContext`], [`SchedulerContext`]). Roles
//! (`ingest`, `query`, `scheduler`) import this module; it imports no role. [`crate::worker`] builds the services from the settings.

use std::sync::Arc;

use crate::blobs::BlobStore;
use crate::cache::Cache;
use crate::chunk::Chunker;
use crate::config::{CacheSettings, IndexSettings, IngestSettings, LlmSettings, QuerySettings, Settings};
use crate::embed::service::EmbeddingService;
use crate::extract::Sandbox;
use crate::fetch::FetchPolicy;
use crate::index::Indexes;
use crate::index::lexical::LexicalIndexes;
use crate::llm::Llm;
use crate::queue::{EventBus, Queue, RequestReply, UploadQueue};
use crate::store::{Collection, Store, StoreError};

/// Which backend each port runs on, for the start-up log and `ragpipe status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    /// `postgres (…)` or `sqlite (path)`.
    pub store: String,
    /// `rabbitmq (…)` or `embedded (path)`.
    pub queue: String,
    /// `redis (…)` or `memory`.
    pub cache: String,
}

impl std::fmt::Display for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store {}, queue {}, cache {}", self.store, self.queue, self.cache)
    }
}

/// Every part a worker needs, connected once and shared by its roles.
pub struct Services {
    /// The settings the process started with.
    pub settings: Settings,
    /// Which backends these are.
    pub backends: Backends,
    /// Relational store.
    pub store: Arc<dyn Store>,
    /// Uploads, events and request/reply.
    pub queue: Queue,
    /// Cache shared by the embedding service (and, later, the query caches).
    pub cache: Arc<dyn Cache>,
    /// Original bytes.
    pub blobs: BlobStore,
    /// The embedding provider behind cache, rate governor, concurrency limit and retries.
    pub embedding: Arc<EmbeddingService>,
    /// Vector indexes held by this process.
    pub indexes: Arc<Indexes>,
    /// BM25 indexes of the lexical leg, built and followed from the store's change log.
    pub lexical: Arc<LexicalIndexes>,
    /// The answering model (`None`: extractive answers).
    pub llm: Option<Arc<dyn Llm>>,
    /// Extraction sandbox.
    pub sandbox: Sandbox,
    /// Chunker (tokenizer built once).
    pub chunker: Chunker,
    /// Where uploads may be read from.
    pub fetch_policy: FetchPolicy,
    /// Failure injection for tests: called at each [`FaultPoint`]; `true` makes the job vanish
    /// there as if the process had crashed (no ack, no event). `None` in production.
    pub faults: Option<FaultHook>,
}

/// A commit point of the pipeline where tests can simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The document's chunks are committed; the vectors are not yet in the index.
    AfterPersist,
    /// The vectors are in the index; the event is not yet published and the message not acked.
    AfterIndex,
}

/// See [`Services::faults`].
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> bool + Send + Sync>;

/// What the ingest role uses, and nothing else.
pub struct IngestContext {
    /// Channel sizes and per-stage concurrency.
    pub settings: IngestSettings,
    /// Deliveries of one upload before it is given up (transient failures retry below it).
    pub delivery_limit: u32,
    /// Milliseconds the embed stage waits to fill a batch.
    pub embed_max_wait_ms: u64,
    /// Whether the embed stage sends a partial batch at once when no request is in flight.
    pub embed_send_when_idle: bool,
    /// Documents and chunks.
    pub store: Arc<dyn Store>,
    /// Where uploads come from.
    pub uploads: Arc<dyn UploadQueue>,
    /// Where outcomes go.
    pub events: Arc<dyn EventBus>,
    /// Original bytes.
    pub blobs: BlobStore,
    /// Uploads up to this size keep their bytes in the store instead of `blobs`.
    pub in_database_max_bytes: usize,
    /// Embeddings.
    pub embedding: Arc<EmbeddingService>,
    /// Vector indexes.
    pub indexes: Arc<Indexes>,
    /// Extraction sandbox.
    pub sandbox: Sandbox,
    /// Chunker.
    pub chunker: Chunker,
    /// Where uploads may be read from.
    pub fetch_policy: FetchPolicy,
    /// Failure injection (tests).
    pub faults: Option<FaultHook>,
    /// Collections met so far, by name: a collection row is never deleted and its id never
    /// changes, so each is looked up (or created) once per process, not once per document.
    pub(crate) collections: KnownCollections,
}

impl IngestContext {
    /// Whether a test asked to crash at `point`.
    pub(crate) fn crash_at(&self, point: FaultPoint) -> bool {
        self.faults.as_ref().is_some_and(|hook| hook(point))
    }

    /// The collection named `name`, created if needed.
    pub(crate) async fn collection(&self, name: &str) -> Result<Collection, StoreError> {
        if let Some(collection) = self.collections.get(name) {
            return Ok(collection);
        }
        let collection = self.store.ensure_collection(name).await?;
        self.collections.insert(&collection);
        Ok(collection)
    }
}

/// Collections met so far, by name. A collection row is never deleted and its id never changes,
/// so each is read from the store once per process, not once per document or query.
#[derive(Default)]
pub(crate) struct KnownCollections(std::sync::Mutex<std::collections::HashMap<String, Collection>>);

impl KnownCollections {
    fn get(&self, name: &str) -> Option<Collection> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    fn insert(&self, collection: &Collection) {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.insert(collection.name.clone(), collection.clone());
    }
}

/// Query log entries a query role holds unwritten at most (a few seconds of its fastest rate).
const QUERY_LOG_QUEUE: usize = 10_000;

/// What the query role uses, and nothing else.
pub struct QueryContext {
    /// Limits and defaults of requests.
    pub settings: QuerySettings,
    /// Chunks and documents, the query log.
    pub store: Arc<dyn Store>,
    /// Where requests come from.
    pub requests: Arc<dyn RequestReply>,
    /// Query embeddings.
    pub embedding: Arc<EmbeddingService>,
    /// Vector indexes.
    pub indexes: Arc<Indexes>,
    /// BM25 indexes (lexical and hybrid retrieval).
    pub lexical: Arc<LexicalIndexes>,
    /// The answering model (`None`: extractive answers) and its prices.
    pub llm: Option<Arc<dyn Llm>>,
    /// `[llm]`, for the cost estimate and the tokenizer.
    pub llm_settings: LlmSettings,
    /// Where retrieval results and responses are cached (with the embeddings).
    pub cache: Arc<dyn Cache>,
    /// The caches' TTLs.
    pub cache_settings: CacheSettings,
    /// The query log's queue (written behind the replies; shutdown waits for it).
    pub log: crate::store::query_log::QueryLog,
    /// Collections met so far, by name (see [`IngestContext::collections`]).
    pub(crate) collections: KnownCollections,
    /// Change-log positions, one read shared by the queries waiting for it (cache keys).
    pub positions: Arc<crate::store::log_positions::LogPositions>,
}

impl QueryContext {
    /// The collection named `name`, if it exists (one that does not is looked up again next
    /// time: it may have been created since).
    pub(crate) async fn collection(&self, name: &str) -> Result<Option<Collection>, StoreError> {
        if let Some(collection) = self.collections.get(name) {
            return Ok(Some(collection));
        }
        let found = self.store.collection(name).await?;
        if let Some(collection) = &found {
            self.collections.insert(collection);
        }
        Ok(found)
    }
}

/// What keeps a process's indexes current: events from other processes, catch-up, snapshots.
pub struct IndexContext {
    /// Snapshot interval and directory.
    pub settings: IndexSettings,
    /// Events to follow.
    pub events: Arc<dyn EventBus>,
    /// The indexes.
    pub indexes: Arc<Indexes>,
}

/// What the scheduler role uses: the store (collections, run claims), the indexes to rebuild
/// and the bus to announce new generations on.
pub struct SchedulerContext {
    /// The rebuild schedule and its lease.
    pub settings: IndexSettings,
    /// Collections and run claims.
    pub store: Arc<dyn Store>,
    /// Where `index.rebuilt` goes.
    pub events: Arc<dyn EventBus>,
    /// The indexes (rebuilt here; open ones are swapped in place).
    pub indexes: Arc<Indexes>,
    /// This scheduler's name in run claims (host and process id).
    pub holder: String,
}

impl Services {
    /// The scheduler role's context.
    pub fn scheduler(&self) -> SchedulerContext {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        SchedulerContext {
            settings: self.settings.index.clone(),
            store: self.store.clone(),
            events: self.queue.events.clone(),
            indexes: self.indexes.clone(),
            holder: format!("{}:{}", host.trim(), std::process::id()),
        }
    }

    /// The ingest role's context.
    pub fn ingest(&self) -> IngestContext {
        IngestContext {
            settings: self.settings.ingest.clone(),
            delivery_limit: self.settings.broker.delivery_limit,
            embed_max_wait_ms: self.settings.embedder.max_wait_ms,
            embed_send_when_idle: self.settings.embedder.send_when_idle,
            store: self.store.clone(),
            uploads: self.queue.uploads.clone(),
            events: self.queue.events.clone(),
            blobs: self.blobs.clone(),
            in_database_max_bytes: self.settings.storage.in_database_max_bytes,
            embedding: self.embedding.clone(),
            indexes: self.indexes.clone(),
            sandbox: self.sandbox.clone(),
            chunker: self.chunker.clone(),
            fetch_policy: self.fetch_policy.clone(),
            faults: self.faults.clone(),
            collections: KnownCollections::default(),
        }
    }

    /// The query role's context.
    pub fn query(&self) -> QueryContext {
        QueryContext {
            settings: self.settings.query.clone(),
            store: self.store.clone(),
            requests: self.queue.requests.clone(),
            embedding: self.embedding.clone(),
            indexes: self.indexes.clone(),
            lexical: self.lexical.clone(),
            llm: self.llm.clone(),
            llm_settings: self.settings.llm.clone(),
            cache: self.cache.clone(),
            cache_settings: self.settings.cache.clone(),
            log: crate::store::query_log::QueryLog::new(QUERY_LOG_QUEUE),
            collections: KnownCollections::default(),
            positions: crate::store::log_positions::LogPositions::new(self.store.clone()),
        }
    }

    /// The index upkeep's context.
    pub fn index(&self) -> IndexContext {
        IndexContext {
            settings: self.settings.index.clone(),
            events: self.queue.events.clone(),
            indexes: self.indexes.clone(),
        }
    }
}
