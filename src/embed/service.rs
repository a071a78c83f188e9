//! [`EmbeddingService`]: the one place with the embedding policy, used by the ingest
//! pipeline's embed stage and by the query worker.
//!
//! ```text
//! texts ─▶ long inputs (split/truncate) ─▶ dedup ─▶ cache (model + sha256, one MGET)
//!       ─▶ misses packed into requests (batch_size, max_tokens_per_request)
//!       ─▶ per request: concurrency permit ─▶ rate governor ─▶ provider call, retried
//!          (a context-length refusal splits the request in halves, isolating the bad input)
//!       ─▶ cache store ─▶ one result per text
//! ```
//!
//! Results are per input, so one bad input (or one failed request) fails only the documents
//! it belongs to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};

use super::governor::Governor;
use super::plan::{Input, Plan, pack};
use super::retry::RetryPolicy;
use super::{EmbedError, Embedder};
use crate::cache::Cache;
use crate::config::{CacheSettings, EmbedderSettings, LongInputs};
use crate::telemetry::metrics;

/// A vector, or why this input has none.
pub type EmbedResult = Result<Vec<f32>, EmbedError>;

/// Request-shaping limits of `[embedder]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Inputs per request at most.
    pub batch_size: usize,
    /// Tokens per request at most.
    pub max_tokens_per_request: usize,
    /// Longest input sent, in tokens (the smaller of the setting and the model's own limit).
    pub max_input_tokens: usize,
    /// What happens to longer inputs.
    pub long_inputs: LongInputs,
    /// Requests in flight at once.
    pub max_concurrent_requests: usize,
}

/// An [`Embedder`] wrapped with caching, dedup, rate budgets, bounded concurrency and retries.
pub struct EmbeddingService {
    embedder: Arc<dyn Embedder>,
    cache: Arc<dyn Cache>,
    governor: Governor,
    permits: Semaphore,
    retry: RetryPolicy,
    limits: Limits,
    cache_ttl: Duration,
    /// US dollars per 1,000 tokens sent, for the cost metric.
    price_per_1k_tokens: f64,
    /// Cache keys being embedded right now, with where their result will appear: a text that
    /// misses the cache while another call is already embedding it waits for that call instead
    /// of being sent twice (identical chunks of documents ingested at the same time).
    in_flight: Mutex<InFlight>,
}

/// Cache key → where its result will appear, for texts being embedded right now.
type InFlight = HashMap<String, Pending>;

/// Where the result of an in-flight text will appear (`None` until it does).
type Pending = watch::Receiver<Option<EmbedResult>>;

/// The promise to publish results for some in-flight keys. Dropping it (the call finished or
/// was cancelled) removes the keys, so waiters of a cancelled call see the channel close and
/// embed the text themselves.
struct Claim<'a> {
    in_flight: &'a Mutex<InFlight>,
    /// (index into the call's keys, key, where its result goes).
    senders: Vec<(usize, String, watch::Sender<Option<EmbedResult>>)>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, key, _) in &self.senders {
            map.remove(key);
        }
    }
}

impl EmbeddingService {
    /// Wraps `embedder` with the policy of `settings`, caching in `cache` for `cache_ttl`.
    pub fn new(
        embedder: Arc<dyn Embedder>,
        cache: Arc<dyn Cache>,
        governor: Governor,
        settings: &EmbedderSettings,
        cache_ttl: Duration,
    ) -> Self {
        let limits = Limits {
            batch_size: settings.batch_size.max(1),
            max_tokens_per_request: settings.max_tokens_per_request.max(1),
            max_input_tokens: embedder
                .max_input_tokens()
                .map_or(settings.max_input_tokens, |m| m.min(settings.max_input_tokens))
                .max(1),
            long_inputs: settings.long_inputs,
            max_concurrent_requests: settings.max_concurrent_requests.max(1),
        };
        Self {
            permits: Semaphore::new(limits.max_concurrent_requests),
            retry: RetryPolicy::from_settings(settings),
            embedder,
            cache,
            governor,
            limits,
            cache_ttl,
            price_per_1k_tokens: settings.price_per_1k_tokens(),
            in_flight: Mutex::default(),
        }
    }

    /// The provider `[embedder]` asks for (through [`super::from_settings`]) with the governor
    /// `[cache]` implies, caching embeddings in `cache`.
    ///
    /// # Errors
    /// The provider cannot be set up.
    pub fn from_settings(
        embedder: &EmbedderSettings,
        cache_settings: &CacheSettings,
        cache: Arc<dyn Cache>,
    ) -> Result<Self, EmbedError> {
        let provider = super::from_settings(embedder)?;
        let governor = Governor::from_settings(embedder, cache_settings);
        Ok(Self::new(provider, cache, governor, embedder, Duration::from_secs(cache_settings.embedding_ttl_secs)))
    }

    /// The wrapped provider (model id, dimensions).
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The request-shaping limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// `text` with its token count (CPU work: call off the async threads for many texts).
    pub fn input(&self, text: String) -> Input {
        Input { tokens: self.embedder.count_tokens(&text), text }
    }

    /// Tokens `input` adds to a request once long-input handling is done, for batching.
    pub fn request_tokens(&self, input: &Input) -> usize {
        match self.limits.long_inputs {
            LongInputs::Truncate => input.tokens.min(self.limits.max_input_tokens),
            LongInputs::Split => input.tokens.min(self.limits.max_tokens_per_request),
        }
    }

    /// The vector of one text (a query), through the cache.
    ///
    /// # Errors
    /// The provider's failure after retries.
    pub async fn embed_one(&self, text: &str) -> EmbedResult {
        let input = self.input(text.to_owned());
        self.embed_inputs(std::slice::from_ref(&input))
            .await
            .pop()
            .unwrap_or_else(|| Err(EmbedError::transient("no result")))
    }

    /// One result per text, in order.
    pub async fn embed(&self, texts: &[String]) -> Vec<EmbedResult> {
        let inputs: Vec<Input> = texts.iter().map(|t| self.input(t.clone())).collect();
        self.embed_inputs(&inputs).await
    }

    /// One result per input, in order.
    pub async fn embed_inputs(&self, inputs: &[Input]) -> Vec<EmbedResult> {
        let embedder = &self.embedder;
        let split = |text: &str, max: usize| -> Vec<Input> {
            embedder
                .split_tokens(text, max)
                .into_iter()
                .map(|t| Input { tokens: embedder.count_tokens(&t), text: t })
                .collect()
        };
        let plan = Plan::new(inputs, self.limits.max_input_tokens, self.limits.long_inputs, split);
        let keys: Vec<String> = plan.unique.iter().map(|i| self.cache_key(&i.text)).collect();
        let mut vectors: Vec<Option<EmbedResult>> = self.cached(&keys).await.into_iter().map(|v| v.map(Ok)).collect();
        let misses: Vec<usize> = (0..vectors.len()).filter(|&i| vectors[i].is_none()).collect();
        // Texts another call is embedding right now are awaited, not sent again.
        let (misses, waiting, claim) = self.claim(&keys, misses);
        if !misses.is_empty() {
            let tokens: Vec<usize> = misses.iter().map(|&i| plan.unique[i].tokens).collect();
            let requests = pack(&tokens, self.limits.batch_size, self.limits.max_tokens_per_request);
            let batches: Vec<Vec<Input>> =
                requests.iter().map(|r| misses[r.clone()].iter().map(|&i| plan.unique[i].clone()).collect()).collect();
            let results = join_all(batches.iter().map(|batch| self.request(batch))).await;
            let mut fresh = Vec::new();
            for (&i, result) in misses.iter().zip(results.into_iter().flatten()) {
                if let Ok(vector) = &result {
                    fresh.push((keys[i].clone(), encode(vector)));
                }
                vectors[i] = Some(result);
            }
            self.cache.set_many(&fresh, self.cache_ttl).await;
        }
        for (i, _, sender) in &claim.senders {
            sender.send_replace(vectors[*i].clone());
        }
        drop(claim);
        let mut orphaned = Vec::new();
        for (i, mut receiver) in waiting {
            match receiver.wait_for(Option::is_some).await {
                Ok(result) => vectors[i] = result.clone(),
                // The other call was cancelled before it had a result: embed it here.
                Err(_) => orphaned.push(i),
            }
        }
        if !orphaned.is_empty() {
            let batch: Vec<Input> = orphaned.iter().map(|&i| plan.unique[i].clone()).collect();
            for (&i, result) in orphaned.iter().zip(self.request(&batch).await) {
                vectors[i] = Some(result);
            }
        }
        let vectors: Vec<EmbedResult> = vectors
            .into_iter()
            .map(|v| v.unwrap_or_else(|| Err(EmbedError::transient("a vector went missing"))))
            .collect();
        plan.assemble(&vectors)
    }

    /// Splits `misses` (indices into `keys`) into those this call embeds, now registered as in
    /// flight, and those another call is embedding, with the receiver to wait on.
    fn claim(&self, keys: &[String], misses: Vec<usize>) -> (Vec<usize>, Vec<(usize, Pending)>, Claim<'_>) {
        let mut map = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut mine = Vec::new();
        let mut waiting = Vec::new();
        let mut senders = Vec::new();
        for i in misses {
            if let Some(receiver) = map.get(&keys[i]) {
                waiting.push((i, receiver.clone()));
            } else {
                let (sender, receiver) = watch::channel(None);
                map.insert(keys[i].clone(), receiver);
                senders.push((i, keys[i].clone(), sender));
                mine.push(i);
            }
        }
        drop(map);
        (mine, waiting, Claim { in_flight: &self.in_flight, senders })
    }

    /// Cached vectors of `keys`; anything unreadable is a miss.
    async fn cached(&self, keys: &[String]) -> Vec<Option<Vec<f32>>> {
        let dims = self.embedder.dimensions();
        let found: Vec<Option<Vec<f32>>> =
            self.cache.get_many(keys).await.into_iter().map(|bytes| bytes.and_then(|b| decode(&b, dims))).collect();
        let hits = found.iter().filter(|v| v.is_some()).count() as u64;
        metrics::CACHE_LOOKUPS.with_label_values(&["embedding", "hit"]).inc_by(hits);
        metrics::CACHE_LOOKUPS.with_label_values(&["embedding", "miss"]).inc_by(keys.len() as u64 - hits);
        found
    }

    /// Model, dimension and the sha256 of the exact text sent: a new model or dimension never
    /// reads another's vectors.
    fn cache_key(&self, text: &str) -> String {
        let hash = Sha256::digest(text.as_bytes());
        format!("embedding:{}:{}:{}", self.embedder.model_id(), self.embedder.dimensions(), hex::encode(hash))
    }

    /// Embeds one request's inputs; a context-length refusal splits it in halves until the
    /// input that is too long stands alone and fails by itself.
    fn request<'a>(&'a self, batch: &'a [Input]) -> BoxFuture<'a, Vec<EmbedResult>> {
        async move {
            match self.call(batch).await {
                Ok(vectors) => vectors.into_iter().map(Ok).collect(),
                Err(EmbedError::ContextLength(_)) if batch.len() > 1 => {
                    let (left, right) = batch.split_at(batch.len() / 2);
                    let (mut a, b) = futures::join!(self.request(left), self.request(right));
                    a.extend(b);
                    a
                }
                Err(EmbedError::ContextLength(reason)) => {
                    let tokens = batch.first().map_or(0, |i| i.tokens);
                    let error = EmbedError::permanent(
                        "input_too_long",
                        format!(
                            "a text of {tokens} tokens is longer than the model accepts ({reason}); lower [embedder] \
                             max_input_tokens (now {}) so longer texts are split or truncated before they are sent",
                            self.limits.max_input_tokens
                        ),
                    );
                    vec![Err(error)]
                }
                Err(error) => vec![Err(error); batch.len()],
            }
        }
        .boxed()
    }

    /// One provider request with retries; every attempt holds a concurrency permit and takes
    /// its share of the rate budget.
    async fn call(&self, batch: &[Input]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let texts: Vec<String> = batch.iter().map(|i| i.text.clone()).collect();
        let tokens: u64 = batch.iter().map(|i| i.tokens as u64).sum();
        self.retry
            .run(|| async {
                let _permit =
                    self.permits.acquire().await.map_err(|_| EmbedError::transient("the service is shutting down"))?;
                self.governor.acquire(tokens).await;
                metrics::EMBED_BATCH.observe(texts.len() as f64);
                let result = self.embedder.embed(&texts).await.and_then(|vectors| {
                    if vectors.len() == texts.len() {
                        Ok(vectors)
                    } else {
                        Err(EmbedError::transient(format!(
                            "the provider returned {} vectors for {} inputs",
                            vectors.len(),
                            texts.len()
                        )))
                    }
                });
                let outcome = if result.is_ok() { "ok" } else { "error" };
                metrics::EMBED_REQUESTS.with_label_values(&[outcome]).inc();
                if result.is_ok() {
                    metrics::EMBED_INPUTS.inc_by(texts.len() as u64);
                    metrics::EMBED_TOKENS.inc_by(tokens);
                    metrics::EMBED_COST.inc_by(tokens as f64 / 1000.0 * self.price_per_1k_tokens);
                }
                result
            })
            .await
    }
}

/// Little-endian f32s, as the store keeps them.
fn encode(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode(bytes: &[u8], dims: usize) -> Option<Vec<f32>> {
    (bytes.len() == dims * 4)
        .then(|| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::cache::memory::MemoryCache;
    use crate::embed::governor::Budgets;
    use crate::embed::hash::HashEmbedder;

    /// Records every request; refuses any that holds a text containing "HUGE".
    struct Recording {
        inner: HashEmbedder,
        requests: Mutex<Vec<Vec<String>>>,
        inflight: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl Embedder for Recording {
        fn model_id(&self) -> &str {
            "recording"
        }
        fn dimensions(&self) -> usize {
            8
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
            let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            self.requests.lock().expect("lock").push(texts.to_vec());
            if texts.iter().any(|t| t.contains("HUGE")) {
                return Err(EmbedError::ContextLength("maximum context length".into()));
            }
            self.inner.embed(texts).await
        }
    }

    fn service(settings: &EmbedderSettings) -> (Arc<Recording>, EmbeddingService) {
        let recording = Arc::new(Recording {
            inner: HashEmbedder::new("recording", 8),
            requests: Mutex::new(Vec::new()),
            inflight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let governor = Governor::new(
            Budgets { requests_per_minute: 0, tokens_per_minute: 0 },
            "embedding",
            "m",
            &CacheSettings::default(),
        );
        let cache = Arc::new(MemoryCache::new(1000));
        let service = EmbeddingService::new(recording.clone(), cache, governor, settings, Duration::from_secs(60));
        (recording, service)
    }

    #[tokio::test(start_paused = true)]
    async fn a_context_length_refusal_isolates_the_long_input() {
        let settings = EmbedderSettings { batch_size: 8, ..EmbedderSettings::default() };
        let (recording, service) = service(&settings);
        let texts: Vec<String> =
            (0..8).map(|i| if i == 5 { "HUGE text".to_owned() } else { format!("text {i}") }).collect();
        let results = service.embed(&texts).await;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 5, "{i}: {r:?}");
        }
        assert!(matches!(&results[5], Err(EmbedError::Permanent { code: "input_too_long", .. })));
        // 8 → 4+4 → 2+2 → 1+1: seven requests, log2 deep.
        assert_eq!(recording.requests.lock().expect("lock").len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_respect_the_concurrency_limit_and_the_cache_serves_repeats() {
        let settings = EmbedderSettings { batch_size: 2, max_concurrent_requests: 3, ..EmbedderSettings::default() };
        let (recording, service) = service(&settings);
        let texts: Vec<String> = (0..40).map(|i| format!("text {i}")).collect();
        assert!(service.embed(&texts).await.iter().all(Result::is_ok));
        assert_eq!(recording.peak.load(Ordering::SeqCst), 3);
        assert_eq!(recording.requests.lock().expect("lock").len(), 20);
        assert!(service.embed(&texts).await.iter().all(Result::is_ok));
        assert_eq!(recording.requests.lock().expect("lock").len(), 20, "all served from the cache");
    }
}
