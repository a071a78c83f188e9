//! Settling a message: success (event, then ack), permanent failure (document `failed`, dead
//! letter with the reason, `document.failed`, ack), or transient failure (requeue after a delay,
//! until the delivery limit, after which it is settled as a permanent failure).

use std::sync::Arc;
use std::time::Duration;

use super::{Doc, Failed, Job};
use crate::error::Failure;
use crate::messages::{self, DOCUMENT_FAILED, DOCUMENT_INGESTED, DocumentFailed, DocumentIngested, VERSION};
use crate::queue::Delivery;
use crate::telemetry::metrics;
use crate::worker::Services;

/// Settles jobs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Finisher {
    services: Arc<Services>,
}

impl Finisher {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }

    /// The document is stored and indexed (or was already): publish the event, then ack. The
    /// event goes first so it is never lost: a crash before the ack redelivers the message,
    /// which finds the document done and publishes again (events are at-least-once).
    pub(crate) async fn succeed(&self, job: Job, doc: &Doc, chunks: i64, duplicate: bool, status: &str) {
        let event = DocumentIngested {
            v: VERSION,
            upload_id: job.upload.upload_id.clone(),
            collection: doc.collection.name.clone(),
            document_id: doc.document_id,
            sha256: doc.sha256.clone(),
            chunks,
            duplicate,
            status: status.to_owned(),
        };
        if let Err(error) = self.services.broker.publish_event(DOCUMENT_INGESTED, &messages::encode(&event)).await {
            tracing::warn!(upload_id = %event.upload_id, %error, "could not publish document.ingested; requeueing");
            self.requeue_later(job.delivery, Duration::from_secs(1));
            return;
        }
        if let Err(error) = job.delivery.acker.ack().await {
            tracing::warn!(upload_id = %event.upload_id, %error, "ack failed; the message will be redelivered");
        }
        let outcome = if duplicate { "duplicate" } else { status };
        metrics::DOCUMENTS.with_label_values(&[outcome]).inc();
        metrics::STAGE_SECONDS.with_label_values(&["total"]).observe(job.received.elapsed().as_secs_f64());
        tracing::info!(
            upload_id = %event.upload_id,
            collection = %event.collection,
            document_id = event.document_id,
            chunks,
            outcome,
            ms = job.received.elapsed().as_millis() as u64,
            "upload done"
        );
    }

    /// Settles a failed job: requeue if transient and attempts remain, otherwise fail for good.
    pub(crate) async fn fail(&self, failed: Failed) {
        let Failed { job, doc, failure } = failed;
        let limit = self.services.settings.broker.delivery_limit;
        if failure.is_transient() && job.delivery.delivery_count + 1 < limit {
            let attempt = job.delivery.delivery_count;
            tracing::warn!(upload_id = %job.upload.upload_id, attempt, %failure, "transient failure; requeueing");
            metrics::DOCUMENTS.with_label_values(&["requeued"]).inc();
            // Exponential delay before the requeue, so a struggling dependency is not hammered.
            let delay = Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)));
            self.requeue_later(job.delivery, delay);
            return;
        }
        let failure = if failure.is_transient() {
            Failure {
                reason: format!("{} (gave up after {} deliveries)", failure.reason, job.delivery.delivery_count + 1),
                ..failure
            }
        } else {
            failure
        };
        if let Some(doc) = &doc
            && let Err(error) = self.services.store.mark_failed(doc.document_id, &failure.describe()).await
        {
            tracing::warn!(document_id = doc.document_id, %error, "could not mark the document failed; requeueing");
            self.requeue_later(job.delivery, Duration::from_secs(2));
            return;
        }
        let event = DocumentFailed {
            v: VERSION,
            upload_id: job.upload.upload_id.clone(),
            collection: Some(job.upload.collection.clone()),
            document_id: doc.as_ref().map(|d| d.document_id),
            code: failure.code.clone(),
            reason: failure.reason.clone(),
            retryable: false,
        };
        self.dead_letter(job.delivery, &failure, &event).await;
    }

    /// A message that could not even be decoded: dead-letter it with the reason.
    pub(crate) async fn reject_undecodable(&self, delivery: Delivery, failure: Failure) {
        // Best effort: name the upload if the JSON had an id at all.
        let upload_id = serde_json::from_slice::<serde_json::Value>(&delivery.body)
            .ok()
            .and_then(|v| v.get("upload_id").and_then(|id| id.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let collection = serde_json::from_slice::<serde_json::Value>(&delivery.body)
            .ok()
            .and_then(|v| v.get("collection").and_then(|c| c.as_str()).map(str::to_owned));
        let event = DocumentFailed {
            v: VERSION,
            upload_id,
            collection,
            document_id: None,
            code: failure.code.clone(),
            reason: failure.reason.clone(),
            retryable: false,
        };
        self.dead_letter(delivery, &failure, &event).await;
    }

    async fn dead_letter(&self, delivery: Delivery, failure: &Failure, event: &DocumentFailed) {
        let broker = &self.services.broker;
        if let Err(error) = broker.dead_letter(&delivery.body, failure).await {
            tracing::warn!(%error, "could not dead-letter; requeueing");
            self.requeue_later(delivery, Duration::from_secs(2));
            return;
        }
        if let Err(error) = broker.publish_event(DOCUMENT_FAILED, &messages::encode(event)).await {
            // The dead letter (with the reason) is kept; losing the event is logged, not fatal.
            tracing::warn!(upload_id = %event.upload_id, %error, "could not publish document.failed");
        }
        if let Err(error) = delivery.acker.ack().await {
            tracing::warn!(%error, "ack failed; the message will be redelivered");
        }
        metrics::DOCUMENTS.with_label_values(&["failed"]).inc();
        tracing::warn!(upload_id = %event.upload_id, code = %failure.code, reason = %failure.reason, "upload failed");
    }

    /// Returns the message to the queue after `delay`, without holding up the pipeline.
    fn requeue_later(&self, delivery: Delivery, delay: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(error) = delivery.acker.requeue().await {
                tracing::warn!(%error, "requeue failed; the broker will redeliver on reconnect");
            }
        });
    }
}
