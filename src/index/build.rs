//! Building a collection's index from the vectors the store holds — at first open without a
//! usable snapshot, and for every rebuild (nightly or `ragpipe reindex`). No embedding call is
//! ever made: the store keeps every chunk's vector.
//!
//! A build (1) notes the change log position, (2) pages through the live vectors, (3) chooses
//! the kind from the settings and the count, trains (IVF, on a spread sample) and adds, (4)
//! replays the log entries that committed while it read, so the result is exactly the store's
//! live set at one log position, which it (5) verifies by count, and (6) measures: the search
//! parameter (`nprobe`, `ef_search`) is the smallest whose recall@10 against exact search, on a
//! sample of the collection's own vectors, reaches the target.

use std::collections::HashSet;
use std::time::Instant;

use super::vectors::{Changes, IndexError, IndexKind, VectorIndex};
use crate::config::{IndexKindSetting, IndexSettings};
use crate::store::{Collection, LogOp, Store, StoredVectors};

/// Stored vectors read per page.
const FETCH_PAGE: i64 = 20_000;
/// Change log entries read per page of a replay.
pub(crate) const LOG_PAGE: i64 = 1_000;
/// Fewest vectors IVF is trained on; below it an `ivf` collection is Flat until a rebuild finds
/// enough (k-means needs about 39 vectors per cell to place them well).
const IVF_MIN_VECTORS: usize = 1_000;
/// Vectors per IVF cell FAISS wants at least when training.
const IVF_TRAIN_PER_CELL: usize = 39;
/// Training sample per cell: k-means costs sample × cells, so at 1M vectors (4,000 cells) 64 per
/// cell trains in a fraction of the time 256 takes, and the measured `nprobe` makes up for the
/// coarser cells (the recall target is checked either way).
const IVF_TRAIN_PER_CELL_MAX: usize = 64;
/// Stored vectors used as queries to measure recall.
const RECALL_QUERIES: usize = 200;
/// Recall is measured at this depth.
const RECALL_K: usize = 10;
const NPROBE_STEPS: &[usize] = &[1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024];
const EF_SEARCH_STEPS: &[usize] = &[16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024];

/// The kind a collection of `n` vectors gets. The search parameter of IVF/HNSW is the configured
/// one, or a starting point that [`build`] tunes.
pub fn choose_kind(settings: &IndexSettings, n: usize) -> IndexKind {
    let ivf = |n: usize| {
        if n < IVF_MIN_VECTORS {
            return IndexKind::Flat;
        }
        let nlist = if settings.nlist > 0 {
            settings.nlist
        } else {
            // nlist ≈ 4·√N, and no more cells than the vectors can train.
            ((4.0 * (n as f64).sqrt()).round() as usize).clamp(1, n / IVF_TRAIN_PER_CELL)
        };
        IndexKind::Ivf { nlist, nprobe: settings.nprobe.max(1) }
    };
    match settings.kind {
        IndexKindSetting::Flat => IndexKind::Flat,
        IndexKindSetting::Auto if n < settings.auto_threshold => IndexKind::Flat,
        IndexKindSetting::Auto | IndexKindSetting::Ivf => ivf(n),
        IndexKindSetting::Hnsw => IndexKind::Hnsw {
            m: settings.hnsw_m,
            ef_search: if settings.ef_search > 0 { settings.ef_search } else { 16 },
        },
    }
}

/// Whether an index of `kind` holding `n` vectors is what the settings ask for (otherwise a
/// snapshot of it is rebuilt). Search parameters are not compared: they are tuned per build.
pub fn kind_matches(settings: &IndexSettings, kind: IndexKind, n: usize) -> bool {
    let wanted = choose_kind(settings, n);
    match (wanted, kind) {
        (IndexKind::Flat, IndexKind::Flat) => true,
        (IndexKind::Hnsw { m: a, .. }, IndexKind::Hnsw { m: b, .. }) => a == b,
        // IVF keeps its cells as the collection grows between rebuilds; only an explicit
        // `nlist` must match.
        (IndexKind::Ivf { nlist: a, .. }, IndexKind::Ivf { nlist: b, .. }) => settings.nlist == 0 || a == b,
        // An `auto` collection that grew past the threshold stays Flat until its next rebuild
        // rather than paying a training at a restart; one that shrank keeps its IVF.
        (_, IndexKind::Flat | IndexKind::Ivf { .. }) => settings.kind == IndexKindSetting::Auto,
        _ => false,
    }
}

/// How a build went: what a rebuild records and `ragpipe status` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verification {
    /// Vectors in the built index.
    pub vectors: usize,
    /// Live vectors in the store at the index's log position.
    pub expected: i64,
    /// Recall@10 against exact search on a sample of stored vectors (`None`: exact kind, or
    /// too few vectors to measure).
    pub recall: Option<f64>,
    /// Why the build must not replace the current generation (`None`: it passed).
    pub failure: Option<String>,
}

/// Seconds spent per phase.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Reading and decoding stored vectors.
    pub fetch: f64,
    /// IVF k-means.
    pub train: f64,
    /// Adding vectors to the structure.
    pub add: f64,
    /// Replaying the log entries that committed during the build.
    pub replay: f64,
    /// Measuring recall and choosing the search parameter.
    pub tune: f64,
}

/// A built index, not yet in service.
pub struct Built {
    /// The index.
    pub index: VectorIndex,
    /// The change log position it contains.
    pub log_seq: i64,
    /// Chunks removed by the log entries it replayed (an ingest that lost a race with a delete
    /// must not add them back).
    pub removed: HashSet<i64>,
    /// Count and recall checks.
    pub verification: Verification,
    /// Where the time went.
    pub timings: Timings,
}

/// Builds the collection's index from its stored vectors (see the module documentation).
///
/// # Errors
/// The store is unavailable or FAISS fails. A failed *verification* is not an error: it is in
/// [`Built::verification`], for the caller to keep the old generation.
pub async fn build(
    store: &dyn Store,
    collection: &Collection,
    dimensions: usize,
    settings: &IndexSettings,
) -> Result<Built, IndexError> {
    let mut timings = Timings::default();
    let started = Instant::now();
    if let Some((model, dims)) = store.collection_model(collection.id).await?
        && dims != dimensions as i64
    {
        return Err(IndexError::Snapshot(format!(
            "collection `{}` holds {model} vectors of dimension {dims}, but this process embeds with dimension \
             {dimensions}: after a model change run `ragpipe reindex --re-embed --collection {}`",
            collection.name, collection.name
        )));
    }
    let from_seq = store.last_log_seq(collection.id).await?;
    let mut stored = StoredVectors::default();
    let mut after = 0;
    loop {
        let page = store.live_vectors(collection.id, after, FETCH_PAGE, dimensions).await?;
        let Some(&last) = page.ids.last() else { break };
        after = last;
        let full = page.ids.len() as i64 == FETCH_PAGE;
        stored.ids.extend(page.ids);
        stored.vectors.extend(page.vectors);
        if !full {
            break;
        }
    }
    timings.fetch = started.elapsed().as_secs_f64();

    let kind = choose_kind(settings, stored.ids.len());
    // Approximate kinds are measured against an exact index of the same vectors, built beside.
    let (index, train, add) = tokio::task::spawn_blocking(move || {
        let mut index = VectorIndex::with_kind(dimensions, kind)?;
        let mut exact = (kind != IndexKind::Flat).then(|| VectorIndex::new(dimensions)).transpose()?;
        let started = Instant::now();
        if let IndexKind::Ivf { nlist, .. } = kind {
            index.train(&training_sample(&stored.vectors, dimensions, nlist))?;
        }
        let train = started.elapsed().as_secs_f64();
        let started = Instant::now();
        index.add(&stored.ids, &stored.vectors)?;
        let probe = exact.as_mut().map(|exact| {
            exact.add(&stored.ids, &stored.vectors)?;
            Ok::<_, IndexError>(recall_queries(&stored, dimensions))
        });
        let probe = probe.transpose()?;
        Ok::<_, IndexError>((Pair { index, exact, probe }, train, started.elapsed().as_secs_f64()))
    })
    .await
    .map_err(|e| IndexError::Faiss(format!("build task: {e}")))??;
    (timings.train, timings.add) = (train, add);

    // Entries that committed while the pages were read: replaying them (idempotently) makes the
    // index exactly the live set at `log_seq`, which the count read with it checks.
    let started = Instant::now();
    let (expected, log_seq) = store.live_state(collection.id).await?;
    let mut pair = index;
    let mut removed = HashSet::new();
    let mut applied = from_seq;
    while applied < log_seq {
        let (steps, last, _) = read_steps(store, collection.id, (applied, log_seq), dimensions, |ids| {
            ids.iter().copied().filter(|id| !pair.index.contains(*id)).collect()
        })
        .await?;
        let Some(last) = last else { break };
        let (moved, gone) = tokio::task::spawn_blocking(move || {
            let mut gone = HashSet::new();
            if let Some(exact) = pair.exact.as_mut() {
                apply_steps(exact, &mut HashSet::new(), &steps)?;
            }
            apply_steps(&mut pair.index, &mut gone, &steps)?;
            Ok::<_, IndexError>((pair, gone))
        })
        .await
        .map_err(|e| IndexError::Faiss(format!("replay task: {e}")))??;
        pair = moved;
        removed.extend(gone);
        applied = last;
    }
    timings.replay = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let target = settings.target_recall;
    let fixed_parameter = match kind {
        IndexKind::Ivf { .. } => settings.nprobe > 0,
        IndexKind::Hnsw { .. } => settings.ef_search > 0,
        IndexKind::Flat => true,
    };
    let (index, recall) = tokio::task::spawn_blocking(move || {
        let Pair { mut index, exact, probe } = pair;
        let recall = match (exact, probe) {
            (Some(exact), Some((ids, queries))) => tune(&mut index, &exact, &ids, &queries, target, fixed_parameter)?,
            _ => None,
        };
        Ok::<_, IndexError>((index, recall))
    })
    .await
    .map_err(|e| IndexError::Faiss(format!("tune task: {e}")))??;
    timings.tune = started.elapsed().as_secs_f64();

    let mut failure = None;
    if index.len() as i64 != expected {
        failure = Some(format!(
            "index holds {} vectors but the store has {expected} live chunks at log position {log_seq}",
            index.len()
        ));
    } else if let Some(recall) = recall.filter(|r| *r < target) {
        failure = Some(format!(
            "recall@{RECALL_K} {recall:.3} is below the target {target} even at {}",
            index.kind().describe()
        ));
    }
    let verification = Verification { vectors: index.len(), expected, recall, failure };
    Ok(Built { index, log_seq, removed, verification, timings })
}

/// The index being built, the exact one it is measured against, and the measuring queries.
struct Pair {
    index: VectorIndex,
    exact: Option<VectorIndex>,
    probe: Option<(Vec<i64>, Vec<f32>)>,
}

/// Up to [`RECALL_QUERIES`] stored vectors, spread over the collection, with their ids.
fn recall_queries(stored: &StoredVectors, dimensions: usize) -> (Vec<i64>, Vec<f32>) {
    let n = stored.ids.len();
    let take = RECALL_QUERIES.min(n);
    let mut ids = Vec::with_capacity(take);
    let mut queries = Vec::with_capacity(take * dimensions);
    for i in 0..take {
        let row = i * n / take;
        ids.push(stored.ids[row]);
        queries.extend_from_slice(&stored.vectors[row * dimensions..(row + 1) * dimensions]);
    }
    (ids, queries)
}

/// One step of a replay: a run of adds (their stored vectors fetched) or one remove.
pub(crate) struct Step {
    op: LogOp,
    ids: Vec<i64>,
    stored: StoredVectors,
}

/// Reads a page of the collection's log after `after` (up to `until`) as steps, fetching the
/// vectors of added chunks that `missing` says the index lacks. Returns the steps, the last
/// sequence read, and whether the page was full (more may follow).
pub(crate) async fn read_steps(
    store: &dyn Store,
    collection_id: i64,
    (after, until): (i64, i64),
    dimensions: usize,
    missing: impl Fn(&[i64]) -> Vec<i64>,
) -> Result<(Vec<Step>, Option<i64>, bool), IndexError> {
    let mut entries = store.log_after(collection_id, after, LOG_PAGE).await?;
    let full = entries.len() as i64 == LOG_PAGE;
    entries.retain(|e| e.seq <= until);
    let last = entries.last().map(|e| e.seq);
    // Runs of adds are fetched together; a remove applies after the adds before it.
    let mut runs: Vec<(LogOp, Vec<i64>)> = Vec::new();
    for entry in &entries {
        match (runs.last_mut(), entry.op) {
            (Some((LogOp::Add, ids)), LogOp::Add) => ids.extend(&entry.chunk_ids),
            _ => runs.push((entry.op, entry.chunk_ids.clone())),
        }
    }
    let mut steps = Vec::with_capacity(runs.len());
    for (op, ids) in runs {
        let stored = match op {
            LogOp::Add => {
                let missing = missing(&ids);
                if missing.is_empty() {
                    StoredVectors::default()
                } else {
                    store.vectors_by_ids(&missing, dimensions).await?
                }
            }
            LogOp::Remove => StoredVectors::default(),
        };
        steps.push(Step { op, ids, stored });
    }
    Ok((steps, last, full))
}

/// Applies replay steps to `index`; returns (added, removed). Removed ids are recorded in
/// `removed` so a late add of one of them is recognised as stale.
pub(crate) fn apply_steps(
    index: &mut impl Changes,
    removed: &mut HashSet<i64>,
    steps: &[Step],
) -> Result<(usize, usize), IndexError> {
    let (mut added, mut gone) = (0, 0);
    for step in steps {
        match step.op {
            LogOp::Add => added += index.add(&step.stored.ids, &step.stored.vectors)?,
            LogOp::Remove => {
                gone += index.remove(&step.ids)?;
                removed.extend(&step.ids);
            }
        }
    }
    Ok((added, gone))
}

/// Up to [`IVF_TRAIN_PER_CELL_MAX`] vectors per cell, spread evenly over the collection (ids are in insertion order,
/// so a prefix would train on the oldest documents only).
fn training_sample(vectors: &[f32], dimensions: usize, nlist: usize) -> Vec<f32> {
    let n = vectors.len() / dimensions;
    let want = (nlist * IVF_TRAIN_PER_CELL_MAX).min(n);
    if want == n {
        return vectors.to_vec();
    }
    let mut sample = Vec::with_capacity(want * dimensions);
    for i in 0..want {
        let row = i * n / want;
        sample.extend_from_slice(&vectors[row * dimensions..(row + 1) * dimensions]);
    }
    sample
}

/// Measures recall@10 of `index` against `exact` search over the same vectors, with stored
/// vectors as `queries` (each query's own id excluded from both result lists, so finding itself
/// earns nothing), and — unless `fixed` — sets the smallest `nprobe`/`ef_search` that reaches
/// `target`. Returns the recall at the setting kept (`None` for tiny indexes).
pub fn tune(
    index: &mut VectorIndex,
    exact: &VectorIndex,
    ids: &[i64],
    queries: &[f32],
    target: f64,
    fixed: bool,
) -> Result<Option<f64>, IndexError> {
    let kind = index.kind();
    if kind == IndexKind::Flat || index.len() <= RECALL_K || ids.is_empty() {
        return Ok(None);
    }
    let exact = top_without_self(exact, ids, queries)?;
    let recall_at = |index: &VectorIndex| -> Result<f64, IndexError> {
        let got = top_without_self(index, ids, queries)?;
        let hits: usize = got.iter().zip(&exact).map(|(g, e)| g.iter().filter(|id| e.contains(id)).count()).sum();
        let possible: usize = exact.iter().map(Vec::len).sum();
        Ok(if possible == 0 { 1.0 } else { hits as f64 / possible as f64 })
    };
    if fixed {
        return recall_at(index).map(Some);
    }
    let steps: Vec<IndexKind> = match kind {
        IndexKind::Ivf { nlist, .. } => NPROBE_STEPS
            .iter()
            .copied()
            .take_while(|p| *p < nlist)
            .chain([nlist])
            .map(|nprobe| IndexKind::Ivf { nlist, nprobe })
            .collect(),
        IndexKind::Hnsw { m, .. } => {
            EF_SEARCH_STEPS.iter().map(|&ef_search| IndexKind::Hnsw { m, ef_search }).collect()
        }
        IndexKind::Flat => Vec::new(),
    };
    let mut best = None;
    for step in steps {
        index.set_kind_parameters(step)?;
        let recall = recall_at(index)?;
        best = Some(recall);
        if recall >= target {
            break;
        }
    }
    Ok(best)
}

/// The best `RECALL_K` ids for each query, leaving out the query's own id.
fn top_without_self(index: &VectorIndex, ids: &[i64], queries: &[f32]) -> Result<Vec<Vec<i64>>, IndexError> {
    let results = index.search_many(queries, RECALL_K + 1)?;
    Ok(results
        .into_iter()
        .zip(ids)
        .map(|(hits, own)| hits.into_iter().map(|h| h.0).filter(|id| id != own).take(RECALL_K).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: IndexKindSetting) -> IndexSettings {
        IndexSettings { kind, ..IndexSettings::default() }
    }

    #[test]
    fn auto_is_flat_while_small_and_ivf_with_about_four_root_n_cells_beyond() {
        let auto = settings(IndexKindSetting::Auto);
        assert_eq!(choose_kind(&auto, 10_000), IndexKind::Flat);
        assert_eq!(choose_kind(&auto, 1_000_000), IndexKind::Ivf { nlist: 4000, nprobe: 1 });
        assert_eq!(choose_kind(&settings(IndexKindSetting::Ivf), 500), IndexKind::Flat, "too few to train");
        assert_eq!(choose_kind(&settings(IndexKindSetting::Ivf), 2_000), IndexKind::Ivf { nlist: 51, nprobe: 1 });
        assert!(matches!(choose_kind(&settings(IndexKindSetting::Hnsw), 10), IndexKind::Hnsw { m: 32, .. }));
        assert_eq!(choose_kind(&settings(IndexKindSetting::Flat), 10_000_000), IndexKind::Flat);
    }

    #[test]
    fn snapshots_of_another_kind_do_not_match() {
        let flat = settings(IndexKindSetting::Flat);
        assert!(kind_matches(&flat, IndexKind::Flat, 1_000_000));
        assert!(!kind_matches(&flat, IndexKind::Ivf { nlist: 100, nprobe: 4 }, 1_000_000));
        let hnsw = settings(IndexKindSetting::Hnsw);
        assert!(!kind_matches(&hnsw, IndexKind::Flat, 10));
        assert!(!kind_matches(&hnsw, IndexKind::Hnsw { m: 16, ef_search: 64 }, 10));
        let auto = settings(IndexKindSetting::Auto);
        assert!(kind_matches(&auto, IndexKind::Flat, 1_000_000), "switches at the next rebuild");
        assert!(kind_matches(&auto, IndexKind::Ivf { nlist: 894, nprobe: 8 }, 60_000));
    }
}
