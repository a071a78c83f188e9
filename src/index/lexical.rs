//! The lexical leg of retrieval: a BM25 index per collection, in memory, derived from the store
//! like FAISS is. It is built by replaying the collection's change log from the start (the
//! texts of added chunks come from the store, which already leaves out deleted ones) and follows
//! the log before every search (one read of its tail), so it sees every add and delete the
//! moment they commit — one engine, the same on PostgreSQL and SQLite.
//!
//! Scoring is Okapi BM25 as Lucene computes it (`idf = ln(1 + (N − df + 0.5) / (df + 0.5))`),
//! with k1 = 0.9 and b = 0.4 (Anserini's defaults, behind BEIR's BM25 baselines), over
//! lower-cased Unicode words without English stopwords, stemmed with the Snowball English stemmer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

use crate::store::{Collection, LogOp, Store, StoreError};

const K1: f32 = 0.9;
const B: f32 = 0.4;
/// Log entries read per step of a catch-up.
const LOG_PAGE: i64 = 500;

/// Lucene's English stopwords.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
];

/// The terms of `text`, in order (repeats kept).
pub fn analyze(text: &str) -> Vec<String> {
    thread_local! {
        static STEMMER: Stemmer = Stemmer::create(Algorithm::English);
    }
    STEMMER.with(|stemmer| {
        text.unicode_words()
            .map(str::to_lowercase)
            .filter(|w| !STOPWORDS.contains(&w.as_str()))
            .map(|w| stemmer.stem(&w).into_owned())
            .collect()
    })
}

/// One collection's inverted index. Chunks live in dense slots (a re-added chunk gets a new one),
/// so a search accumulates scores in an array instead of a map.
#[derive(Default)]
pub struct Bm25 {
    terms: HashMap<String, u32>,
    /// Per term: (slot, term frequency), for live and dead slots alike (dead ones are skipped).
    postings: Vec<Vec<(u32, u32)>>,
    /// Per term: live chunks containing it.
    df: Vec<u32>,
    /// Per slot: the chunk id, its length in terms, and its distinct terms (empty once dead).
    slots: Vec<ChunkSlot>,
    /// Live chunk id → slot.
    slot_of: HashMap<i64, u32>,
    total_length: u64,
    /// The last log entry applied.
    applied: i64,
}

struct ChunkSlot {
    id: i64,
    length: u32,
    live: bool,
    terms: Vec<u32>,
}

impl Bm25 {
    /// Indexes a chunk (a no-op if it is indexed already).
    pub fn add(&mut self, id: i64, text: &str) {
        if self.slot_of.contains_key(&id) {
            return;
        }
        let words = analyze(text);
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for word in &words {
            *counts.entry(word).or_default() += 1;
        }
        let slot = self.slots.len() as u32;
        let mut terms = Vec::with_capacity(counts.len());
        for (word, tf) in counts {
            let next = self.terms.len() as u32;
            let term = *self.terms.entry(word.to_owned()).or_insert(next);
            if term as usize == self.postings.len() {
                self.postings.push(Vec::new());
                self.df.push(0);
            }
            self.postings[term as usize].push((slot, tf));
            self.df[term as usize] += 1;
            terms.push(term);
        }
        self.slots.push(ChunkSlot { id, length: words.len() as u32, live: true, terms });
        self.slot_of.insert(id, slot);
        self.total_length += words.len() as u64;
    }

    /// Forgets a chunk (its slot stays, dead, until the index is rebuilt at the next start).
    pub fn remove(&mut self, id: i64) {
        let Some(slot) = self.slot_of.remove(&id) else { return };
        let slot = &mut self.slots[slot as usize];
        slot.live = false;
        for term in std::mem::take(&mut slot.terms) {
            self.df[term as usize] -= 1;
        }
        self.total_length -= u64::from(slot.length);
    }

    /// Live chunks.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// Whether no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// The `k` best chunks for `query` with their BM25 scores, best first (ties by id).
    pub fn search(&self, query: &str, k: usize) -> Vec<(i64, f32)> {
        let n = self.slot_of.len() as f32;
        if n == 0.0 || k == 0 {
            return Vec::new();
        }
        let average = self.total_length as f32 / n;
        let mut scores = vec![0f32; self.slots.len()];
        let unique: HashSet<String> = analyze(query).into_iter().collect();
        for word in unique {
            let Some(&term) = self.terms.get(&word) else { continue };
            let df = self.df[term as usize] as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(slot, tf) in &self.postings[term as usize] {
                let doc = &self.slots[slot as usize];
                if doc.live {
                    let tf = tf as f32;
                    let norm = K1 * (1.0 - B + B * doc.length as f32 / average);
                    scores[slot as usize] += idf * tf * (K1 + 1.0) / (tf + norm);
                }
            }
        }
        let mut ranked: Vec<(i64, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, score)| **score > 0.0)
            .map(|(slot, score)| (self.slots[slot].id, *score))
            .collect();
        let order = |a: &(i64, f32), b: &(i64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if ranked.len() > k {
            ranked.select_nth_unstable_by(k, order);
            ranked.truncate(k);
        }
        ranked.sort_by(order);
        ranked
    }
}

/// The BM25 indexes of this process, one per collection, each following its change log.
pub struct LexicalIndexes {
    store: Arc<dyn Store>,
    open: std::sync::Mutex<HashMap<i64, Arc<Slot>>>,
}

struct Slot {
    index: RwLock<Bm25>,
    /// Serialises catch-ups of this collection.
    catching_up: tokio::sync::Mutex<()>,
}

impl LexicalIndexes {
    /// Indexes over `store`'s chunks.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, open: std::sync::Mutex::new(HashMap::new()) }
    }

    /// The `k` best chunks of `collection` for `query`, after applying every log entry up to
    /// `seen` (the first call replays the whole log). `seen` is a change-log position the caller
    /// read after its query arrived: an index that has applied it reflects every commit before
    /// the query, and reads nothing from the store; one behind it reads the log to its end.
    ///
    /// # Errors
    /// The store is unavailable.
    pub async fn search(
        &self,
        collection: &Collection,
        query: &str,
        k: usize,
        seen: i64,
    ) -> Result<Vec<(i64, f32)>, StoreError> {
        let slot = {
            let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            open.entry(collection.id)
                .or_insert_with(|| {
                    Arc::new(Slot { index: RwLock::new(Bm25::default()), catching_up: tokio::sync::Mutex::new(()) })
                })
                .clone()
        };
        let applied = slot.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).applied;
        if applied < seen {
            self.catch_up(collection.id, &slot).await?;
        }
        let (slot, query) = (slot.clone(), query.to_owned());
        Ok(tokio::task::spawn_blocking(move || {
            slot.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).search(&query, k)
        })
        .await
        .unwrap_or_default())
    }

    async fn catch_up(&self, collection_id: i64, slot: &Slot) -> Result<(), StoreError> {
        let _one = slot.catching_up.lock().await;
        loop {
            let applied = slot.index.read().unwrap_or_else(std::sync::PoisonError::into_inner).applied;
            let entries = self.store.log_after(collection_id, applied, LOG_PAGE).await?;
            let Some(last) = entries.last().map(|e| e.seq) else { return Ok(()) };
            let added: Vec<i64> =
                entries.iter().filter(|e| e.op == LogOp::Add).flat_map(|e| e.chunk_ids.iter().copied()).collect();
            // Only live chunks come back: an add whose chunk was deleted since is skipped, and
            // its remove (later in the log) finds nothing.
            let texts = if added.is_empty() { Vec::new() } else { self.store.fetch_chunks(&added).await? };
            let texts: HashMap<i64, String> = texts.into_iter().map(|hit| (hit.chunk_id, hit.text)).collect();
            {
                let mut index = slot.index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                for entry in &entries {
                    for id in &entry.chunk_ids {
                        match entry.op {
                            LogOp::Add => {
                                if let Some(text) = texts.get(id) {
                                    index.add(*id, text);
                                }
                            }
                            LogOp::Remove => index.remove(*id),
                        }
                    }
                }
                index.applied = last;
            }
            if (entries.len() as i64) < LOG_PAGE {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_lowercases_stems_and_drops_stopwords() {
        assert_eq!(analyze("The Herons were nesting in the Trees"), vec!["heron", "were", "nest", "tree"]);
    }

    #[test]
    fn bm25_ranks_rare_terms_and_short_documents_higher_and_forgets_removed_chunks() {
        let mut index = Bm25::default();
        index.add(1, "grey herons nest in tall trees by the lake");
        index.add(2, "the lake is cold; the lake is deep; the lake is wide and the lake is old");
        index.add(3, "herons and egrets");
        index.add(3, "added twice: ignored");
        assert_eq!(index.len(), 3);
        let hits = index.search("heron lake", 3);
        // Both terms beat one; four "lake"s in a longer chunk beat one "heron" in a short one.
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 2, 3], "{hits:?}");
        // Lucene's formula on chunk 3 ("heron egret": 2 terms):
        assert_eq!(index.slots[index.slot_of[&3] as usize].length, 2);
        let (n, df, avg) = (3.0f32, 2.0f32, index.total_length as f32 / 3.0);
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        let want = idf * 1.0 * (K1 + 1.0) / (1.0 + K1 * (1.0 - B + B * 2.0 / avg));
        let got = index.search("heron", 3).into_iter().find(|h| h.0 == 3).map(|h| h.1).unwrap_or_default();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        index.remove(1);
        assert_eq!(index.search("heron", 3).iter().map(|h| h.0).collect::<Vec<_>>(), vec![3]);
        // Restored (same id, same text): scored as if it had never left, its old postings ignored.
        let before = index.search("lake", 3);
        index.add(1, "grey herons nest in tall trees by the lake");
        index.remove(1);
        assert_eq!(index.search("lake", 3), before);
        index.add(1, "grey herons nest in tall trees by the lake");
        let mut fresh = Bm25::default();
        fresh.add(2, "the lake is cold; the lake is deep; the lake is wide and the lake is old");
        fresh.add(3, "herons and egrets");
        fresh.add(1, "grey herons nest in tall trees by the lake");
        assert_eq!(index.search("heron lake", 3), fresh.search("heron lake", 3));
        assert!(index.search("unknownword", 3).is_empty());
    }
}
