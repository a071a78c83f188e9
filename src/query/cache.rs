//! The query caches: retrieval results (chunks) and whole responses (answer and chunks), beside
//! the embedding cache of [`crate::embed::service`] — the seed article's three layers. Keys hold
//! a hash of everything that changes the result, including the collection's **change-log
//! position** and **index generation**: a new or deleted document moves the position, so it
//! changes the key at once instead of waiting for a TTL. A result is stored only when the index
//! it came from had applied the log up to that position (a replica still catching up computes
//! fresh results but does not cache them under a position it has not reached).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::config::{CacheSettings, LlmSettings, QuerySettings};
use crate::messages::{QueryRequest, QueryResponse, ResultChunk};
use crate::telemetry::metrics;

/// Bumped when the meaning of a cached value changes.
const FORMAT: u32 = 1;

/// What a retrieval's result depends on.
#[derive(Serialize)]
pub struct RetrievalInputs<'a> {
    /// Collections searched, each with its change-log position when the query arrived and its
    /// index generation.
    pub collections: &'a [(String, i64, u64)],
    /// Embedding model and dimension of the query vector.
    pub model: &'a str,
    /// Dimension of the vectors.
    pub dimensions: usize,
    /// The query text (trimmed).
    pub query: &'a str,
    /// Results asked for.
    pub top_k: usize,
    /// Candidates fetched per result.
    pub candidate_factor: usize,
    /// Score floor (its bits: floats have no `Eq`).
    pub min_score: Option<u32>,
    /// Metadata filters.
    pub filters: &'a Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// Retrieval mode.
    pub mode: &'a str,
    /// Fusion constant (hybrid).
    pub rrf_k: u32,
    /// Documents the chunks come from (hierarchical mode; 0 in the others).
    pub documents: usize,
}

/// What an answer depends on beyond its retrieval.
#[derive(Serialize)]
struct AnswerInputs<'a> {
    retrieval: &'a str,
    llm: &'a str,
    model: &'a str,
    prompt_version: u32,
    max_tokens: u32,
    temperature: u32,
    context_tokens: usize,
    answer_sentences: usize,
    min_citation_support: u64,
}

/// The keys of one request.
pub struct Keys {
    /// Of its chunks.
    pub retrieval: String,
    /// Of its whole response, when it asks for an answer.
    pub response: Option<String>,
}

impl Keys {
    /// The keys of `request` with retrieval inputs `inputs`.
    pub fn new(inputs: &RetrievalInputs<'_>, request: &QueryRequest, query: &QuerySettings, llm: &LlmSettings) -> Self {
        let retrieval = format!("retrieval:{FORMAT}:{}", digest(inputs));
        let response = (request.answer == Some(true)).then(|| {
            let answer = AnswerInputs {
                retrieval: &retrieval,
                llm: llm.kind.as_str(),
                model: &llm.model,
                prompt_version: crate::llm::PROMPT_VERSION,
                max_tokens: llm.max_tokens,
                temperature: llm.temperature.to_bits(),
                context_tokens: query.context_tokens,
                answer_sentences: query.answer_sentences,
                min_citation_support: query.min_citation_support.to_bits(),
            };
            format!("response:{FORMAT}:{}", digest(&answer))
        });
        Self { retrieval, response }
    }
}

fn digest(value: &impl Serialize) -> String {
    // Serialising plain structs, strings and JSON values cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// The retrieval and response caches over the process's [`Cache`] (Redis or in-process).
pub struct QueryCache {
    cache: Arc<dyn Cache>,
    retrieval_ttl: Duration,
    response_ttl: Duration,
}

impl QueryCache {
    /// Caches in `cache` with the TTLs of `settings`.
    pub fn new(cache: Arc<dyn Cache>, settings: &CacheSettings) -> Self {
        Self {
            cache,
            retrieval_ttl: Duration::from_secs(settings.retrieval_ttl_secs),
            response_ttl: Duration::from_secs(settings.response_ttl_secs),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, layer: &str, key: &str) -> Option<T> {
        // An entry that no longer decodes (an older format) is a miss, never an error.
        let found = self.cache.get(key).await.and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::CACHE_LOOKUPS.with_label_values(&[layer, result]).inc();
        found
    }

    /// The cached chunks of a retrieval.
    pub async fn chunks(&self, keys: &Keys) -> Option<Vec<ResultChunk>> {
        self.get("retrieval", &keys.retrieval).await
    }

    /// The cached response of a request that asked for an answer.
    pub async fn response(&self, keys: &Keys) -> Option<QueryResponse> {
        match &keys.response {
            Some(key) => self.get("response", key).await,
            None => None,
        }
    }

    /// Caches a retrieval's chunks.
    pub async fn put_chunks(&self, keys: &Keys, chunks: &[ResultChunk]) {
        if let Ok(bytes) = serde_json::to_vec(chunks) {
            self.cache.set(&keys.retrieval, bytes, self.retrieval_ttl).await;
        }
    }

    /// Caches a whole response.
    pub async fn put_response(&self, keys: &Keys, response: &QueryResponse) {
        if let (Some(key), Ok(bytes)) = (&keys.response, serde_json::to_vec(response)) {
            self.cache.set(key, bytes, self.response_ttl).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::CollectionName;

    fn inputs<'a>(
        query: &'a str,
        collections: &'a [(String, i64, u64)],
        filters: &'a Option<std::collections::BTreeMap<String, serde_json::Value>>,
    ) -> RetrievalInputs<'a> {
        RetrievalInputs {
            collections,
            model: "m",
            dimensions: 384,
            query,
            top_k: 5,
            candidate_factor: 2,
            min_score: None,
            filters,
            mode: "dense",
            rrf_k: 60,
            documents: 0,
        }
    }

    #[test]
    fn every_input_that_changes_a_result_changes_its_key() {
        let (query, llm) = (QuerySettings::default(), LlmSettings::default());
        let mut request = QueryRequest::new("q", CollectionName::new("c").expect("name"), 5);
        let none = None;
        let (at7, at8) = (vec![("c".to_owned(), 7, 1)], vec![("c".to_owned(), 8, 1)]);
        let base = Keys::new(&inputs("q", &at7, &none), &request, &query, &llm);
        assert!(base.response.is_none(), "no answer asked: no response key");
        assert_eq!(base.retrieval, Keys::new(&inputs("q", &at7, &none), &request, &query, &llm).retrieval);
        assert_ne!(
            base.retrieval,
            Keys::new(&inputs("q", &at8, &none), &request, &query, &llm).retrieval,
            "log position"
        );
        let two = vec![("c".to_owned(), 7, 1), ("d".to_owned(), 3, 1)];
        assert_ne!(
            base.retrieval,
            Keys::new(&inputs("q", &two, &none), &request, &query, &llm).retrieval,
            "collections"
        );
        assert_ne!(base.retrieval, Keys::new(&inputs("r", &at7, &none), &request, &query, &llm).retrieval, "query");
        let filters = Some([("team".to_owned(), serde_json::json!("ops"))].into());
        assert_ne!(
            base.retrieval,
            Keys::new(&inputs("q", &at7, &filters), &request, &query, &llm).retrieval,
            "filters"
        );
        request.answer = Some(true);
        let answered = Keys::new(&inputs("q", &at7, &none), &request, &query, &llm);
        let other_model = LlmSettings { model: "other".into(), ..LlmSettings::default() };
        let other = Keys::new(&inputs("q", &at7, &none), &request, &query, &other_model);
        assert_eq!(answered.retrieval, other.retrieval, "the same chunks serve both models");
        assert_ne!(answered.response, other.response, "answers of another model");
        let tighter = QuerySettings { context_tokens: 1000, ..QuerySettings::default() };
        assert_ne!(answered.response, Keys::new(&inputs("q", &at7, &none), &request, &tighter, &llm).response);
    }
}
