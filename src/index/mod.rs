//! The vector indexes a process holds: one FAISS index per collection, loaded from its newest
//! snapshot (if it belongs to this store), caught up by replaying the store's change log after
//! the snapshot's position (adds and removes), and snapshotted periodically; or built from the
//! store's vectors ([`build`]) when no snapshot fits. [`Indexes::rebuild`] builds a new
//! generation beside the one in service and swaps it in; [`Indexes::reload`] makes a replica
//! adopt a generation another process built. (What triggers catch-up and reloads — events from
//! other processes — is the query role's business: `query::follow`; what triggers rebuilds is
//! the `scheduler`'s.) FAISS is derived data; the store stays the source of truth.

pub mod build;
pub mod lexical;
pub mod serving;
pub mod snapshot;
pub mod vectors;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::serving::{Delta, Serving};
pub use self::vectors::{Changes, IndexError, IndexKind, VectorIndex};
use crate::config::IndexSettings;
use crate::store::{Collection, GenerationRecord, Store};
use crate::telemetry::metrics;

/// One collection's index and where it stands.
pub struct CollectionIndex {
    collection: Collection,
    /// Whether the index started from a snapshot (false: rebuilt from the store).
    from_snapshot: bool,
    /// Searches share it to take their view of the index ([`serving`]) and search outside it;
    /// adds, removes, folds and a rebuild's swap take it alone for a copy of a few vectors or a
    /// pointer swap (folds and rebuilds do their work outside it).
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
    serving: Serving,
    /// Vectors added by catch-up from the store (not by this process's own ingest).
    caught_up: usize,
    /// The last change log entry applied.
    applied_seq: i64,
    generation: u64,
    dirty: bool,
    /// Vectors added or removed since the last snapshot (`[index] snapshot_after_changes`).
    changes: u64,
    /// Chunks removed by the log in this process. Chunk ids are never reused, so an add of one
    /// of these is stale (an ingest that lost a race with a delete) and is skipped.
    removed: HashSet<i64>,
    /// While a new generation is built beside this one: the adds made meanwhile, replayed into
    /// it at the swap.
    pending: Option<Vec<(Vec<i64>, Vec<f32>)>>,
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
    /// Structure and search parameters.
    pub kind: IndexKind,
}

/// What [`Indexes::rebuild`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    /// The collection.
    pub collection: String,
    /// The generation built (in service only if `verification.failure` is `None`).
    pub generation: u64,
    /// Structure and the tuned search parameter.
    pub kind: IndexKind,
    /// The change log position it contains.
    pub log_seq: i64,
    /// Count and recall checks.
    pub verification: build::Verification,
    /// Seconds per phase, `write` included.
    pub timings: build::Timings,
    /// Seconds writing the snapshot.
    pub write_secs: f64,
}

fn slot_stats(slot: &CollectionIndex) -> IndexStats {
    let state = slot.read();
    IndexStats {
        vectors: state.serving.len(),
        from_snapshot: slot.from_snapshot,
        caught_up: state.caught_up,
        applied_seq: state.applied_seq,
        generation: state.generation,
        kind: state.serving.main().kind(),
    }
}

/// All collection indexes of this process.
pub struct Indexes {
    root: PathBuf,
    store: Arc<dyn Store>,
    dimensions: usize,
    model: String,
    settings: IndexSettings,
    /// The store's identity, read once.
    store_id: tokio::sync::OnceCell<String>,
    /// Open collections, each opened once: the map is locked only to find a collection's cell,
    /// so opening one (a build can take minutes) never holds up searches of the others.
    open: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<CollectionIndex>>>>>,
    /// One rebuild at a time per process: each holds a collection's vectors twice.
    rebuilds: tokio::sync::Mutex<()>,
    /// Signalled when an index reached `snapshot_after_changes` changes.
    snapshot_due: Arc<tokio::sync::Notify>,
    /// Set once every collection the store held at start is open (see [`Self::open_all`]).
    all_open: std::sync::atomic::AtomicBool,
}

impl Indexes {
    /// Indexes of `dimensions`-long vectors of `model`, with snapshots under `root`, of the kind
    /// `settings` ask for.
    pub fn new(root: PathBuf, store: Arc<dyn Store>, dimensions: usize, model: &str, settings: IndexSettings) -> Self {
        Self {
            root,
            store,
            dimensions,
            model: model.to_owned(),
            settings,
            store_id: tokio::sync::OnceCell::new(),
            open: std::sync::Mutex::new(HashMap::new()),
            rebuilds: tokio::sync::Mutex::new(()),
            snapshot_due: Arc::new(tokio::sync::Notify::new()),
            all_open: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Opens the index of every collection in the store (snapshot, then catch-up), so that a
    /// query process is ready before its first query rather than building during it. Returns
    /// how many are open.
    ///
    /// # Errors
    /// The store is unavailable, or a collection's index cannot be opened.
    pub async fn open_all(&self) -> Result<usize, IndexError> {
        let collections = self.store.collections().await?;
        for collection in &collections {
            self.open(collection).await?;
        }
        self.all_open.store(true, std::sync::atomic::Ordering::Release);
        Ok(collections.len())
    }

    /// Whether [`Self::open_all`] has finished.
    pub fn all_open(&self) -> bool {
        self.all_open.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn store_id(&self) -> Result<String, IndexError> {
        Ok(self.store_id.get_or_try_init(|| self.store.identity()).await?.clone())
    }

    /// The newest snapshot of `collection` that belongs to this store, model and position.
    async fn load_snapshot(&self, collection: &Collection) -> Result<Option<snapshot::Loaded>, IndexError> {
        let store_id = self.store_id().await?;
        let last_seq = self.store.last_log_seq(collection.id).await?;
        let (root, name, dims, model) =
            (self.root.clone(), collection.name.clone(), self.dimensions, self.model.clone());
        let collection_id = collection.id;
        tokio::task::spawn_blocking(move || {
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
        .map_err(|e| IndexError::Snapshot(format!("load task: {e}")))?
    }

    /// The collection's index, loading its snapshot and catching up from the store on first use.
    ///
    /// # Errors
    /// The snapshot directory is unreadable, FAISS fails, or the store is unavailable.
    pub async fn open(&self, collection: &Collection) -> Result<Arc<CollectionIndex>, IndexError> {
        let cell = self.open_map().entry(collection.name.clone()).or_default().clone();
        // A failed open leaves the cell empty: the next call tries again.
        cell.get_or_try_init(|| self.load(collection)).await.cloned()
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::OnceCell<Arc<CollectionIndex>>>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The collection's index if it is open in this process.
    fn opened(&self, collection: &str) -> Option<Arc<CollectionIndex>> {
        self.open_map().get(collection).and_then(|cell| cell.get().cloned())
    }

    /// Every index open in this process.
    fn all_opened(&self) -> Vec<Arc<CollectionIndex>> {
        self.open_map().values().filter_map(|cell| cell.get().cloned()).collect()
    }

    /// Loads the collection's snapshot or builds its index from the store, then catches up.
    async fn load(&self, collection: &Collection) -> Result<Arc<CollectionIndex>, IndexError> {
        let loaded = self.load_snapshot(collection).await?.filter(|l| {
            let fits = build::kind_matches(&self.settings, l.manifest.index, l.manifest.count);
            if !fits {
                tracing::warn!(
                    collection = %collection.name,
                    snapshot = %l.manifest.index.describe(),
                    "index snapshot is of another kind than [index] asks for; rebuilding from the store"
                );
            }
            fits
        });
        let state = match loaded {
            Some(l) => State {
                serving: Serving::new(l.index)?,
                caught_up: 0,
                applied_seq: l.manifest.log_seq,
                generation: l.manifest.generation,
                dirty: false,
                changes: 0,
                removed: HashSet::new(),
                pending: None,
            },
            None => {
                // Built from stored vectors (no embedding call); a rebuild's record, if any,
                // numbers it.
                let built = build::build(self.store.as_ref(), collection, self.dimensions, &self.settings).await?;
                if let Some(failure) = &built.verification.failure {
                    tracing::warn!(collection = %collection.name, %failure, "index built at open failed a check");
                }
                let generation = self.store.last_generation(collection.id).await?.map_or(1, |g| g.generation.max(1));
                tracing::info!(
                    collection = %collection.name,
                    kind = %built.index.kind().describe(),
                    vectors = built.index.len(),
                    "index built from the store"
                );
                State {
                    serving: Serving::new(built.index)?,
                    caught_up: built.verification.vectors,
                    applied_seq: built.log_seq,
                    generation: generation as u64,
                    dirty: true,
                    changes: 0,
                    removed: built.removed,
                    pending: None,
                }
            }
        };
        let from_snapshot = !state.dirty;
        let slot = Arc::new(CollectionIndex {
            collection: collection.clone(),
            from_snapshot,
            state: RwLock::new(state),
            maintenance: tokio::sync::Mutex::new(()),
        });
        self.catch_up_slot(&slot).await?;
        Ok(slot)
    }

    /// Adds a document's vectors (ids already present are skipped).
    ///
    /// # Errors
    /// Wrong dimension or a FAISS failure.
    pub async fn add(&self, collection: &Collection, ids: Vec<i64>, vectors: Vec<f32>) -> Result<usize, IndexError> {
        let slot = self.open(collection).await?;
        let (snapshot_due, due) = self.due();
        let added = tokio::task::spawn_blocking(move || {
            let mut state = slot.lock();
            if let Some(pending) = state.pending.as_mut() {
                pending.push((ids.clone(), vectors.clone()));
            }
            let state = &mut *state;
            // An add of a chunk the log removed is stale (an ingest that lost a race with a
            // delete): the delete wins.
            let removed = &state.removed;
            let added = state.serving.add_where(&ids, &vectors, |id| !removed.contains(&id))?;
            state.dirty |= added > 0;
            state.changes += added as u64;
            if due(state.changes) || state.serving.fold_due() {
                snapshot_due.notify_one();
            }
            Ok::<_, IndexError>(added)
        })
        .await
        .map_err(|e| IndexError::Faiss(format!("add task: {e}")))??;
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
            let (view, generation) = {
                let state = slot.read();
                (state.serving.begin_search(&query, k)?, state.generation)
            };
            let hits = view.run(&query, k)?.into_iter().next().unwrap_or_default();
            Ok((hits, generation))
        })
        .await
        .map_err(|e| IndexError::Faiss(format!("search task: {e}")))?
    }

    /// The generation in service and the last change log entry applied, opening the index if
    /// needed (what query caches are keyed by).
    ///
    /// # Errors
    /// The index could not be opened.
    pub async fn position(&self, collection: &Collection) -> Result<(u64, i64), IndexError> {
        let slot = self.open(collection).await?;
        let state = slot.read();
        Ok((state.generation, state.applied_seq))
    }

    /// Names of the collections whose indexes are open in this process.
    pub async fn open_collections(&self) -> Vec<String> {
        self.all_opened().iter().map(|slot| slot.collection.name.clone()).collect()
    }

    /// Where a collection's open index stands (`None` if it is not open in this process).
    pub async fn stats(&self, collection: &str) -> Option<IndexStats> {
        self.opened(collection).map(|slot| slot_stats(&slot))
    }

    /// Every open index with where it stands, by collection name.
    pub fn all_stats(&self) -> Vec<(Collection, IndexStats)> {
        let mut all: Vec<_> =
            self.all_opened().iter().map(|slot| (slot.collection.clone(), slot_stats(slot))).collect();
        all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        all
    }

    /// Brings an open collection up to date with the store (no-op if it is not open).
    ///
    /// # Errors
    /// The store is unavailable or FAISS fails.
    pub async fn catch_up(&self, collection: &str) -> Result<(), IndexError> {
        let slot = self.opened(collection);
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
        self.catch_up_locked(slot).await
    }

    /// [`Self::catch_up_slot`] for a caller that holds `slot.maintenance`.
    async fn catch_up_locked(&self, slot: &Arc<CollectionIndex>) -> Result<(), IndexError> {
        loop {
            let applied = slot.read().applied_seq;
            let (steps, last, full) = build::read_steps(
                self.store.as_ref(),
                slot.collection.id,
                (applied, i64::MAX),
                self.dimensions,
                |ids| {
                    let state = slot.read();
                    ids.iter().copied().filter(|id| !state.serving.contains(*id)).collect()
                },
            )
            .await?;
            let Some(last) = last else { return Ok(()) };
            let slot = slot.clone();
            let (snapshot_due, due) = self.due();
            tokio::task::spawn_blocking(move || {
                // A few entries per lock, so searches never wait for a whole page of copies.
                for steps in steps.chunks(16) {
                    let mut state = slot.lock();
                    let state = &mut *state;
                    let (a, r) = build::apply_steps(&mut state.serving, &mut state.removed, steps)?;
                    state.caught_up += a;
                    state.changes += (a + r) as u64;
                    state.dirty = true;
                }
                let mut state = slot.lock();
                if due(state.changes) || state.serving.fold_due() {
                    snapshot_due.notify_one();
                }
                // Entries of a collection commit in sequence order (see the index_log table), so
                // every entry up to `last` that will ever exist has been applied.
                state.applied_seq = state.applied_seq.max(last);
                Ok::<_, IndexError>(())
            })
            .await
            .map_err(|e| IndexError::Faiss(format!("catch-up task: {e}")))??;
            if !full {
                return Ok(());
            }
        }
    }

    /// Builds a new generation of the collection's index from its stored vectors (no embedding
    /// call), beside the one in service: retrained (IVF), without deleted chunks or tombstones,
    /// its search parameter tuned to the target recall. If it passes verification (count against
    /// the store, recall against exact search) it is snapshotted, recorded in the store and, if
    /// this process has the collection open, swapped in; otherwise the old generation stays,
    /// the failure is recorded and logged, and `ragpipe_index_rebuild_ok` drops to 0.
    ///
    /// # Errors
    /// The store is unavailable, FAISS fails, or the snapshot cannot be written.
    pub async fn rebuild(&self, collection: &Collection) -> Result<RebuildReport, IndexError> {
        let _one = self.rebuilds.lock().await;
        let slot = self.opened(&collection.name);
        if let Some(slot) = &slot {
            slot.lock().pending = Some(Vec::new());
        }
        let result = self.rebuild_inner(collection, slot.as_ref()).await;
        if let Some(slot) = &slot {
            slot.lock().pending = None;
        }
        let gauge = metrics::INDEX_REBUILD_OK.with_label_values(&[collection.name.as_str()]);
        match &result {
            Ok(report) if report.verification.failure.is_none() => gauge.set(1),
            Ok(report) => {
                gauge.set(0);
                tracing::error!(
                    collection = %collection.name,
                    failure = report.verification.failure.as_deref().unwrap_or_default(),
                    "index rebuild failed verification; the previous generation stays in service"
                );
            }
            Err(error) => {
                gauge.set(0);
                tracing::error!(collection = %collection.name, %error, "index rebuild failed");
            }
        }
        result
    }

    async fn rebuild_inner(
        &self,
        collection: &Collection,
        slot: Option<&Arc<CollectionIndex>>,
    ) -> Result<RebuildReport, IndexError> {
        let built = build::build(self.store.as_ref(), collection, self.dimensions, &self.settings).await?;
        let current = slot.map_or(0, |s| s.read().generation);
        // Indexes built at open are generation 1 (or the last recorded one): a rebuild is newer.
        let recorded = self.store.last_generation(collection.id).await?.map_or(1, |g| g.generation.max(1) as u64);
        let generation = current.max(recorded) + 1;
        let mut report = RebuildReport {
            collection: collection.name.clone(),
            generation,
            kind: built.index.kind(),
            log_seq: built.log_seq,
            verification: built.verification.clone(),
            timings: built.timings.clone(),
            write_secs: 0.0,
        };
        let mut record = GenerationRecord {
            collection_id: collection.id,
            generation: generation as i64,
            ok: false,
            kind: report.kind.describe(),
            vectors: report.verification.vectors as i64,
            expected: report.verification.expected,
            recall: report.verification.recall,
            log_seq: built.log_seq,
            reason: report.verification.failure.clone(),
            timings: serde_json::to_value(&report.timings).unwrap_or_default(),
            finished_at: None,
        };
        if report.verification.failure.is_some() {
            self.store.record_generation(&record).await?;
            return Ok(report);
        }
        let started = std::time::Instant::now();
        let manifest = self.manifest(collection, generation, built.log_seq).await?;
        let (root, index) = (self.root.clone(), built.index);
        let index = tokio::task::spawn_blocking(move || {
            snapshot::write(&root, &index, manifest)?;
            Ok::<_, IndexError>(index)
        })
        .await
        .map_err(|e| IndexError::Snapshot(format!("snapshot task: {e}")))??;
        report.write_secs = started.elapsed().as_secs_f64();
        record.ok = true;
        self.store.record_generation(&record).await?;
        if let Some(slot) = slot {
            self.swap(slot, index, built.log_seq, generation, built.removed).await?;
        }
        tracing::info!(
            collection = %collection.name,
            generation,
            kind = %report.kind.describe(),
            vectors = report.verification.vectors,
            recall = ?report.verification.recall,
            "index rebuilt"
        );
        Ok(report)
    }

    /// Adopts generation `generation` of a collection that another process rebuilt: loads its
    /// snapshot (or, where the snapshot is not visible, e.g. another machine, builds the same from
    /// the store) and swaps it in while searches continue. A no-op if the collection is not open
    /// here or already at that generation.
    ///
    /// # Errors
    /// The store is unavailable or FAISS fails; the current generation stays in service.
    pub async fn reload(&self, collection: &str, generation: u64) -> Result<(), IndexError> {
        let Some(slot) = self.opened(collection) else { return Ok(()) };
        if slot.read().generation >= generation {
            return Ok(());
        }
        let _one = self.rebuilds.lock().await;
        slot.lock().pending = Some(Vec::new());
        let result = async {
            match self.load_snapshot(&slot.collection).await? {
                Some(loaded) if loaded.manifest.generation >= generation => {
                    let seq = loaded.manifest.log_seq;
                    self.swap(&slot, loaded.index, seq, loaded.manifest.generation, HashSet::new()).await
                }
                _ => {
                    let built =
                        build::build(self.store.as_ref(), &slot.collection, self.dimensions, &self.settings).await?;
                    self.swap(&slot, built.index, built.log_seq, generation, built.removed).await
                }
            }
        }
        .await;
        slot.lock().pending = None;
        result
    }

    /// Adopts the collection's newest recorded generation if it passed and is newer than the one
    /// in service (an `index.rebuilt` event missed while disconnected).
    ///
    /// # Errors
    /// See [`Self::reload`].
    pub async fn adopt_recorded_generation(&self, collection: &str) -> Result<(), IndexError> {
        let Some(slot) = self.opened(collection) else { return Ok(()) };
        match self.store.last_generation(slot.collection.id).await? {
            Some(record) if record.ok && record.generation as u64 > slot.read().generation => {
                self.reload(collection, record.generation as u64).await
            }
            _ => Ok(()),
        }
    }

    /// Puts `index` (containing the log up to `log_seq`) in service in place of the slot's: brings
    /// it to the log's end first, then, under the write lock (a pointer's worth of work plus the
    /// adds made meanwhile), replaces the old one. Searches never wait for more than that.
    async fn swap(
        &self,
        slot: &Arc<CollectionIndex>,
        index: VectorIndex,
        log_seq: i64,
        generation: u64,
        removed: HashSet<i64>,
    ) -> Result<(), IndexError> {
        // No catch-up may advance the old index meanwhile: the new one replays the same entries.
        let _guard = slot.maintenance.lock().await;
        let (mut index, mut removed, mut applied) = (index, removed, log_seq);
        loop {
            let (steps, last, full) = build::read_steps(
                self.store.as_ref(),
                slot.collection.id,
                (applied, i64::MAX),
                self.dimensions,
                |ids| ids.iter().copied().filter(|id| !index.contains(*id)).collect(),
            )
            .await?;
            let Some(last) = last else { break };
            (index, removed) = tokio::task::spawn_blocking(move || {
                build::apply_steps(&mut index, &mut removed, &steps)?;
                Ok::<_, IndexError>((index, removed))
            })
            .await
            .map_err(|e| IndexError::Faiss(format!("replay task: {e}")))??;
            applied = last;
            if !full {
                break;
            }
        }
        let slot = slot.clone();
        tokio::task::spawn_blocking(move || {
            // Adds made directly by ingest since the build began are only in `pending`: they go
            // to the new generation's delta, copied outside the lock but for the last few.
            // (Removes this process applied that the new index's replay has not seen cannot
            // exist: the replay read the log to its end under `maintenance`.)
            let early = slot.lock().pending.as_mut().map(std::mem::take).unwrap_or_default();
            let mut delta = Delta::new(index.dimensions())?;
            for (ids, vectors) in &early {
                delta.add_where(ids, vectors, |id| !index.contains(id) && !removed.contains(&id))?;
            }
            let mut state = slot.lock();
            let state = &mut *state;
            state.removed.extend(removed);
            // An early add that lost a race with a delete this process applied before.
            let stale: HashSet<i64> =
                early.iter().flat_map(|(ids, _)| ids).copied().filter(|id| state.removed.contains(id)).collect();
            delta.remove(&stale)?;
            for (ids, vectors) in state.pending.take().unwrap_or_default() {
                delta.add_where(&ids, &vectors, |id| !index.contains(id) && !state.removed.contains(&id))?;
            }
            state.serving.replace(index, delta);
            state.applied_seq = state.applied_seq.max(applied);
            state.generation = generation;
            state.dirty = true;
            state.pending = Some(Vec::new());
            Ok::<_, IndexError>(())
        })
        .await
        .map_err(|e| IndexError::Faiss(format!("swap task: {e}")))??;
        Ok(())
    }

    async fn manifest(
        &self,
        collection: &Collection,
        generation: u64,
        log_seq: i64,
    ) -> Result<snapshot::Manifest, IndexError> {
        Ok(snapshot::Manifest {
            format: 0,
            collection: collection.name.clone(),
            generation,
            log_seq,
            store_id: self.store_id().await?,
            collection_id: collection.id,
            index: IndexKind::Flat,
            tombstones: Vec::new(),
            count: 0,
            dimensions: self.dimensions,
            model: self.model.clone(),
            file: String::new(),
            crc32: String::new(),
        })
    }

    /// Writes a snapshot of every open index that changed since its last one.
    ///
    /// # Errors
    /// The first collection that could not be snapshotted (the others are still attempted).
    pub async fn snapshot_all(&self) -> Result<(), IndexError> {
        let slots = self.all_opened();
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
        let (generation, log_seq) = {
            let state = slot.read();
            (state.generation, state.applied_seq)
        };
        // Everything up to `log_seq` is in main once the delta is folded in (adds after it go
        // to the next delta and are replayed from the log after a restart).
        self.fold_locked(slot).await?;
        let manifest = self.manifest(&slot.collection, generation, log_seq).await?;
        let (slot, root) = (slot.clone(), self.root.clone());
        tokio::task::spawn_blocking(move || {
            // Main is not changed in place, so it is written without the lock: searches and adds
            // go on meanwhile.
            let main = slot.read().serving.main().clone();
            snapshot::write(&root, &main, manifest)?;
            let mut state = slot.lock();
            state.changes = state.serving.unfolded() as u64;
            state.dirty = state.changes > 0;
            Ok(())
        })
        .await
        .map_err(|e| IndexError::Snapshot(format!("snapshot task: {e}")))?
    }

    /// Folds the slot's delta and hidden ids into a copy of its main index and swaps the copy in
    /// ([`serving`]); the caller holds `slot.maintenance`. On failure the delta stays searchable.
    async fn fold_locked(&self, slot: &Arc<CollectionIndex>) -> Result<(), IndexError> {
        let slot = slot.clone();
        tokio::task::spawn_blocking(move || {
            let fold = {
                let mut state = slot.lock();
                if !state.serving.has_changes() {
                    return Ok(());
                }
                state.serving.begin_fold()?
            };
            match fold.run() {
                Ok(next) => {
                    slot.lock().serving.finish_fold(&fold, next);
                    Ok(())
                }
                Err(error) => {
                    slot.lock().serving.abort_fold()?;
                    Err(error)
                }
            }
        })
        .await
        .map_err(|e| IndexError::Faiss(format!("fold task: {e}")))?
    }

    /// Snapshots the indexes with `[index] snapshot_after_changes` changes, and folds those
    /// whose delta has grown enough ([`serving::FOLD_DELTA`]).
    async fn maintain_due(&self) -> Result<(), IndexError> {
        let slots = self.all_opened();
        let (_, due) = self.due();
        let mut first_error = None;
        for slot in slots {
            let (snapshot, fold) = {
                let state = slot.read();
                (due(state.changes), state.serving.fold_due())
            };
            let result = if snapshot {
                self.snapshot_slot(&slot).await
            } else if fold {
                let _guard = slot.maintenance.lock().await;
                self.fold_locked(&slot).await
            } else {
                Ok(())
            };
            if let Err(error) = result {
                tracing::error!(collection = %slot.collection.name, %error, "index maintenance failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What an add or catch-up needs to ask for an early snapshot: the signal, and whether a
    /// count of changes calls for one.
    fn due(&self) -> (Arc<tokio::sync::Notify>, impl Fn(u64) -> bool + Send + 'static) {
        let threshold = self.settings.snapshot_after_changes;
        (self.snapshot_due.clone(), move |changes| threshold > 0 && changes >= threshold)
    }

    /// Snapshots changed indexes every `interval`, or as soon as one has
    /// `[index] snapshot_after_changes` changes, and folds deltas that have grown, until
    /// `shutdown`, then snapshots once more.
    pub async fn run_snapshots(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => { let _ = self.snapshot_all().await; }
                () = self.snapshot_due.notified() => { let _ = self.maintain_due().await; }
                () = shutdown.cancelled() => break,
            }
        }
        let _ = self.snapshot_all().await;
    }
}
