//! One collection's FAISS index: an `IndexIDMap` over an inner-product index (Flat, IVF or HNSW)
//! whose ids are chunk ids, plus the set of ids it holds so that adds are idempotent (FAISS's
//! `add_with_ids` does not deduplicate).

use std::collections::HashSet;
use std::path::Path;

use faiss::index::IndexImpl;
use faiss::index::NativeIndex;
use faiss::selector::IdSelector;
use faiss::{IdMap, Idx, Index, MetricType};

/// A FAISS failure.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// FAISS reported an error.
    #[error("faiss: {0}")]
    Faiss(String),
    /// Vectors of the wrong length.
    #[error("vector dimension mismatch: index has {expected}, got {got}")]
    Dimension {
        /// The index's dimension.
        expected: usize,
        /// What was offered.
        got: usize,
    },
    /// A snapshot could not be written or read.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The store could not be read during catch-up.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<faiss::error::Error> for IndexError {
    fn from(error: faiss::error::Error) -> Self {
        Self::Faiss(error.to_string())
    }
}

impl From<IndexError> for crate::error::Failure {
    fn from(error: IndexError) -> Self {
        match error {
            IndexError::Store(e) => e.into(),
            other => crate::error::Failure::transient("index", other.to_string()),
        }
    }
}

/// The FAISS index structure of a collection, with its search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexKind {
    /// Exact search over every vector.
    Flat,
    /// Inverted lists: `nlist` k-means cells (trained on the collection's vectors), `nprobe` of
    /// them searched per query.
    Ivf {
        /// Cells.
        nlist: usize,
        /// Cells searched per query.
        nprobe: usize,
    },
    /// A proximity graph with `m` links per node, `ef_search` candidates kept per query. Cannot
    /// remove in place: deleted ids are filtered out of results until the next rebuild.
    Hnsw {
        /// Links per node.
        m: usize,
        /// Candidates kept while searching.
        ef_search: usize,
    },
}

impl IndexKind {
    /// Short name for logs, manifests and `ragpipe status`.
    pub fn describe(&self) -> String {
        match self {
            Self::Flat => "flat".into(),
            Self::Ivf { nlist, nprobe } => format!("ivf (nlist {nlist}, nprobe {nprobe})"),
            Self::Hnsw { m, ef_search } => format!("hnsw (m {m}, ef_search {ef_search})"),
        }
    }

    fn factory(&self) -> String {
        match self {
            Self::Flat => "Flat".into(),
            Self::Ivf { nlist, .. } => format!("IVF{nlist},Flat"),
            Self::Hnsw { m, .. } => format!("HNSW{m},Flat"),
        }
    }

    /// Whether the structure must be trained before vectors are added.
    pub fn needs_training(&self) -> bool {
        matches!(self, Self::Ivf { .. })
    }
}

/// What replaying changes needs of an index: [`VectorIndex`] itself while a generation is built,
/// [`super::serving::Serving`] while one serves.
pub trait Changes {
    /// Adds the vectors of ids not present; returns how many.
    ///
    /// # Errors
    /// Wrong dimension or a FAISS failure.
    fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError>;
    /// Removes the vectors of `ids` that are present; returns how many.
    ///
    /// # Errors
    /// A FAISS failure.
    fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError>;
    /// Length of each vector.
    fn dimensions(&self) -> usize;
}

impl Changes for VectorIndex {
    fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError> {
        VectorIndex::add(self, ids, vectors)
    }

    fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        VectorIndex::remove(self, ids)
    }

    fn dimensions(&self) -> usize {
        VectorIndex::dimensions(self)
    }
}

/// Vectors of one collection, searchable by inner product. Searches take `&self` and may run
/// concurrently (FAISS's CPU indexes search without mutating); adds and removes take `&mut self`.
pub struct VectorIndex {
    index: IdMap<IndexImpl>,
    kind: IndexKind,
    /// Ids present and live.
    ids: HashSet<i64>,
    /// Ids removed from `ids` but still inside the FAISS structure (HNSW cannot remove):
    /// filtered out of results.
    tombstones: HashSet<i64>,
    dimensions: usize,
}

impl VectorIndex {
    /// An empty flat index of `dimensions`.
    ///
    /// # Errors
    /// FAISS cannot build the index.
    pub fn new(dimensions: usize) -> Result<Self, IndexError> {
        Self::with_kind(dimensions, IndexKind::Flat)
    }

    /// An empty index of `kind` (untrained if the kind needs training).
    ///
    /// # Errors
    /// FAISS cannot build the index.
    pub fn with_kind(dimensions: usize, kind: IndexKind) -> Result<Self, IndexError> {
        let dims = u32::try_from(dimensions).map_err(|_| IndexError::Faiss("dimension too large".into()))?;
        let inner = faiss::index_factory(dims, kind.factory(), MetricType::InnerProduct)?;
        let mut index =
            Self { index: IdMap::new(inner)?, kind, ids: HashSet::new(), tombstones: HashSet::new(), dimensions };
        index.apply_search_parameters()?;
        Ok(index)
    }

    /// Trains the structure on `sample` (IVF's k-means); a no-op for kinds without training.
    ///
    /// # Errors
    /// Too few vectors for the cells, or FAISS fails.
    pub fn train(&mut self, sample: &[f32]) -> Result<(), IndexError> {
        if !self.kind.needs_training() {
            return Ok(());
        }
        if let IndexKind::Ivf { nlist, .. } = self.kind {
            let n = sample.len() / self.dimensions;
            if n < nlist {
                return Err(IndexError::Faiss(format!("{n} vectors cannot train {nlist} IVF cells")));
            }
        }
        self.index.train(sample)?;
        Ok(())
    }

    fn apply_search_parameters(&mut self) -> Result<(), IndexError> {
        let space = faiss::index::autotune::ParameterSpace::new()?;
        match self.kind {
            IndexKind::Flat => {}
            IndexKind::Ivf { nprobe, .. } => space.set_index_parameter(&self.index, "nprobe", nprobe as f64)?,
            IndexKind::Hnsw { ef_search, .. } => {
                space.set_index_parameter(&self.index, "efSearch", ef_search as f64)?;
            }
        }
        Ok(())
    }

    /// Changes the search parameter of an IVF (`nprobe`) or HNSW (`ef_search`) index.
    ///
    /// # Errors
    /// FAISS fails.
    pub fn set_kind_parameters(&mut self, kind: IndexKind) -> Result<(), IndexError> {
        let same_structure = match (self.kind, kind) {
            (IndexKind::Ivf { nlist: a, .. }, IndexKind::Ivf { nlist: b, .. }) => a == b,
            (IndexKind::Hnsw { m: a, .. }, IndexKind::Hnsw { m: b, .. }) => a == b,
            (IndexKind::Flat, IndexKind::Flat) => true,
            _ => false,
        };
        if same_structure {
            self.kind = kind;
            self.apply_search_parameters()?;
        }
        Ok(())
    }

    /// The structure and its parameters.
    pub fn kind(&self) -> IndexKind {
        self.kind
    }

    /// Reads an index written by [`VectorIndex::write`], of the `kind` its manifest names; the
    /// `tombstones` it had are still filtered.
    ///
    /// # Errors
    /// The file is not a FAISS ID-mapped index.
    pub fn read(path: &Path, kind: IndexKind, tombstones: HashSet<i64>) -> Result<Self, IndexError> {
        let path = path.to_str().ok_or_else(|| IndexError::Snapshot("index path is not UTF-8".into()))?;
        let index = faiss::read_index(path)?.into_id_map()?;
        let mut ids: HashSet<i64> = index.id_map().iter().filter_map(|id| id.get()).map(|id| id as i64).collect();
        ids.retain(|id| !tombstones.contains(id));
        let dimensions = index.d() as usize;
        let mut index = Self { index, kind, ids, tombstones, dimensions };
        index.apply_search_parameters()?;
        Ok(index)
    }

    /// An independent copy (FAISS's `clone_index`: the structure, its vectors and its ids), which
    /// a fold changes while searches go on in the original.
    ///
    /// # Errors
    /// FAISS cannot copy this kind of index.
    pub fn try_clone(&self) -> Result<Self, IndexError> {
        let mut copy = std::ptr::null_mut();
        // SAFETY: `clone_index` only reads the source (searches may run on it meanwhile, as they
        // read too) and returns a new ID-mapped index that owns its sub-index, which `IdMap`
        // takes ownership of and frees once.
        let index = unsafe {
            let status = faiss_sys::faiss_clone_index(self.index.inner_ptr(), &mut copy);
            if status != 0 || copy.is_null() {
                return Err(IndexError::Faiss(format!("copying the index failed with status {status}")));
            }
            <IndexImpl as faiss::index::FromInnerPtr>::from_inner_ptr(copy).into_id_map()?
        };
        let mut copy = Self {
            index,
            kind: self.kind,
            ids: self.ids.clone(),
            tombstones: self.tombstones.clone(),
            dimensions: self.dimensions,
        };
        copy.apply_search_parameters()?;
        Ok(copy)
    }

    /// Ids removed but still inside the structure (HNSW), to be recorded with a snapshot.
    pub fn tombstones(&self) -> &HashSet<i64> {
        &self.tombstones
    }

    /// Writes the index to `path` (overwriting it: callers write to a temp name and rename).
    ///
    /// # Errors
    /// FAISS cannot write the file.
    pub fn write(&self, path: &Path) -> Result<(), IndexError> {
        let path = path.to_str().ok_or_else(|| IndexError::Snapshot("index path is not UTF-8".into()))?;
        faiss::write_index(&self.index, path)?;
        Ok(())
    }

    /// Vector dimension.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Live vectors held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the chunk id is present.
    pub fn contains(&self, id: i64) -> bool {
        self.ids.contains(&id)
    }

    /// Adds the vectors whose ids are not present yet; returns how many were added.
    ///
    /// # Errors
    /// `vectors.len() != ids.len() * dimensions`, or FAISS fails (an untrained IVF index).
    pub fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError> {
        if vectors.len() != ids.len() * self.dimensions {
            return Err(IndexError::Dimension {
                expected: self.dimensions,
                got: vectors.len().checked_div(ids.len()).unwrap_or(0),
            });
        }
        let mut new_ids = Vec::new();
        let mut new_vectors = Vec::new();
        let mut seen = HashSet::new();
        for (id, vector) in ids.iter().zip(vectors.chunks_exact(self.dimensions)) {
            // A tombstoned id is still in the structure: adding it again would duplicate it.
            if !self.ids.contains(id) && !self.tombstones.contains(id) && seen.insert(*id) {
                new_ids.push(Idx::new(*id as u64));
                new_vectors.extend_from_slice(vector);
            }
        }
        if new_ids.is_empty() {
            return Ok(0);
        }
        self.index.add_with_ids(&new_vectors, &new_ids)?;
        self.ids.extend(new_ids.iter().filter_map(|id| id.get()).map(|id| id as i64));
        Ok(new_ids.len())
    }

    /// Removes the vectors of `ids` that are present; returns how many were removed. Kinds
    /// that cannot remove in place (HNSW) keep them as tombstones, never returned by searches.
    ///
    /// # Errors
    /// FAISS fails.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        let present: Vec<i64> = ids.iter().copied().filter(|id| self.ids.contains(id)).collect();
        if present.is_empty() {
            return Ok(0);
        }
        if matches!(self.kind, IndexKind::Hnsw { .. }) {
            self.tombstones.extend(&present);
        } else {
            let selector: Vec<Idx> = present.iter().map(|id| Idx::new(*id as u64)).collect();
            self.index.remove_ids(&IdSelector::batch(&selector)?)?;
        }
        for id in &present {
            self.ids.remove(id);
        }
        Ok(present.len())
    }

    /// The `k` nearest chunk ids with their scores, best first.
    ///
    /// # Errors
    /// Wrong query dimension or a FAISS failure.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(i64, f32)>, IndexError> {
        Ok(self.search_many(query, k)?.into_iter().next().unwrap_or_default())
    }

    /// The `k` nearest chunk ids of each query in `queries` (concatenated vectors), in one FAISS
    /// call: batched queries share the passes over the vectors.
    ///
    /// # Errors
    /// Wrong query dimension or a FAISS failure.
    pub fn search_many(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<(i64, f32)>>, IndexError> {
        if queries.is_empty() || !queries.len().is_multiple_of(self.dimensions) {
            return Err(IndexError::Dimension { expected: self.dimensions, got: queries.len() });
        }
        let nq = queries.len() / self.dimensions;
        if self.ids.is_empty() || k == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        // Ask for more where tombstones may take places in the results.
        let want = (k + self.tombstones.len()).min(self.ids.len() + self.tombstones.len());
        let mut distances = vec![0f32; want * nq];
        let mut labels = vec![-1i64; want * nq];
        // The sub-index is searched and its positions are mapped to chunk ids here, not by
        // `IndexIDMap::search`: that one translates ids inside an OpenMP parallel loop on every
        // call, so even a single query wakes a thread team, which stalls ~8 ms whenever the
        // other core is busy (measured with `benches/index_kinds.rs` under load).
        //
        // SAFETY: FAISS's CPU indexes search without mutating them (the C API takes a const
        // pointer; the getter only reads a field), so concurrent searches through `&self` are
        // sound while nothing holds `&mut self` (adds, removes, parameters): the borrow checker
        // guarantees that. The buffers hold `want * nq` values, as the call writes.
        let status = unsafe {
            let sub = faiss_sys::faiss_IndexIDMap_sub_index(self.index.inner_ptr() as *mut faiss_sys::FaissIndexIDMap);
            faiss_sys::faiss_Index_search(
                sub as *const faiss_sys::FaissIndex,
                nq as i64,
                queries.as_ptr(),
                want as i64,
                distances.as_mut_ptr(),
                labels.as_mut_ptr(),
            )
        };
        if status != 0 {
            return Err(IndexError::Faiss(format!("search failed with status {status}")));
        }
        let id_map = self.index.id_map();
        for label in &mut labels {
            *label = usize::try_from(*label)
                .ok()
                .and_then(|position| id_map.get(position))
                .and_then(|id| id.get())
                .map_or(-1, |id| id as i64);
        }
        Ok(labels
            .chunks_exact(want)
            .zip(distances.chunks_exact(want))
            .map(|(labels, scores)| {
                labels
                    .iter()
                    .zip(scores)
                    .filter(|(id, _)| **id >= 0 && !self.tombstones.contains(id))
                    .take(k)
                    .map(|(id, score)| (*id, *score))
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_are_idempotent_and_search_ranks_by_inner_product() {
        let mut index = VectorIndex::new(2).expect("index");
        assert_eq!(index.add(&[10, 11], &[1.0, 0.0, 0.0, 1.0]).expect("add"), 2);
        assert_eq!(index.add(&[10, 12], &[1.0, 0.0, 0.6, 0.8]).expect("add"), 1);
        assert_eq!(index.len(), 3);
        let hits = index.search(&[0.0, 1.0], 2).expect("search");
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![11, 12]);
        assert!((hits[0].1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn removed_vectors_are_never_found_again() {
        let mut index = VectorIndex::new(2).expect("index");
        index.add(&[1, 2, 3], &[1.0, 0.0, 0.0, 1.0, 0.7, 0.7]).expect("add");
        assert_eq!(index.remove(&[2, 99]).expect("remove"), 1);
        assert_eq!(index.len(), 2);
        assert!(!index.contains(2));
        let hits = index.search(&[0.0, 1.0], 3).expect("search");
        assert!(hits.iter().all(|h| h.0 != 2), "{hits:?}");
        // Added again (a re-upload gets new ids, but a replay may repeat): it comes back.
        assert_eq!(index.add(&[2], &[0.0, 1.0]).expect("add"), 1);
        assert_eq!(index.search(&[0.0, 1.0], 1).expect("search")[0].0, 2);
    }

    /// `n` unit vectors of `dims` around 8 centres (clustered, like embeddings of a corpus).
    fn clustered(n: usize, dims: usize) -> Vec<f32> {
        let mut state = 42u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..8).map(|_| (0..dims).map(|_| next()).collect()).collect();
        let mut out = Vec::with_capacity(n * dims);
        for i in 0..n {
            let start = out.len();
            out.extend(centres[i % 8].iter().map(|c| c + 0.3 * next()));
            crate::embed::normalize(&mut out[start..]);
        }
        out
    }

    #[test]
    fn ivf_and_hnsw_find_what_flat_finds_and_hnsw_filters_its_removals() {
        let (n, dims) = (2000, 16);
        let data = clustered(n, dims);
        let ids: Vec<i64> = (1..=n as i64).collect();
        let mut flat = VectorIndex::new(dims).expect("flat");
        flat.add(&ids, &data).expect("add");
        for kind in [IndexKind::Ivf { nlist: 16, nprobe: 16 }, IndexKind::Hnsw { m: 16, ef_search: 64 }] {
            let mut index = VectorIndex::with_kind(dims, kind).expect("index");
            index.train(&data).expect("train");
            assert_eq!(index.add(&ids, &data).expect("add"), n);
            let query = &data[..dims * 4];
            let want: Vec<Vec<i64>> =
                flat.search_many(query, 5).expect("flat").iter().map(|r| r.iter().map(|h| h.0).collect()).collect();
            let got: Vec<Vec<i64>> =
                index.search_many(query, 5).expect("search").iter().map(|r| r.iter().map(|h| h.0).collect()).collect();
            assert_eq!(got, want, "{kind:?} searching every cell / a wide beam is exact here");
            assert_eq!(index.remove(&[1, 2]).expect("remove"), 2);
            assert_eq!(index.len(), n - 2);
            let hits = index.search(&data[..dims], 10).expect("search");
            assert!(hits.len() == 10 && hits.iter().all(|h| h.0 != 1 && h.0 != 2), "{kind:?}: {hits:?}");
        }
        let mut untrained = VectorIndex::with_kind(dims, IndexKind::Ivf { nlist: 64, nprobe: 4 }).expect("ivf");
        assert!(untrained.train(&data[..dims * 10]).is_err(), "too few vectors for 64 cells");
    }

    #[test]
    fn written_indexes_read_back_with_their_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.faiss");
        let mut index = VectorIndex::new(2).expect("index");
        index.add(&[7, 9], &[1.0, 0.0, 0.0, 1.0]).expect("add");
        index.write(&path).expect("write");
        let back = VectorIndex::read(&path, IndexKind::Flat, HashSet::new()).expect("read");
        assert!(back.contains(7) && back.contains(9) && !back.contains(8));
        assert_eq!(back.search(&[1.0, 0.0], 1).expect("search")[0].0, 7);
    }
}
