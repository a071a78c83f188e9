//! What searches of one collection see, arranged so that no change holds them up for longer than
//! copying a few vectors.
//!
//! - `main` is the big index (Flat, IVF or HNSW). It is never changed in place while it serves:
//!   searches clone its `Arc` under the collection's lock and search it outside the lock.
//! - Adds go to `delta`, a small exact (Flat) index. Adding to it is a copy of the vectors, so an
//!   add holds the lock for microseconds whatever main's kind (an HNSW insert alone costs ~0.5 ms
//!   per vector; an IVF add assigns every vector to a cell).
//! - Removes of vectors in main go to `hidden`, filtered from main's results. Removes of vectors
//!   in the delta remove them from it.
//! - A *fold* ([`Serving::begin_fold`], [`Fold::run`], [`Serving::finish_fold`]) applies the
//!   delta and the hidden ids to a copy of main, outside the lock, and then swaps the copy in
//!   with a pointer swap. The delta being folded stays searchable meanwhile. Folds run in the
//!   background once the delta reaches [`FOLD_DELTA`] vectors or [`FOLD_HIDDEN`] hidden ids, and
//!   before every snapshot, so snapshots are one index file as before.
//!
//! Searching the delta under the (shared) lock is the one cost that grows: a Flat search of
//! [`FOLD_DELTA`] 384-dimension vectors is about 0.3 ms on one core.

use std::collections::HashSet;
use std::sync::Arc;

use super::vectors::{Changes, IndexError, VectorIndex};

/// Delta size at which a fold is due.
pub const FOLD_DELTA: usize = 8_192;
/// Hidden ids at which a fold is due: every search of main asks for this many extra results.
pub const FOLD_HIDDEN: usize = 1_024;

/// Recent adds: an exact index and the vectors themselves, which a fold copies into main.
pub struct Delta {
    index: VectorIndex,
    ids: Vec<i64>,
    vectors: Vec<f32>,
}

impl Delta {
    /// An empty delta of `dimensions`.
    ///
    /// # Errors
    /// FAISS cannot make a Flat index.
    pub fn new(dimensions: usize) -> Result<Self, IndexError> {
        Ok(Self { index: VectorIndex::new(dimensions)?, ids: Vec::new(), vectors: Vec::new() })
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds the rows of `ids` that `keep` accepts and it does not hold; returns how many.
    ///
    /// # Errors
    /// Wrong dimension.
    pub fn add_where(&mut self, ids: &[i64], vectors: &[f32], keep: impl Fn(i64) -> bool) -> Result<usize, IndexError> {
        let dims = self.index.dimensions();
        if vectors.len() != ids.len() * dims {
            return Err(IndexError::Dimension {
                expected: dims,
                got: vectors.len().checked_div(ids.len()).unwrap_or(0),
            });
        }
        if ids.iter().all(|id| keep(*id)) {
            return self.add(ids, vectors);
        }
        let (kept_ids, kept): (Vec<i64>, Vec<&[f32]>) =
            ids.iter().zip(vectors.chunks_exact(dims)).filter(|(id, _)| keep(**id)).map(|(id, v)| (*id, v)).unzip();
        self.add(&kept_ids, &kept.concat())
    }

    fn contains(&self, id: i64) -> bool {
        self.index.contains(id)
    }

    /// Adds the vectors of `ids` that it does not hold; returns how many.
    fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError> {
        let dims = self.index.dimensions();
        let before = self.index.len();
        let added = self.index.add(ids, vectors)?;
        if added == ids.len() {
            self.ids.extend_from_slice(ids);
            self.vectors.extend_from_slice(vectors);
        } else if added > 0 {
            // Some were present already: keep the rows the index took, once each.
            let mut taken: HashSet<i64> = self.ids.iter().copied().collect();
            for (id, vector) in ids.iter().zip(vectors.chunks_exact(dims)) {
                if taken.insert(*id) {
                    self.ids.push(*id);
                    self.vectors.extend_from_slice(vector);
                }
            }
        }
        debug_assert_eq!(self.ids.len(), before + added);
        Ok(added)
    }

    /// Removes the vectors of `ids` it holds; returns how many.
    ///
    /// # Errors
    /// FAISS fails.
    pub fn remove(&mut self, ids: &HashSet<i64>) -> Result<usize, IndexError> {
        let list: Vec<i64> = ids.iter().copied().filter(|id| self.index.contains(*id)).collect();
        if list.is_empty() {
            return Ok(0);
        }
        let dims = self.index.dimensions();
        let removed = self.index.remove(&list)?;
        let (mut kept_ids, mut kept) = (Vec::with_capacity(self.ids.len()), Vec::with_capacity(self.vectors.len()));
        for (id, vector) in self.ids.iter().zip(self.vectors.chunks_exact(dims)) {
            if !ids.contains(id) {
                kept_ids.push(*id);
                kept.extend_from_slice(vector);
            }
        }
        (self.ids, self.vectors) = (kept_ids, kept);
        Ok(removed)
    }
}

/// One collection's searchable vectors: main, the delta being folded (if any), the delta, and
/// the ids hidden from main and the folding delta.
pub struct Serving {
    main: Arc<VectorIndex>,
    folding: Option<Arc<Delta>>,
    delta: Delta,
    hidden: Arc<HashSet<i64>>,
}

impl Changes for Serving {
    fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError> {
        Serving::add(self, ids, vectors)
    }

    fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        Serving::remove(self, ids)
    }

    fn dimensions(&self) -> usize {
        self.main.dimensions()
    }
}

/// A fold in progress: what it copies, applies and adds, outside any lock.
pub struct Fold {
    main: Arc<VectorIndex>,
    delta: Arc<Delta>,
    hidden: Arc<HashSet<i64>>,
}

impl Fold {
    /// Main with the hidden ids removed and the delta added, as a new index.
    ///
    /// # Errors
    /// FAISS cannot copy the index or add to it.
    pub fn run(&self) -> Result<VectorIndex, IndexError> {
        let mut next = self.main.try_clone()?;
        next.remove(&self.hidden.iter().copied().collect::<Vec<_>>())?;
        let dims = next.dimensions();
        let (ids, vectors): (Vec<i64>, Vec<&[f32]>) = self
            .delta
            .ids
            .iter()
            .zip(self.delta.vectors.chunks_exact(dims))
            .filter(|(id, _)| !self.hidden.contains(id))
            .map(|(id, v)| (*id, v))
            .unzip();
        next.add(&ids, &vectors.concat())?;
        Ok(next)
    }
}

impl Serving {
    /// `main` in service, with nothing added or hidden since.
    ///
    /// # Errors
    /// FAISS cannot make the (empty) delta.
    pub fn new(main: VectorIndex) -> Result<Self, IndexError> {
        let delta = Delta::new(main.dimensions())?;
        Ok(Self { main: Arc::new(main), folding: None, delta, hidden: Arc::default() })
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.main.len() + self.folding.as_ref().map_or(0, |d| d.len()) + self.delta.len() - self.hidden.len()
    }

    /// Whether no vector is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The main index (kind, snapshot writes).
    pub fn main(&self) -> &Arc<VectorIndex> {
        &self.main
    }

    /// Whether `id` is live here.
    pub fn contains(&self, id: i64) -> bool {
        self.delta.contains(id)
            || ((self.main.contains(id) || self.folding.as_ref().is_some_and(|d| d.contains(id)))
                && !self.hidden.contains(&id))
    }

    /// Adds the vectors of ids not live here; returns how many. A copy into the delta.
    ///
    /// # Errors
    /// Wrong dimension.
    pub fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError> {
        self.add_where(ids, vectors, |_| true)
    }

    /// [`Self::add`] of the ids `keep` accepts.
    ///
    /// # Errors
    /// Wrong dimension.
    pub fn add_where(&mut self, ids: &[i64], vectors: &[f32], keep: impl Fn(i64) -> bool) -> Result<usize, IndexError> {
        // A hidden id is still inside main or the folding delta: adding it again would show it
        // twice after the next fold (chunk ids are never reused; this is only a replay).
        let (main, folding, hidden) = (&self.main, &self.folding, &self.hidden);
        self.delta.add_where(ids, vectors, |id| {
            keep(id) && !main.contains(id) && !folding.as_ref().is_some_and(|d| d.contains(id)) && !hidden.contains(&id)
        })
    }

    /// Removes the vectors of `ids` that are live here; returns how many.
    ///
    /// # Errors
    /// FAISS fails removing from the delta.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        let ids: HashSet<i64> = ids.iter().copied().collect();
        let mut removed = self.delta.remove(&ids)?;
        let in_main: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| {
                (self.main.contains(*id) || self.folding.as_ref().is_some_and(|d| d.contains(*id)))
                    && !self.hidden.contains(id)
            })
            .collect();
        if !in_main.is_empty() {
            removed += in_main.len();
            Arc::make_mut(&mut self.hidden).extend(in_main);
        }
        Ok(removed)
    }

    /// Whether the delta or the hidden ids have grown enough to fold them into main.
    pub fn fold_due(&self) -> bool {
        self.delta.len() >= FOLD_DELTA || self.hidden.len() >= FOLD_HIDDEN
    }

    /// Adds and removes not folded into main yet.
    pub fn unfolded(&self) -> usize {
        self.delta.len() + self.hidden.len() + self.folding.as_ref().map_or(0, |d| d.len())
    }

    /// Whether main alone lacks changes (a snapshot folds first).
    pub fn has_changes(&self) -> bool {
        !self.delta.is_empty() || !self.hidden.is_empty() || self.folding.is_some()
    }

    /// Starts a fold: the delta moves aside (still searched) and a new one takes the adds. Adds
    /// and removes may go on meanwhile (removes stay hidden in the folded index); another fold
    /// may not start until [`Self::finish_fold`] or [`Self::abort_fold`] (callers hold the
    /// collection's maintenance lock).
    ///
    /// # Errors
    /// FAISS cannot make the new delta.
    pub fn begin_fold(&mut self) -> Result<Fold, IndexError> {
        let delta = Arc::new(std::mem::replace(&mut self.delta, Delta::new(self.main.dimensions())?));
        self.folding = Some(delta.clone());
        Ok(Fold { main: self.main.clone(), delta, hidden: self.hidden.clone() })
    }

    /// Puts the folded index in service (a pointer swap).
    pub fn finish_fold(&mut self, fold: &Fold, next: VectorIndex) {
        self.main = Arc::new(next);
        self.folding = None;
        if !fold.hidden.is_empty() {
            let hidden = Arc::make_mut(&mut self.hidden);
            hidden.retain(|id| !fold.hidden.contains(id));
        }
    }

    /// Gives up a fold that failed: its delta's vectors go back into the delta.
    ///
    /// # Errors
    /// FAISS fails adding them (they stay searchable in the folding delta then).
    pub fn abort_fold(&mut self) -> Result<(), IndexError> {
        if let Some(folding) = self.folding.clone() {
            let live: Vec<usize> = (0..folding.ids.len()).filter(|&i| !self.hidden.contains(&folding.ids[i])).collect();
            let dims = self.main.dimensions();
            let ids: Vec<i64> = live.iter().map(|&i| folding.ids[i]).collect();
            let vectors: Vec<f32> =
                live.iter().flat_map(|&i| folding.vectors[i * dims..(i + 1) * dims].iter().copied()).collect();
            self.folding = None;
            Arc::make_mut(&mut self.hidden).retain(|id| !folding.contains(*id));
            self.delta.add(&ids, &vectors)?;
        }
        Ok(())
    }

    /// Replaces everything with `main` (a rebuilt or reloaded generation) and `delta` (the adds
    /// it lacks): a pointer swap.
    pub fn replace(&mut self, main: VectorIndex, delta: Delta) {
        self.main = Arc::new(main);
        self.folding = None;
        self.delta = delta;
        self.hidden = Arc::default();
    }

    /// What a search needs outside the lock, and the delta's own results (searched here, under
    /// the shared lock: it is small).
    ///
    /// # Errors
    /// Wrong query dimension or a FAISS failure.
    pub fn begin_search(&self, queries: &[f32], k: usize) -> Result<Search, IndexError> {
        Ok(Search {
            main: self.main.clone(),
            folding: self.folding.clone(),
            hidden: self.hidden.clone(),
            delta_hits: if !self.delta.is_empty() { Some(self.delta.index.search_many(queries, k)?) } else { None },
        })
    }
}

/// A search's view of one collection, searched without its lock.
pub struct Search {
    main: Arc<VectorIndex>,
    folding: Option<Arc<Delta>>,
    hidden: Arc<HashSet<i64>>,
    delta_hits: Option<Vec<Vec<(i64, f32)>>>,
}

impl Search {
    /// The `k` best live ids of each query, best first, across main, the folding delta and the
    /// delta.
    ///
    /// # Errors
    /// Wrong query dimension or a FAISS failure.
    pub fn run(self, queries: &[f32], k: usize) -> Result<Vec<Vec<(i64, f32)>>, IndexError> {
        // Ask for more where hidden ids may take places in the results.
        let want = k + self.hidden.len();
        let mut results = self.main.search_many(queries, want)?;
        if let Some(folding) = &self.folding {
            merge(&mut results, folding.index.search_many(queries, want)?);
        }
        for hits in &mut results {
            hits.retain(|(id, _)| !self.hidden.contains(id));
        }
        if let Some(delta_hits) = self.delta_hits {
            merge(&mut results, delta_hits);
        }
        for hits in &mut results {
            hits.truncate(k);
        }
        Ok(results)
    }
}

/// Merges `other` into `results` query by query, best score first, each id once.
fn merge(results: &mut [Vec<(i64, f32)>], other: Vec<Vec<(i64, f32)>>) {
    for (hits, more) in results.iter_mut().zip(other) {
        if more.is_empty() {
            continue;
        }
        hits.extend(more);
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut seen = HashSet::with_capacity(hits.len());
        hits.retain(|(id, _)| seen.insert(*id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexKind;

    fn unit(n: usize, dims: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut out = Vec::with_capacity(n * dims);
        for _ in 0..n {
            let start = out.len();
            for _ in 0..dims {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                out.push((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5);
            }
            crate::embed::normalize(&mut out[start..]);
        }
        out
    }

    fn ids_of(results: &[Vec<(i64, f32)>]) -> Vec<Vec<i64>> {
        results.iter().map(|r| r.iter().map(|h| h.0).collect()).collect()
    }

    fn search(serving: &Serving, queries: &[f32], k: usize) -> Vec<Vec<(i64, f32)>> {
        serving.begin_search(queries, k).expect("begin").run(queries, k).expect("search")
    }

    /// Whatever the split between main, a folding delta and the delta, and whatever was removed,
    /// results equal one exact index of the live vectors; and folding changes no result.
    #[test]
    fn main_delta_and_hidden_search_like_one_exact_index() {
        let (dims, n) = (16, 600);
        let data = unit(n, dims, 7);
        let ids: Vec<i64> = (1..=n as i64).collect();
        let row = |i: usize| &data[i * dims..(i + 1) * dims];
        for kind in [IndexKind::Flat, IndexKind::Hnsw { m: 16, ef_search: 400 }] {
            let mut main = VectorIndex::with_kind(dims, kind).expect("main");
            main.add(&ids[..300], &data[..300 * dims]).expect("add main");
            let mut serving = Serving::new(main).expect("serving");
            assert_eq!(serving.add(&ids[250..400], &data[250 * dims..400 * dims]).expect("add"), 100);
            let fold = serving.begin_fold().expect("fold");
            assert_eq!(serving.add(&ids[400..], &data[400 * dims..]).expect("add"), 200);
            let gone: Vec<i64> = vec![1, 2, 350, 351, 500, 501, 9999];
            assert_eq!(serving.remove(&gone).expect("remove"), 6);
            assert_eq!(serving.len(), n - 6);
            let mut exact = VectorIndex::new(dims).expect("exact");
            let live: Vec<usize> = (0..n).filter(|i| !gone.contains(&ids[*i])).collect();
            let live_ids: Vec<i64> = live.iter().map(|&i| ids[i]).collect();
            exact.add(&live_ids, &live.iter().flat_map(|&i| row(i).to_vec()).collect::<Vec<_>>()).expect("exact");
            let queries = &data[..20 * dims];
            let want = ids_of(&exact.search_many(queries, 10).expect("exact search"));
            assert_eq!(ids_of(&search(&serving, queries, 10)), want, "{kind:?} while folding");
            // Removes made while folding stay hidden in the folded main.
            let next = fold.run().expect("run");
            serving.finish_fold(&fold, next);
            assert_eq!(serving.len(), n - 6);
            assert_eq!(ids_of(&search(&serving, queries, 10)), want, "{kind:?} after the fold");
            assert!(serving.has_changes(), "350 and 351 are still hidden");
            // A failed fold gives its delta back.
            let fold = serving.begin_fold().expect("fold");
            serving.abort_fold().expect("abort");
            drop(fold);
            assert_eq!(ids_of(&search(&serving, queries, 10)), want, "{kind:?} after an abort");
            let fold = serving.begin_fold().expect("fold");
            let next = fold.run().expect("run");
            serving.finish_fold(&fold, next);
            assert!(!serving.has_changes());
            assert_eq!(serving.len(), n - 6);
            assert_eq!(ids_of(&search(&serving, queries, 10)), want, "{kind:?} after the last fold");
            assert!(!serving.contains(1) && serving.contains(3) && serving.contains(599));
        }
    }

    #[test]
    fn adds_of_live_or_hidden_ids_are_skipped() {
        let dims = 4;
        let data = unit(3, dims, 3);
        let mut main = VectorIndex::new(dims).expect("main");
        main.add(&[1], &data[..dims]).expect("add");
        let mut serving = Serving::new(main).expect("serving");
        assert_eq!(serving.add(&[1, 2], &data[..2 * dims]).expect("add"), 1);
        assert_eq!(serving.remove(&[1]).expect("remove"), 1);
        assert_eq!(serving.add(&[1, 2, 3], &data).expect("add"), 1, "1 is hidden, 2 is live");
        assert_eq!(serving.len(), 2);
        assert!(serving.add(&[4], &data[..dims - 1]).is_err());
    }
}
