//! The vector indexes a process holds: one FAISS index per collection, loaded from its newest
//! snapshot (if it belongs to this store), caught up by replaying the store's change log after
//! the snapshot's position (adds and removes), and snapshotted periodically. (What
//! triggers catch-up — events from other processes — is the query role's business:
//! `query::follow`.) FAISS is derived data; PostgreSQL stays the source of truth.

pub mod snapshot;
pub mod vectors;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::vectors::{IndexError, IndexKind, VectorIndex};
use crate::store::{Collection, LogOp, Store};
use crate::telemetry::metrics;

/// Change log entries read per catch-up page.
const CATCH_UP_PAGE: i64 = 1_000;

/// One collection's index and where it stands.
pub struct CollectionIndex {
    collection: Collection,
    /// Whether the index started from a snapshot (false: rebuilt from the store).
    from_snapshot: bool,
    /// Searches share it (FAISS searches concurrently); adds, removes and a rebuild's swap take
    /// it alone, briefly (a rebuild builds outside it and swaps the finished index in).
    state: RwLock<State>,
    /// Serialises catch-ups and snapshots of this collection.
    maintenance: tokio::sync::Mutex<()>,
}

impl CollectionIndex {
    /// Locks the state for a change. A panic while holding the lock cannot leave FAISS
    /// half-updated in a way that matters more than losing the process, so poisoning is ignored.
    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Shares the state with other readers (searches).
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct State {
    index: VectorIndex,
    /// Vectors added by catch-up from the store (not by this process's own ingest).
    caught_up: usize,
    /// The last change log entry applied.
    applied_seq: i64,
    generation: u64,
    dirty: bool,
    /// Chunks removed by the log in this process. Chunk ids are never reused, so an add of one
    /// of these is stale (an ingest that lost a race with a delete) and is skipped.
    removed: HashSet<i64>,
}

/// Where one collection's index stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Vectors held.
    pub vectors: usize,
    /// Whether it was loaded from a snapshot (false: built from the store).
    pub from_snapshot: bool,
    /// Vectors added by catch-up from the store since it was opened.
    pub caught_up: usize,
    /// The last change log entry applied.
    pub applied_seq: i64,
    /// Index generation.
    pub generation: u64,
}

/// All collection indexes of this process.
pub struct Indexes {
    root: PathBuf,
    store: Arc<dyn Store>,
    dimensions: usize,
    model: String,
    /// The store's identity, read once.
    store_id: tokio::sync::OnceCell<String>,
    open: tokio::sync::Mutex<HashMap<String, Arc<CollectionIndex>>>,
}

impl Indexes {
    /// Indexes of `dimensions`-long vectors of `model`, with snapshots under `root`.
    pub fn new(root: PathBuf, store: Arc<dyn Store>, dimensions: usize, model: &str) -> Self {
        Self {
            root,
            store,
            dimensions,
            model: model.to_owned(),
            store_id: tokio::sync::OnceCell::new(),
            open: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The collection's index, loading its snapshot and catching up from the store on first use.
    ///
    /// # Errors
    /// The snapshot directory is unreadable, FAISS fails, or the store is unavailable.
    pub async fn open(&self, collection: &Collection) -> Result<Arc<CollectionIndex>, IndexError> {
        let mut open = self.open.lock().await;
        if let Some(found) = open.get(&collection.name) {
            return Ok(found.clone());
        }
        let store_id = self.store_id.get_or_try_init(|| self.store.identity()).await?.clone();
        let last_seq = self.store.last_log_seq(collection.id).await?;
        let (root, name, dims, model) =
            (self.root.clone(), collection.name.clone(), self.dimensions, self.model.clone());
        let collection_id = collection.id;
        let loaded = tokio::task::spawn_blocking(move || {
            let expected = snapshot::Expected {
                collection: &name,
                dimensions: dims,
                model: &model,
                store_id: &store_id,
                collection_id,
                last_seq,
            };
            snapshot::load(&root, &expected)
        })
        .await
        .map_err(|e| IndexError::Snapshot(format!("load task: {e}")))??;
        let state = match loaded {
            Some(l) => State {
                index: l.index,
                caught_up: 0,
                applied_seq: l.manifest.log_seq,
                generation: l.manifest.generation,
                dirty: false,
                removed: HashSet::new(),
            },
            None => State {
                index: VectorIndex::new(self.dimensions)?,
                caught_up: 0,
                applied_seq: 0,
                generation: 1,
                dirty: true,
                removed: HashSet::new(),
            },
        };
        let from_snapshot = !state.dirty;
        metrics::INDEX_VECTORS.add(state.index.len() as i64);
        let slot = Arc::new(CollectionIndex {
            collection: collection.clone(),
            from_snapshot,
            state: RwLock::new(state),
            maintenance: tokio::sync::Mutex::new(()),
        });
        self.catch_up_slot(&slot).await?;
        open.insert(collection.name.clone(), slot.clone());
        Ok(slot)
    }

    /// Adds a document's vectors (ids already present are skipped).
    ///
    /// # Errors
    /// Wrong dimension or a FAISS failure.
    pub async fn add(&self, collection: &Collection, ids: Vec<i64>, vectors: Vec<f32>) -> Result<usize, IndexError> {
        let slot = self.open(collection).await?;
        let added = tokio::task::spawn_blocking(move || {
            let mut state = slot.lock();
            let added = if ids.iter().any(|id| state.removed.contains(id)) {
                // A delete was replayed before this (late) add: keep only what is still live.
                let dims = state.index.dimensions();
                let (live_ids, live): (Vec<i64>, Vec<&[f32]>) = ids
                    .iter()
                    .zip(vectors.chunks_exact(dims))
                    .filter(|(id, _)| !state.removed.contains(id))
                    .map(|(id, v)| (*id, v))
                    .unzip();
                state.index.add(&live_ids, &live.concat())?
            } else {
                state.index.add(&ids, &vectors)?
            };
            state.dirty |= added > 0;
            Ok::<_, IndexError>(added)
        })
        .await
        .map_err(|e| IndexError::Faiss(format!("add task: {e}")))??;
        metrics::INDEX_VECTORS.add(added as i64);
        Ok(added)
    }

    /// The `k` best chunk ids for `query`, with scores, and the index generation.
    ///
    /// # Errors
    /// Wrong dimension, FAISS failure, or the index could not be opened.
    pub async fn search(
        &self,
        collection: &Collection,
        query: Vec<f32>,
        k: usize,
    ) -> Result<(Vec<(i64, f32)>, u64), IndexError> {
        let slot = self.open(collection).await?;
        tokio::task::spawn_blocking(move || {
            let state = slot.read();
            Ok((state.index.search(&query, k)?, state.generation))
        })
        .await
        .map_err(|e| IndexError::Faiss(format!("search task: {e}")))?
    }

    /// Names of the collections whose indexes are open in this process.
    pub async fn open_collections(&self) -> Vec<String> {
        self.open.lock().await.keys().cloned().collect()
    }

    /// Where a collection's open index stands (`None` if it is not open in this process).
    pub async fn stats(&self, collection: &str) -> Option<IndexStats> {
        let open = self.open.lock().await;
        open.get(collection).map(|slot| {
            let state = slot.lock();
            IndexStats {
                vectors: state.index.len(),
                from_snapshot: slot.from_snapshot,
                caught_up: state.caught_up,
                applied_seq: state.applied_seq,
                generation: state.generation,
            }
        })
    }

    /// Brings an open collection up to date with the store (no-op if it is not open).
    ///
    /// # Errors
    /// The store is unavailable or FAISS fails.
    pub async fn catch_up(&self, collection: &str) -> Result<(), IndexError> {
        let slot = self.open.lock().await.get(collection).cloned();
        match slot {
            Some(slot) => self.catch_up_slot(&slot).await,
            None => Ok(()),
        }
    }

    /// Replays the collection's change log after the applied position: adds fetch their
    /// vectors from the store (no embedding call), removes drop theirs. Idempotent: adds of
    /// present ids and removes of absent ones are skipped.
    async fn catch_up_slot(&self, slot: &Arc<CollectionIndex>) -> Result<(), IndexError> {
        let _guard = slot.maintenance.lock().await;
        loop {
            let applied = slot.lock().applied_seq;
            let entries = self.store.log_after(slot.collection.id, applied, CATCH_UP_PAGE).await?;
            let Some(last) = entries.last().map(|e| e.seq) else { return Ok(()) };
            // Runs of adds are fetched together; a remove applies after the adds before it.
            let mut steps: Vec<(LogOp, Vec<i64>)> = Vec::new();
            for entry in &entries {
                match (steps.last_mut(), entry.op) {
                    (Some((LogOp::Add, ids)), LogOp::Add) => ids.extend(&entry.chunk_ids),
                    _ => steps.push((entry.op, entry.chunk_ids.clone())),
                }
            }
            let mut fetched = Vec::with_capacity(steps.len());
            for (op, ids) in steps {
                let stored = match op {
                    LogOp::Add => {
                        let missing: Vec<i64> = {
                            let state = slot.lock();
                            ids.iter().copied().filter(|id| !state.index.contains(*id)).collect()
                        };
                        if missing.is_empty() {
                            Default::default()
                        } else {
                            self.store.vectors_by_ids(&missing, self.dimensions).await?
                        }
                    }
                    LogOp::Remove => Default::default(),
                };
                fetched.push((op, ids, stored));
            }
            let slot = slot.clone();
            let (added, removed) = tokio::task::spawn_blocking(move || {
                let mut state = slot.lock();
                let (mut added, mut removed) = (0, 0);
                for (op, ids, stored) in fetched {
                    match op {
                        LogOp::Add => {
                            let added_now = state.index.add(&stored.ids, &stored.vectors)?;
                            state.caught_up += added_now;
                            added += added_now;
                        }
                        LogOp::Remove => {
                            removed += state.index.remove(&ids)?;
                            state.removed.extend(ids);
                        }
                    }
                }
                // Entries of a collection commit in sequence order (see the index_log table), so
                // every entry up to `last` that will ever exist has been applied.
                state.applied_seq = state.applied_seq.max(last);
                state.dirty = true;
                Ok::<_, IndexError>((added, removed))
            })
            .await
            .map_err(|e| IndexError::Faiss(format!("catch-up task: {e}")))??;
            metrics::INDEX_VECTORS.add(added as i64 - removed as i64);
            if (entries.len() as i64) < CATCH_UP_PAGE {
                return Ok(());
            }
        }
    }

    /// Writes a snapshot of every open index that changed since its last one.
    ///
    /// # Errors
    /// The first collection that could not be snapshotted (the others are still attempted).
    pub async fn snapshot_all(&self) -> Result<(), IndexError> {
        let slots: Vec<_> = self.open.lock().await.values().cloned().collect();
        let mut first_error = None;
        for slot in slots {
            if let Err(error) = self.snapshot_slot(&slot).await {
                tracing::error!(collection = %slot.collection.name, %error, "index snapshot failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn snapshot_slot(&self, slot: &Arc<CollectionIndex>) -> Result<(), IndexError> {
        if !slot.lock().dirty {
            return Ok(());
        }
        // Advance the log position over what ingest added directly, so a restart reads little.
        self.catch_up_slot(slot).await?;
        let _guard = slot.maintenance.lock().await;
        let store_id = self.store_id.get_or_try_init(|| self.store.identity()).await?.clone();
        let (slot, root, model) = (slot.clone(), self.root.clone(), self.model.clone());
        tokio::task::spawn_blocking(move || {
            let mut state = slot.lock();
            let manifest = snapshot::Manifest {
                format: 0,
                collection: slot.collection.name.clone(),
                generation: state.generation,
                log_seq: state.applied_seq,
                store_id,
                collection_id: slot.collection.id,
                index: IndexKind::Flat,
                tombstones: Vec::new(),
                count: 0,
                dimensions: state.index.dimensions(),
                model,
                file: String::new(),
                crc32: String::new(),
            };
            snapshot::write(&root, &state.index, manifest)?;
            state.dirty = false;
            Ok(())
        })
        .await
        .map_err(|e| IndexError::Snapshot(format!("snapshot task: {e}")))?
    }

    /// Snapshots changed indexes every `interval` until `shutdown`, then once more.
    pub async fn run_snapshots(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let _ = self.snapshot_all().await;
        }
        let _ = self.snapshot_all().await;
    }
}
