//! One collection's FAISS index: an `IndexIDMap` over a flat inner-product index whose ids are
//! chunk ids, plus the set of ids it holds so that adds are idempotent (FAISS's `add_with_ids`
//! does not deduplicate).

use std::collections::HashSet;
use std::path::Path;

use faiss::index::IndexImpl;
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

/// Vectors of one collection, searchable by inner product.
pub struct VectorIndex {
    index: IdMap<IndexImpl>,
    ids: HashSet<i64>,
    dimensions: usize,
}

impl VectorIndex {
    /// An empty index of `dimensions`.
    ///
    /// # Errors
    /// FAISS cannot build the index.
    pub fn new(dimensions: usize) -> Result<Self, IndexError> {
        let dims = u32::try_from(dimensions).map_err(|_| IndexError::Faiss("dimension too large".into()))?;
        let flat = faiss::index_factory(dims, "Flat", MetricType::InnerProduct)?;
        Ok(Self { index: IdMap::new(flat)?, ids: HashSet::new(), dimensions })
    }

    /// Reads an index written by [`VectorIndex::write`].
    ///
    /// # Errors
    /// The file is not a FAISS ID-mapped index.
    pub fn read(path: &Path) -> Result<Self, IndexError> {
        let path = path.to_str().ok_or_else(|| IndexError::Snapshot("index path is not UTF-8".into()))?;
        let index = faiss::read_index(path)?.into_id_map()?;
        let ids = index.id_map().iter().filter_map(|id| id.get()).map(|id| id as i64).collect();
        let dimensions = index.d() as usize;
        Ok(Self { index, ids, dimensions })
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

    /// Vectors held.
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
    /// `vectors.len() != ids.len() * dimensions`, or FAISS fails.
    pub fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError> {
        if vectors.len() != ids.len() * self.dimensions {
            return Err(IndexError::Dimension {
                expected: self.dimensions,
                got: vectors.len().checked_div(ids.len()).unwrap_or(0),
            });
        }
        let mut new_ids = Vec::new();
        let mut new_vectors = Vec::new();
        for (id, vector) in ids.iter().zip(vectors.chunks_exact(self.dimensions)) {
            if !self.ids.contains(id) && !new_ids.contains(&Idx::new(*id as u64)) {
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

    /// Removes the vectors of `ids` that are present; returns how many were removed.
    ///
    /// # Errors
    /// FAISS fails.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        let present: Vec<Idx> = ids.iter().filter(|id| self.ids.contains(id)).map(|id| Idx::new(*id as u64)).collect();
        if present.is_empty() {
            return Ok(0);
        }
        let removed = self.index.remove_ids(&IdSelector::batch(&present)?)?;
        for id in ids {
            self.ids.remove(id);
        }
        Ok(removed)
    }

    /// The `k` nearest chunk ids with their scores, best first.
    ///
    /// # Errors
    /// Wrong query dimension or a FAISS failure.
    /// Takes `&mut self` because FAISS's generic index type offers no shared-reference search.
    pub fn search(&mut self, query: &[f32], k: usize) -> Result<Vec<(i64, f32)>, IndexError> {
        if query.len() != self.dimensions {
            return Err(IndexError::Dimension { expected: self.dimensions, got: query.len() });
        }
        if self.ids.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let result = self.index.search(query, k.min(self.ids.len()))?;
        Ok(result
            .labels
            .iter()
            .zip(result.distances.iter())
            .filter_map(|(label, score)| label.get().map(|id| (id as i64, *score)))
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

    #[test]
    fn written_indexes_read_back_with_their_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.faiss");
        let mut index = VectorIndex::new(2).expect("index");
        index.add(&[7, 9], &[1.0, 0.0, 0.0, 1.0]).expect("add");
        index.write(&path).expect("write");
        let mut back = VectorIndex::read(&path).expect("read");
        assert!(back.contains(7) && back.contains(9) && !back.contains(8));
        assert_eq!(back.search(&[1.0, 0.0], 1).expect("search")[0].0, 7);
    }
}
