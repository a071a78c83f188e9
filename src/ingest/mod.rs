//! The staged ingest pipeline: tokio tasks joined by bounded channels.
//!
//! ```text
//! consume ─▶ dedup (fetch, store bytes; claim rows in batches) ─▶ extract ─▶ chunk
//!         ─▶ embed (batched across documents) ─▶ persist + index (in batches) ─▶ event, ack
//! ```
//!
//! Each stage has its own concurrency; channels are bounded, so a slow stage slows intake down
//! instead of piling work up (and the broker's prefetch bounds what is in flight at all). A
//! message is acknowledged only after its document is committed and added to the index; every
//! stage is idempotent, so a redelivery never duplicates rows or vectors.

mod batcher;
pub mod delete;
mod finish;
mod stages;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::finish::Finisher;
use crate::app::IngestContext;
use crate::error::Failure;
use crate::messages::{self, UploadMessage};
use crate::queue::{Deliveries, Delivery};
use crate::store::Collection;

/// One upload on its way through the pipeline.
pub(crate) struct Job {
    delivery: Delivery,
    upload: UploadMessage,
    received: Instant,
    /// The upload's log context (`upload_id`, `collection`, `document_id` once claimed): every
    /// line logged while a stage works on it carries these and the stage's name.
    span: tracing::Span,
}

impl Job {
    fn new(delivery: Delivery, upload: UploadMessage, received: Instant) -> Self {
        let span = tracing::info_span!(
            "upload",
            upload_id = %upload.upload_id,
            collection = %upload.collection,
            document_id = tracing::field::Empty,
        );
        Self { delivery, upload, received, span }
    }

    /// The span of `stage` working on this upload.
    fn stage_span(&self, stage: &'static str) -> tracing::Span {
        tracing::info_span!(parent: &self.span, "stage", stage)
    }
}

/// What a stage takes: a job, alone or with its document.
trait HasJob {
    fn job(&self) -> &Job;
}

impl HasJob for Job {
    fn job(&self) -> &Job {
        self
    }
}

impl<T> HasJob for Work<T> {
    fn job(&self) -> &Job {
        &self.job
    }
}

/// The document row an upload maps to, known from the dedup stage on.
#[derive(Debug, Clone)]
pub(crate) struct Doc {
    collection: Collection,
    document_id: i64,
    sha256: String,
    /// Pages of the document left out as garbled (known from the extract stage on).
    garbled_pages: u32,
}

/// A job with its document and the current stage's payload.
pub(crate) struct Work<T> {
    job: Job,
    doc: Doc,
    data: T,
}

/// A stage's failure, carrying the job so the finisher can settle its message.
pub(crate) struct Failed {
    job: Job,
    doc: Option<Doc>,
    failure: Failure,
}

/// Consumes uploads until `shutdown`, reconsuming after a broken connection.
pub async fn run(ctx: Arc<IngestContext>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match ctx.uploads.consume().await {
            Ok(deliveries) => {
                backoff = Duration::from_millis(500);
                run_pipeline(ctx.clone(), deliveries, shutdown.clone()).await;
            }
            Err(error) => tracing::error!(%error, "cannot consume uploads"),
        }
        if shutdown.is_cancelled() {
            return;
        }
        tracing::warn!(?backoff, "upload stream ended; consuming again");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Runs one consumer's pipeline until its delivery stream ends or `shutdown`, then drains.
async fn run_pipeline(ctx: Arc<IngestContext>, deliveries: Deliveries, shutdown: CancellationToken) {
    let cfg = &ctx.settings;
    let finisher = Finisher::new(ctx.clone());
    let (to_dedup, dedup_rx) = mpsc::channel(cfg.channel_capacity);
    let (to_claim, claim_rx) = mpsc::channel(cfg.channel_capacity);
    let (to_extract, extract_rx) = mpsc::channel(cfg.channel_capacity);
    let (to_chunk, chunk_rx) = mpsc::channel(cfg.channel_capacity);
    let (to_embed, embed_rx) = mpsc::channel(cfg.channel_capacity);
    let (to_persist, persist_rx) = mpsc::channel(cfg.channel_capacity);
    let s = &ctx;
    let f = &finisher;
    tokio::join!(
        intake(deliveries, to_dedup, f, shutdown),
        stage("dedup", dedup_rx, Some(to_claim), cfg.dedup_concurrency, f, |job| stages::fetch(s, job)),
        // One claim transaction at a time: what arrives meanwhile is claimed together next.
        batched(claim_rx, cfg.persist_batch, 1, move |batch| stages::claim(s, f, batch, to_extract.clone()))
            .instrument(tracing::info_span!("stage", stage = "dedup")),
        stage("extract", extract_rx, Some(to_chunk), cfg.extract_concurrency, f, |w| stages::extract(s, f, w)),
        stage("chunk", chunk_rx, Some(to_embed), cfg.chunk_concurrency, f, |w| stages::chunk(s, f, w)),
        // Embedding batches mix documents: lines about a batch carry the stage alone.
        batcher::run(embed_rx, to_persist, s.clone(), f.clone())
            .instrument(tracing::info_span!("stage", stage = "embed")),
        batched(persist_rx, cfg.persist_batch, cfg.persist_concurrency, |batch| stages::persist(s, f, batch))
            .instrument(tracing::info_span!("stage", stage = "persist")),
    );
}

/// A batched stage (claim, persist): takes what is ready, up to `batch` items, and hands it to
/// `step` together; at most `concurrency` batches at once.
async fn batched<In, F, Fut>(rx: mpsc::Receiver<In>, batch: usize, concurrency: usize, step: F)
where
    F: Fn(Vec<In>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut rx = rx;
    let items = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    items.ready_chunks(batch).for_each_concurrent(concurrency, step).await;
}

/// Decodes deliveries into jobs until the stream ends or `shutdown`; undecodable messages are
/// dead-lettered right here.
async fn intake(mut deliveries: Deliveries, next: mpsc::Sender<Job>, finisher: &Finisher, shutdown: CancellationToken) {
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return,
            item = deliveries.next() => match item {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    tracing::warn!(%error, "upload consumer failed");
                    return;
                }
                None => return,
            },
        };
        let received = Instant::now();
        let redelivered = if delivery.attempt > 1 { "true" } else { "false" };
        crate::telemetry::metrics::DELIVERIES.with_label_values(&["uploads", redelivered]).inc();
        if is_delete(&delivery.body) {
            finisher.delete(delivery).instrument(tracing::info_span!("stage", stage = "delete")).await;
            continue;
        }
        match decode_upload(&delivery.body) {
            Ok(upload) => {
                if next.send(Job::new(delivery, upload, received)).await.is_err() {
                    return;
                }
            }
            Err(failure) => {
                let span = tracing::info_span!("stage", stage = "intake");
                finisher.reject_undecodable(delivery, failure).instrument(span).await;
            }
        }
    }
}

/// Whether a message on the upload queue is a delete request (it has a `delete` field).
fn is_delete(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("delete").is_some())
}

/// Decodes and validates an upload message (the collection name is checked by decoding).
fn decode_upload(body: &[u8]) -> Result<UploadMessage, Failure> {
    let upload: UploadMessage = messages::decode(body).map_err(|e| Failure::permanent(e.code(), e.to_string()))?;
    if upload.upload_id.trim().is_empty() {
        return Err(Failure::permanent("invalid_message", "`upload_id` must not be empty"));
    }
    if upload.filename.trim().is_empty() {
        return Err(Failure::permanent("invalid_message", "`filename` must not be empty"));
    }
    Ok(upload)
}

/// Runs `step` on every item of `rx` with at most `concurrency` at once, forwarding results to
/// `next` and failures to the finisher, each item in its upload's span for stage `name`.
async fn stage<In: HasJob, Out, F, Fut>(
    name: &'static str,
    rx: mpsc::Receiver<In>,
    next: Option<mpsc::Sender<Out>>,
    concurrency: usize,
    finisher: &Finisher,
    step: F,
) where
    F: Fn(In) -> Fut,
    Fut: Future<Output = Result<Option<Out>, Failed>>,
{
    let mut rx = rx;
    let items = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    items
        .for_each_concurrent(concurrency, |item| {
            let next = next.clone();
            let span = item.job().stage_span(name);
            let fut = step(item).instrument(span.clone());
            async move {
                match fut.await {
                    Ok(Some(out)) => {
                        if let Some(next) = next {
                            // Only fails when the next stage is gone (shutdown); the unacked
                            // message then goes back to the queue.
                            let _ = next.send(out).await;
                        }
                    }
                    Ok(None) => {}
                    Err(failed) => finisher.fail(failed).instrument(span).await,
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_validated_after_decoding() {
        let body = br#"{"v":1,"upload_id":"u","collection":"../x","filename":"a.txt","content_b64":""}"#;
        assert_eq!(decode_upload(body).expect_err("bad collection").code, "invalid_collection");
        let body = br#"{"v":3,"upload_id":"u"}"#;
        assert_eq!(decode_upload(body).expect_err("version").code, "unsupported_version");
    }
}
