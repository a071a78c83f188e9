//! A local BERT-family sentence-embedding model (e.g. all-MiniLM-L6-v2), run by our own
//! encoder — chosen by measurement over candle (4× slower than PyTorch on real chunk sizes) and
//! ONNX Runtime (needs an ONNX export the model directories do not ship); see
//! `benches/local_embed.rs` and the README for figures.
//!
//! - [`model`]: loads and checks a model directory.
//! - [`encoder`]: the forward pass over packed (unpadded) batches.
//! - [`kernels`]: GEMM through the `gemm` crate and the vectorised element-wise steps.
//!
//! Inference never runs on the async threads: [`LocalEmbedder`] feeds a small pool of
//! dedicated threads (one per core by default, each running single-threaded products), splitting a
//! request into length-sorted sub-batches so both cores work on one request.

pub mod encoder;
pub mod kernels;
pub mod model;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{EmbedError, Embedder};
use encoder::Encoder;
use model::{ModelError, ModelFiles, Weights};

/// Token rows per sub-batch at most. Measured (benches/local_embed.rs): 512 is as fast as
/// 4096 (GEMMs of ~500 rows already run near peak, and the activations stay in cache) and keeps
/// a query's wait behind a running sub-batch under ~0.1 s instead of ~1 s.
const SUB_BATCH_TOKENS: usize = 512;

type Job = (Vec<Vec<u32>>, oneshot::Sender<std::thread::Result<Vec<Vec<f32>>>>);

/// Embeds texts with a model directory's weights on dedicated inference threads.
pub struct LocalEmbedder {
    model_id: String,
    dimensions: usize,
    /// Longest sequence the model accepts, special tokens included.
    max_seq_length: usize,
    tokenizer: Arc<tokenizers::Tokenizer>,
    threads: usize,
    /// Bulk work (ingest batches).
    jobs: crossbeam_channel::Sender<Job>,
    /// Single texts (queries): a free thread takes these first, so a query never waits behind
    /// the queued sub-batches of a large ingest, only behind the one a thread is running.
    urgent: crossbeam_channel::Sender<Job>,
}

impl LocalEmbedder {
    /// Loads the model in `dir` and starts `threads` inference threads (0 = one per core).
    ///
    /// # Errors
    /// The directory cannot be loaded ([`model::ModelError`], naming the file and the fix).
    pub fn load(dir: &Path, model_id: &str, threads: usize) -> Result<Self, ModelError> {
        let ModelFiles { weights, tokenizer, max_seq_length } = ModelFiles::load(dir)?;
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, usize::from) } else { threads };
        let dimensions = weights.config.hidden_size;
        let weights = Arc::new(weights);
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let (urgent, urgent_queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let (weights, queue, urgent_queue) = (Arc::clone(&weights), queue.clone(), urgent_queue.clone());
            std::thread::Builder::new()
                .name(format!("embed-local-{i}"))
                .spawn(move || inference_thread(&weights, &urgent_queue, &queue))
                .map_err(|e| ModelError::new(dir, format!("cannot start an inference thread: {e}")))?;
        }
        tracing::info!(model = model_id, dir = %dir.display(), dimensions, max_seq_length, threads, "local embedding model loaded");
        Ok(Self {
            model_id: model_id.to_owned(),
            dimensions,
            max_seq_length,
            tokenizer: Arc::new(tokenizer),
            threads,
            jobs,
            urgent,
        })
    }

    /// Tokenize (on the blocking pool), sort by length, cut into sub-batches, run them on the
    /// inference threads, put the vectors back in input order.
    async fn run(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (tokenizer, owned, max_seq) = (Arc::clone(&self.tokenizer), texts.to_vec(), self.max_seq_length);
        let mut ids: Vec<Vec<u32>> = tokio::task::spawn_blocking(move || {
            owned.iter().map(|t| encode(&tokenizer, t, max_seq)).collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| EmbedError::permanent("local_model", format!("tokenizing failed: {e}")))??;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        // Split so every thread gets work, but no sub-batch exceeds SUB_BATCH_TOKENS.
        let total: usize = ids.iter().map(Vec::len).sum();
        let budget = total.div_ceil(self.threads).clamp(1, SUB_BATCH_TOKENS);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut used = usize::MAX;
        for i in order {
            let len = ids[i].len();
            if used.saturating_add(len) > budget {
                batches.push(Vec::new());
                used = 0;
            }
            batches.last_mut().expect("pushed above").push(i);
            used += len;
        }
        let mut pending = Vec::with_capacity(batches.len());
        for batch in &batches {
            let (tx, rx) = oneshot::channel();
            let sequences = batch.iter().map(|&i| std::mem::take(&mut ids[i])).collect();
            let lane = if texts.len() == 1 { &self.urgent } else { &self.jobs };
            lane.send((sequences, tx))
                .map_err(|_| EmbedError::permanent("local_model", "the inference threads have stopped"))?;
            pending.push(rx);
        }
        let mut vectors = vec![Vec::new(); texts.len()];
        for (batch, rx) in batches.iter().zip(pending) {
            let result = rx.await.map_err(|_| EmbedError::permanent("local_model", "an inference thread stopped"))?;
            let batch_vectors =
                result.map_err(|_| EmbedError::permanent("local_model", "the local model panicked (see the log)"))?;
            for (&i, v) in batch.iter().zip(batch_vectors) {
                vectors[i] = v;
            }
        }
        Ok(vectors)
    }
}

/// Token ids of `text` with the special tokens, truncated to `max_seq` tokens.
fn encode(tokenizer: &tokenizers::Tokenizer, text: &str, max_seq: usize) -> Result<Vec<u32>, EmbedError> {
    // `encode_fast` skips the character offsets nobody reads here.
    let encoding = tokenizer
        .encode_fast(text, true)
        .map_err(|e| EmbedError::permanent("local_model", format!("tokenizing failed: {e}")))?;
    let ids = encoding.get_ids();
    if ids.len() <= max_seq {
        return Ok(ids.to_vec());
    }
    // Keep the leading tokens and the final [SEP].
    let mut kept = ids[..max_seq - 1].to_vec();
    kept.push(*ids.last().expect("non-empty"));
    Ok(kept)
}

fn inference_thread(
    weights: &Weights,
    urgent: &crossbeam_channel::Receiver<Job>,
    bulk: &crossbeam_channel::Receiver<Job>,
) {
    let mut encoder = Encoder::default();
    loop {
        // Urgent work first whenever both lanes have some.
        let job = crossbeam_channel::select_biased! {
            recv(urgent) -> job => job,
            recv(bulk) -> job => job,
        };
        let Ok((sequences, reply)) = job else { return };
        if reply.is_closed() {
            continue; // the caller gave up (a query past its deadline): skip the work
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoder.embed(weights, &sequences)));
        if result.is_err() {
            // The scratch buffers may be half-written; start clean.
            encoder = Encoder::default();
        }
        let _ = reply.send(result);
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.tokenizer.encode_fast(text, false).map_or_else(|_| super::tokens::estimate(text), |e| e.len())
    }

    fn split_tokens(&self, text: &str, max_tokens: usize) -> Vec<String> {
        let Ok(encoding) = self.tokenizer.encode(text, false) else {
            return super::tokens::split_estimated(text, max_tokens);
        };
        let offsets = encoding.get_offsets();
        let max_tokens = max_tokens.max(1);
        let mut pieces = Vec::new();
        let mut start = 0;
        for chunk in offsets.chunks(max_tokens).skip(1) {
            // Cut where the next piece's first token begins (a byte offset into `text`).
            let cut = chunk[0].0;
            if cut > start && text.is_char_boundary(cut) {
                pieces.push(text[start..cut].to_owned());
                start = cut;
            }
        }
        pieces.push(text[start..].to_owned());
        pieces
    }

    fn max_input_tokens(&self) -> Option<usize> {
        // Room for [CLS] and [SEP].
        Some(self.max_seq_length - 2)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.run(texts).await
    }
}
