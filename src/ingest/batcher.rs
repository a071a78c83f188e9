//! The embed stage: batches chunks **across documents** and routes the vectors back.
//!
//! A batch is sent when it holds `batch_size` inputs, or when the next input would take it over
//! `max_tokens_per_request`, or when its oldest input has waited `max_wait_ms`, or (with
//! `send_when_idle`) when no request is in flight, or when intake has ended. At most `max_concurrent_requests` batches are in flight; while they are, intake
//! pauses once enough inputs are queued (backpressure). Results come back per input, so a
//! failure fails only the documents it touches. A document leaves the stage when all its
//! vectors are back, in chunk order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::finish::Finisher;
use super::stages::Embedded;
use super::{Failed, Work};
use crate::app::IngestContext;
use crate::chunk::Chunk;
use crate::embed::plan::{Input, batch_len};
use crate::embed::service::{EmbedResult, EmbeddingService};
use crate::error::Failure;

/// (document key, chunk index) of one input in a batch.
type Slot = (u64, usize);
type BatchResult = (Vec<Slot>, Vec<EmbedResult>);

struct Pending {
    work: Work<Vec<Chunk>>,
    vectors: Vec<Option<Vec<f32>>>,
    remaining: usize,
    failure: Option<Failure>,
    /// Counts the document in the embed stage until it leaves (dropped with this entry).
    _timer: crate::telemetry::metrics::StageTimer,
}

/// Inputs waiting for a batch, in arrival order, with their request tokens and arrival time.
struct BatchQueue<T> {
    items: VecDeque<(T, usize, Instant)>,
    batch_size: usize,
    max_tokens: usize,
}

impl<T> BatchQueue<T> {
    fn new(batch_size: usize, max_tokens: usize) -> Self {
        Self { items: VecDeque::new(), batch_size, max_tokens }
    }

    fn push(&mut self, item: T, tokens: usize, at: Instant) {
        self.items.push_back((item, tokens, at));
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn next_len(&self) -> usize {
        batch_len(self.items.iter().map(|(_, t, _)| *t), self.batch_size, self.max_tokens)
    }

    /// Whether the front batch is closed: by count, or because the next input does not fit.
    fn has_full_batch(&self) -> bool {
        let n = self.next_len();
        n > 0 && (n == self.batch_size || n < self.items.len())
    }

    fn oldest(&self) -> Option<Instant> {
        self.items.front().map(|(_, _, at)| *at)
    }

    fn pop_batch(&mut self) -> Vec<T> {
        let n = self.next_len();
        self.items.drain(..n).map(|(item, _, _)| item).collect()
    }
}

struct Batcher {
    service: Arc<EmbeddingService>,
    pending: HashMap<u64, Pending>,
    queue: BatchQueue<(Slot, Input)>,
    next_key: u64,
    inflight: FuturesUnordered<BoxFuture<'static, BatchResult>>,
    max_wait: Duration,
    max_inflight: usize,
    send_when_idle: bool,
}

/// Runs the embed stage until its input closes and everything in it is settled.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Work<Vec<Chunk>>>,
    tx: mpsc::Sender<Work<Embedded>>,
    ctx: Arc<IngestContext>,
    finisher: Finisher,
) {
    let service = ctx.embedding.clone();
    let limits = service.limits();
    let mut b = Batcher {
        service,
        pending: HashMap::new(),
        queue: BatchQueue::new(limits.batch_size, limits.max_tokens_per_request),
        next_key: 0,
        inflight: FuturesUnordered::new(),
        max_wait: Duration::from_millis(ctx.embed_max_wait_ms),
        max_inflight: limits.max_concurrent_requests,
        send_when_idle: ctx.embed_send_when_idle,
    };
    let mut input_open = true;
    loop {
        while b.queue.has_full_batch() && b.inflight.len() < b.max_inflight {
            b.launch();
        }
        // Waiting for a fuller batch only pays while a request is in flight (inputs gather
        // behind it); an idle embedder takes what is queued now (`send_when_idle`). Otherwise
        // small documents each wait max_wait_ms, and the documents in flight (the prefetch)
        // cap throughput at prefetch / max_wait.
        let idle = b.send_when_idle && b.inflight.is_empty();
        if !b.queue.is_empty() && (idle || !input_open) && b.inflight.len() < b.max_inflight {
            b.launch();
        }
        if !input_open && b.queue.is_empty() && b.inflight.is_empty() {
            return;
        }
        // Enough queued to keep every request slot busy once: stop reading until some drain.
        let accept = input_open && b.queue.len() < limits.batch_size * (b.max_inflight + 1);
        let deadline = b.queue.oldest().map(|t| t + b.max_wait).filter(|_| b.inflight.len() < b.max_inflight);
        tokio::select! {
            Some((slots, results)) = b.inflight.next(), if !b.inflight.is_empty() => {
                for done in b.route(slots, results) {
                    b.settle(done, &tx, &finisher).await;
                }
            }
            item = rx.recv(), if accept => match item {
                Some(work) => {
                    if let Some(done) = b.enqueue(work).await {
                        b.settle(done, &tx, &finisher).await;
                    }
                }
                None => input_open = false,
            },
            () = sleep_until(deadline), if deadline.is_some() => b.launch(),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Batcher {
    /// Queues a document's chunks with their token counts; returns it at once if it has none.
    async fn enqueue(&mut self, work: Work<Vec<Chunk>>) -> Option<Pending> {
        let n = work.data.len();
        let texts: Vec<String> = work.data.iter().map(|c| c.text.clone()).collect();
        let _timer = crate::telemetry::metrics::stage("embed");
        let pending = Pending { vectors: vec![None; n], remaining: n, failure: None, work, _timer };
        if n == 0 {
            return Some(pending);
        }
        // Tokenising is CPU work: off the async threads.
        let service = self.service.clone();
        let inputs =
            tokio::task::spawn_blocking(move || texts.into_iter().map(|t| service.input(t)).collect::<Vec<_>>()).await;
        let inputs = match inputs {
            Ok(inputs) => inputs,
            Err(e) => {
                let mut pending = pending;
                pending.failure = Some(Failure::transient("internal", format!("token counting task: {e}")));
                return Some(pending);
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        let now = Instant::now();
        for (i, input) in inputs.into_iter().enumerate() {
            let tokens = self.service.request_tokens(&input);
            self.queue.push(((key, i), input), tokens, now);
        }
        self.pending.insert(key, pending);
        None
    }

    /// Sends the front batch.
    fn launch(&mut self) {
        let batch = self.queue.pop_batch();
        if batch.is_empty() {
            return;
        }
        let (slots, inputs): (Vec<Slot>, Vec<Input>) = batch.into_iter().unzip();
        let service = self.service.clone();
        self.inflight.push(
            async move {
                let results = service.embed_inputs(&inputs).await;
                (slots, results)
            }
            .boxed(),
        );
    }

    /// Stores a batch's vectors (or failures) with their documents; returns documents now complete.
    fn route(&mut self, slots: Vec<Slot>, results: Vec<EmbedResult>) -> Vec<Pending> {
        let mut done = Vec::new();
        let mut results = results.into_iter();
        for (key, i) in slots {
            let result =
                results.next().unwrap_or_else(|| Err(crate::embed::EmbedError::transient("no result for an input")));
            let Some(p) = self.pending.get_mut(&key) else { continue };
            match result {
                Ok(vector) => p.vectors[i] = Some(vector),
                Err(error) => {
                    p.failure.get_or_insert_with(|| error.into());
                }
            }
            p.remaining -= 1;
            if p.remaining == 0
                && let Some(p) = self.pending.remove(&key)
            {
                done.push(p);
            }
        }
        done
    }

    /// Forwards a complete document to persist, or fails it.
    async fn settle(&mut self, p: Pending, tx: &mpsc::Sender<Work<Embedded>>, finisher: &Finisher) {
        let Work { job, doc, data: chunks } = p.work;
        let span = job.stage_span("embed");
        if let Some(failure) = p.failure {
            finisher.fail(Failed { job, doc: Some(doc), failure }).instrument(span).await;
            return;
        }
        let vectors: Option<Vec<Vec<f32>>> = p.vectors.into_iter().collect();
        match vectors {
            Some(vectors) => {
                let _ = tx.send(Work { job, doc, data: Embedded { chunks, vectors } }).await;
            }
            None => {
                let failure = Failure::transient("embedding", "some vectors were missing from the provider's reply");
                finisher.fail(Failed { job, doc: Some(doc), failure }).instrument(span).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_closes_by_count_or_when_the_next_input_does_not_fit() {
        let now = Instant::now();
        let mut q = BatchQueue::new(3, 100);
        q.push('a', 10, now);
        q.push('b', 10, now);
        assert!(!q.has_full_batch(), "two small inputs wait for more (or for max_wait)");
        q.push('c', 10, now);
        assert!(q.has_full_batch());
        assert_eq!(q.pop_batch(), vec!['a', 'b', 'c']);
        q.push('d', 60, now);
        q.push('e', 30, now);
        assert!(!q.has_full_batch(), "90 tokens: room for 10 more");
        q.push('f', 20, now);
        assert!(q.has_full_batch(), "f would take the batch to 110 tokens");
        assert_eq!(q.pop_batch(), vec!['d', 'e']);
        assert_eq!(q.pop_batch(), vec!['f']);
        assert!(q.is_empty());
    }
}
