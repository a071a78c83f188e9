//! The process wiring: connects every backend from [`Settings`] into [`Services`] and runs the
//! requested roles until shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blobs::BlobStore;
use crate::cache::{self, Cache};
use crate::chunk::Chunker;
use crate::config::Settings;
use crate::embed::Embedder;
use crate::embed::service::EmbeddingService;
use crate::extract::Sandbox;
use crate::index::Indexes;
use crate::ingest::fetch::FetchPolicy;
use crate::queue::Broker;
use crate::queue::amqp::AmqpBroker;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::{ingest, query};

/// A failure to start or run a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A backend could not be set up.
    #[error("{what}: {reason}")]
    Setup {
        /// Which backend.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn setup(what: &'static str) -> impl Fn(String) -> WorkerError {
    move |reason| WorkerError::Setup { what, reason }
}

/// What a worker role does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Consume uploads and run the ingest pipeline.
    Ingest,
    /// Answer query requests.
    Query,
    /// Write index snapshots on a schedule.
    Scheduler,
}

/// Every backend a worker needs, connected once and shared by its roles.
pub struct Services {
    /// The settings the process started with.
    pub settings: Settings,
    /// Relational store.
    pub store: Arc<dyn Store>,
    /// Message broker.
    pub broker: Arc<dyn Broker>,
    /// Embedding cache.
    pub cache: Arc<dyn Cache>,
    /// Original bytes.
    pub blobs: BlobStore,
    /// Embedding provider (model id, dimensions).
    pub embedder: Arc<dyn Embedder>,
    /// The provider behind cache, rate governor, concurrency limit and retries: use this to embed.
    pub embedding: Arc<EmbeddingService>,
    /// Vector indexes held by this process.
    pub indexes: Arc<Indexes>,
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

impl Services {
    /// Whether a test asked to crash at `point`.
    pub(crate) fn crash_at(&self, point: FaultPoint) -> bool {
        self.faults.as_ref().is_some_and(|hook| hook(point))
    }
}

impl Services {
    /// Connects every backend. `program` is the ragpipe binary the extraction sandbox runs.
    ///
    /// # Errors
    /// A backend is misconfigured or unreachable (the message names which).
    pub async fn connect(settings: Settings, program: PathBuf) -> Result<Self, WorkerError> {
        if settings.database.migrate_on_start {
            PgStore::create_database_if_missing(&settings.database)
                .await
                .map_err(|e| setup("database")(e.to_string()))?;
        }
        let pg = PgStore::connect(&settings.database).await.map_err(|e| setup("database")(e.to_string()))?;
        if settings.database.migrate_on_start {
            pg.migrate().await.map_err(|e| setup("database migrations")(e.to_string()))?;
        }
        let store: Arc<dyn Store> = Arc::new(pg);
        let broker: Arc<dyn Broker> =
            Arc::new(AmqpBroker::connect(&settings.broker).await.map_err(|e| setup("broker")(e.to_string()))?);
        let cache = cache::from_settings(&settings.cache);
        let embedding = Arc::new(
            EmbeddingService::from_settings(&settings.embedder, &settings.cache, cache.clone())
                .map_err(|e| setup("embedder")(e.to_string()))?,
        );
        let embedder = embedding.embedder().clone();
        let chunker = Chunker::new(&settings.chunk).map_err(|e| setup("chunker")(e.to_string()))?;
        let indexes = Arc::new(Indexes::new(
            settings.index.dir.clone(),
            store.clone(),
            embedder.dimensions(),
            embedder.model_id(),
        ));
        let fetch_policy = FetchPolicy::new(
            &settings.storage.allowed_roots,
            settings.extract.max_file_bytes,
            settings.ingest.max_inline_bytes,
        );
        Ok(Self {
            cache,
            blobs: BlobStore::new(settings.storage.root.clone()),
            sandbox: Sandbox::new(program, settings.extract.clone()),
            settings,
            store,
            broker,
            embedder,
            embedding,
            indexes,
            chunker,
            fetch_policy,
            faults: None,
        })
    }
}

/// Runs `roles` until `shutdown` is cancelled, then drains in-flight work.
///
/// # Errors
/// A role could not start.
pub async fn run(services: Arc<Services>, roles: &[Role], shutdown: CancellationToken) -> Result<(), WorkerError> {
    let tracker = TaskTracker::new();
    let interval = Duration::from_secs(services.settings.index.snapshot_interval_secs);
    if roles.contains(&Role::Query) {
        // A query role holds indexes and must see other workers' documents.
        tracker.spawn(services.indexes.clone().run_follower(services.broker.clone(), interval, shutdown.clone()));
        tracker.spawn(query::run(services.clone(), shutdown.clone()));
    }
    if roles.contains(&Role::Ingest) {
        tracker.spawn(ingest::run(services.clone(), shutdown.clone()));
    }
    if roles.iter().any(|r| matches!(r, Role::Ingest | Role::Query | Role::Scheduler)) {
        tracker.spawn(services.indexes.clone().run_snapshots(interval, shutdown.clone()));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
