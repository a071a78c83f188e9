//! The process wiring: connects every backend `[database]`, `[broker]` and `[cache]` name (or the
//! embedded ones where they name none) into [`Services`], and runs the requested roles until
//! shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{Backends, Services};
use crate::blobs::BlobStore;
use crate::chunk::Chunker;
use crate::config::Settings;
use crate::embed::service::EmbeddingService;
use crate::embedded::LazyDatabase;
use crate::extract::Sandbox;
use crate::fetch::FetchPolicy;
use crate::index::Indexes;
use crate::index::lexical::LexicalIndexes;
use crate::{cache, ingest, query, queue, scheduler, store};

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
    /// Answer query requests (and keep this process's indexes current).
    Query,
    /// Rebuild every collection's index on `[index] rebuild_cron` (one leader per trigger).
    Scheduler,
}

/// Connects the store, queue and cache the settings name (embedded ones in `storage.data_dir`
/// where they name none), then the embedder, indexes, sandbox and chunker. `program` is the
/// ragpipe binary the extraction sandbox runs.
///
/// # Errors
/// A backend is misconfigured or unreachable (the message names which).
pub async fn connect(settings: Settings, program: PathBuf) -> Result<Services, WorkerError> {
    let embedded = LazyDatabase::new(settings.storage.database_file());
    connect_with(settings, program, &embedded).await
}

/// [`connect`], sharing `embedded` (the data directory's database) with a caller that opened it
/// already, so one process keeps one set of pools on the file.
///
/// # Errors
/// See [`connect`].
pub async fn connect_with(
    settings: Settings,
    program: PathBuf,
    embedded: &LazyDatabase,
) -> Result<Services, WorkerError> {
    let connected = store::connect(&settings.database, embedded).await.map_err(|e| setup("database")(e.to_string()))?;
    let queue = queue::connect(&settings.broker, embedded).await.map_err(|e| setup("queue")(e.to_string()))?;
    let (cache_kind, cache) = cache::connect(&settings.cache);
    let backends = Backends { store: connected.kind, queue: queue.kind.to_string(), cache: cache_kind };
    let embedding = Arc::new(
        EmbeddingService::from_settings(&settings.embedder, &settings.cache, cache.clone())
            .map_err(|e| setup("embedder")(e.to_string()))?,
    );
    let embedder = embedding.embedder().clone();
    let llm = crate::llm::from_settings(&settings.llm, &settings.cache).map_err(|e| setup("llm")(e.to_string()))?;
    let chunker = Chunker::new(&settings.chunk).map_err(|e| setup("chunker")(e.to_string()))?;
    let indexes = Arc::new(Indexes::new(
        settings.index_dir(),
        connected.store.clone(),
        embedder.dimensions(),
        embedder.model_id(),
        settings.index.clone(),
    ));
    let fetch_policy = FetchPolicy::new(
        &settings.storage.allowed_roots,
        settings.extract.max_file_bytes,
        settings.ingest.max_inline_bytes,
    );
    Ok(Services {
        backends,
        lexical: Arc::new(LexicalIndexes::new(connected.store.clone())),
        store: connected.store,
        queue,
        cache,
        blobs: BlobStore::new(settings.storage.blob_root()),
        sandbox: Sandbox::new(program, settings.extract.clone()),
        embedding,
        indexes,
        chunker,
        fetch_policy,
        llm,
        faults: None,
        settings,
    })
}

/// Runs `roles` until `shutdown` is cancelled, then drains in-flight work and writes the
/// indexes' snapshots.
///
/// # Errors
/// A role could not start.
pub async fn run(services: Arc<Services>, roles: &[Role], shutdown: CancellationToken) -> Result<(), WorkerError> {
    crate::telemetry::metrics::register_defaults();
    let tracker = TaskTracker::new();
    let index = Arc::new(services.index());
    if roles.contains(&Role::Query) {
        // A query role holds indexes and must see what other processes ingest; it opens them
        // all before it reports ready, so no query waits for a build.
        tracker.spawn(open_indexes(services.indexes.clone(), shutdown.clone()));
        tracker.spawn(query::follow(index.clone(), shutdown.clone()));
        tracker.spawn(query::run(Arc::new(services.query()), shutdown.clone()));
    }
    if roles.contains(&Role::Ingest) {
        tracker.spawn(ingest::run(Arc::new(services.ingest()), shutdown.clone()));
    }
    if roles.contains(&Role::Scheduler) {
        tracker.spawn(scheduler::run(Arc::new(services.scheduler()), shutdown.clone()));
    }
    if roles.contains(&Role::Query) || roles.contains(&Role::Ingest) {
        // These roles hold indexes (ingest adds to them); snapshots keep restarts cheap. The
        // scheduler writes the snapshot of each generation it builds.
        let interval = Duration::from_secs(index.settings.snapshot_interval_secs);
        tracker.spawn(index.indexes.clone().run_snapshots(interval, shutdown.clone()));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Opens every collection's index, trying again with backoff while the store is unavailable.
async fn open_indexes(indexes: Arc<Indexes>, shutdown: CancellationToken) {
    let mut wait = Duration::from_millis(500);
    loop {
        let started = std::time::Instant::now();
        match indexes.open_all().await {
            Ok(count) => {
                tracing::info!(collections = count, ms = started.elapsed().as_millis() as u64, "indexes open");
                return;
            }
            Err(error) => tracing::warn!(%error, retry_in = ?wait, "cannot open the indexes yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}
