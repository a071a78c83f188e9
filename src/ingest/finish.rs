//! Settling a message: success (event, then ack), permanent failure (document `failed`, dead
//! letter with the reason, `document.failed`), or transient failure (delivered again after a
//! delay, until the delivery limit, after which it is settled as a permanent failure). While the
//! store is unreachable a failed message is held until it answers again, so an outage costs each
//! message one delivery, not all of them.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::{Doc, Failed, Job};
use crate::app::IngestContext;
use crate::error::Failure;
use crate::messages::{self, DOCUMENT_FAILED, DOCUMENT_INGESTED, DocumentFailed, DocumentIngested, VERSION};
use crate::queue::{DeadLetterReason, Delivery};
use crate::store::DocumentStatus;
use crate::telemetry::metrics;

/// Settles jobs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Finisher {
    ctx: Arc<IngestContext>,
}

impl Finisher {
    pub(crate) fn new(ctx: Arc<IngestContext>) -> Self {
        Self { ctx }
    }

    /// The document is stored and indexed (or was already): publish the event, then ack. The
    /// event goes first so it is never lost: a crash before the ack redelivers the message,
    /// which finds the document done and publishes again (events are at-least-once).
    pub(crate) async fn succeed(&self, job: Job, doc: &Doc, chunks: i64, duplicate: bool, status: DocumentStatus) {
        let event = ingested_event(&job, doc, chunks, duplicate, status);
        if let Err(error) = self.ctx.events.publish(DOCUMENT_INGESTED, &messages::encode(&event)).await {
            tracing::warn!(upload_id = %event.upload_id, %error, "could not publish document.ingested; retrying");
            retry(&job.delivery, Duration::from_secs(1)).await;
            return;
        }
        acknowledge(job, doc, &event).await;
    }

    /// [`Finisher::succeed`] for a batch of newly stored documents: their events in one publish
    /// (one commit of the embedded queue instead of one each), then each ack in its upload's
    /// span for `stage`.
    pub(crate) async fn succeed_all(&self, stage: &'static str, done: Vec<(Job, Doc, i64)>) {
        if done.is_empty() {
            return;
        }
        let events: Vec<DocumentIngested> = done
            .iter()
            .map(|(job, doc, chunks)| ingested_event(job, doc, *chunks, false, DocumentStatus::Ingested))
            .collect();
        let bodies: Vec<(&str, Vec<u8>)> = events.iter().map(|e| (DOCUMENT_INGESTED, messages::encode(e))).collect();
        if let Err(error) = self.ctx.events.publish_all(&bodies).await {
            tracing::warn!(uploads = done.len(), %error, "could not publish document.ingested; retrying");
            let retries = done.iter().map(|(job, ..)| retry(&job.delivery, Duration::from_secs(1)));
            futures::future::join_all(retries).await;
            return;
        }
        let acks = done.into_iter().zip(&events).map(|((job, doc, _), event)| {
            let span = job.stage_span(stage);
            async move { acknowledge(job, &doc, event).await }.instrument(span)
        });
        futures::future::join_all(acks).await;
    }

    /// Settles a failed job: try again later if transient and attempts remain, otherwise fail
    /// for good.
    pub(crate) async fn fail(&self, failed: Failed) {
        let Failed { job, doc, failure } = failed;
        let attempt = job.delivery.attempt;
        if failure.is_transient() && attempt < self.ctx.delivery_limit {
            tracing::warn!(
                upload_id = %job.upload.upload_id,
                collection = job.upload.collection.as_str(),
                document_id = doc.as_ref().map(|d| d.document_id),
                attempt,
                %failure,
                "transient failure; trying again later"
            );
            metrics::DOCUMENTS.with_label_values(&["requeued"]).inc();
            metrics::ERRORS.with_label_values(&[failure.code.as_str(), "document"]).inc();
            if failure.code == "database" {
                self.until_store_answers().await;
            }
            // Exponential delay, so a struggling dependency is not hammered.
            let delay = Duration::from_millis(500u64.saturating_mul(1 << (attempt - 1).min(6)));
            retry(&job.delivery, delay).await;
            return;
        }
        let failure = if failure.is_transient() {
            Failure { reason: format!("{} (gave up after {attempt} deliveries)", failure.reason), ..failure }
        } else {
            failure
        };
        if let Some(doc) = &doc
            && let Err(error) = self.ctx.store.mark_failed(doc.document_id, &failure.describe()).await
        {
            tracing::warn!(document_id = doc.document_id, %error, "could not mark the document failed; retrying");
            retry(&job.delivery, Duration::from_secs(2)).await;
            return;
        }
        let event = DocumentFailed {
            v: VERSION,
            upload_id: job.upload.upload_id.clone(),
            collection: Some(job.upload.collection.to_string()),
            document_id: doc.as_ref().map(|d| d.document_id),
            code: failure.code.clone(),
            reason: failure.reason.clone(),
            retryable: false,
        };
        self.dead_letter(&job.delivery, &failure, &event).await;
    }

    /// Waits while the store does not answer (a restart, a failover), at most
    /// [`STORE_OUTAGE_HOLD`]. Retrying meanwhile would only spend the message's deliveries: with
    /// the delivery limit's exponential delays a message gives up within seconds, and a database
    /// restart would fail every document in flight for good. The held message counts against
    /// the prefetch, so intake pauses too.
    async fn until_store_answers(&self) {
        let give_up = tokio::time::Instant::now() + STORE_OUTAGE_HOLD;
        let mut pause = Duration::from_millis(250);
        while let Err(error) = self.ctx.store.ping().await {
            if tokio::time::Instant::now() >= give_up {
                return;
            }
            tracing::debug!(%error, "store unreachable; holding the message until it answers");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// A delete request: applied and acknowledged; retried while the store is unavailable;
    /// dead-lettered when malformed.
    pub(crate) async fn delete(&self, delivery: Delivery) {
        let message: crate::messages::DeleteMessage = match crate::messages::decode(&delivery.body) {
            Ok(message) => message,
            Err(e) => return self.reject_undecodable(delivery, Failure::permanent(e.code(), e.to_string())).await,
        };
        let target = crate::store::DocumentRef::parse(message.delete.trim());
        let collection = message.collection.as_ref().map(crate::messages::CollectionName::as_str);
        match super::delete::delete_and_announce(self.ctx.store.as_ref(), self.ctx.events.as_ref(), &target, collection)
            .await
        {
            Ok(deleted) => {
                tracing::info!(target = %message.delete, documents = deleted.len(), "delete message applied");
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(%error, "could not ack a delete message; it is delivered again (harmless)");
                }
            }
            Err(error) => {
                let failure = Failure::from(error);
                if failure.is_transient() {
                    tracing::warn!(reason = %failure.reason, "delete failed; retrying");
                    retry(&delivery, Duration::from_secs(2)).await;
                } else {
                    self.reject_undecodable(delivery, failure).await;
                }
            }
        }
    }

    /// A message that could not even be decoded: dead-letter it with the reason.
    pub(crate) async fn reject_undecodable(&self, delivery: Delivery, failure: Failure) {
        // Best effort: name the upload and collection if the JSON had them at all.
        let json = serde_json::from_slice::<serde_json::Value>(&delivery.body).ok();
        let field = |name: &str| json.as_ref().and_then(|v| v.get(name)?.as_str().map(str::to_owned));
        let event = DocumentFailed {
            v: VERSION,
            upload_id: field("upload_id").unwrap_or_default(),
            collection: field("collection"),
            document_id: None,
            code: failure.code.clone(),
            reason: failure.reason.clone(),
            retryable: false,
        };
        self.dead_letter(&delivery, &failure, &event).await;
    }

    async fn dead_letter(&self, delivery: &Delivery, failure: &Failure, event: &DocumentFailed) {
        let reason = DeadLetterReason {
            code: failure.code.clone(),
            reason: failure.reason.clone(),
            retryable: failure.is_transient(),
        };
        if let Err(error) = delivery.dead_letter(&reason).await {
            tracing::warn!(%error, "could not dead-letter; retrying");
            retry(delivery, Duration::from_secs(2)).await;
            return;
        }
        if let Err(error) = self.ctx.events.publish(DOCUMENT_FAILED, &messages::encode(event)).await {
            // The dead letter (with the reason) is kept; losing the event is logged, not fatal.
            tracing::warn!(upload_id = %event.upload_id, %error, "could not publish document.failed");
        }
        metrics::DOCUMENTS.with_label_values(&["failed"]).inc();
        metrics::DEAD_LETTERS.inc();
        metrics::ERRORS.with_label_values(&[failure.code.as_str(), "document"]).inc();
        tracing::warn!(
            upload_id = %event.upload_id,
            collection = event.collection.as_deref().unwrap_or_default(),
            document_id = event.document_id,
            code = %failure.code,
            reason = %failure.reason,
            "upload failed"
        );
    }
}

fn ingested_event(job: &Job, doc: &Doc, chunks: i64, duplicate: bool, status: DocumentStatus) -> DocumentIngested {
    DocumentIngested {
        v: VERSION,
        upload_id: job.upload.upload_id.clone(),
        collection: doc.collection.name.clone(),
        document_id: doc.document_id,
        sha256: doc.sha256.clone(),
        chunks,
        duplicate,
        status,
        garbled_pages: doc.garbled_pages,
    }
}

/// Acks a job whose `document.ingested` event is published, and counts and logs it.
async fn acknowledge(job: Job, doc: &Doc, event: &DocumentIngested) {
    if let Err(error) = job.delivery.ack().await {
        tracing::warn!(upload_id = %event.upload_id, %error, "ack failed; the message will be delivered again");
    }
    let outcome = if event.duplicate { "duplicate" } else { event.status.as_str() };
    metrics::DOCUMENTS.with_label_values(&[outcome]).inc();
    metrics::GARBLED_PAGES.inc_by(u64::from(doc.garbled_pages));
    metrics::STAGE_SECONDS.with_label_values(&["total"]).observe(job.received.elapsed().as_secs_f64());
    tracing::info!(
        upload_id = %event.upload_id,
        collection = %event.collection,
        document_id = event.document_id,
        chunks = event.chunks,
        outcome,
        garbled_pages = doc.garbled_pages,
        ms = job.received.elapsed().as_millis() as u64,
        "upload done"
    );
}

/// How long a message whose failure was the store being unreachable waits for it to answer
/// before it is handed back anyway.
const STORE_OUTAGE_HOLD: Duration = Duration::from_secs(600);

/// Hands the message back to be delivered again after `delay` (the queue keeps the time).
async fn retry(delivery: &Delivery, delay: Duration) {
    if let Err(error) = delivery.retry_after(delay).await {
        tracing::warn!(%error, "could not hand the message back; it is delivered again when the lease or connection ends");
    }
}
