//! The message queue, as three ports shaped by what callers need:
//!
//! - [`UploadQueue`]: uploads in, with manual settlement of each [`Delivery`] (ack, retry after a
//!   delay, dead-letter with a reason) and a bounded number held at once;
//! - [`EventBus`]: `document.*` / `index.*` events out to any number of subscribers;
//! - [`RequestReply`]: query requests in, replies out (RPC).
//!
//! Two adapters implement all three: [`amqp::AmqpBroker`] over RabbitMQ (quorum queues,
//! publisher confirms, manual acks, dead letters), and [`embedded::EmbeddedQueue`] over a job
//! table in the embedded SQLite file (leases instead of acks, an event log other processes on
//! the machine follow, in-process request/reply). [`connect`] picks one by `broker.url`.
//! Adapters know nothing of stages or workers: they move bytes and settlements.

pub mod amqp;
pub mod embedded;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::config::BrokerSettings;
use crate::embedded::LazyDatabase;

/// A queue failure. Connection-level problems are transient; consumers reconnect.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker (or the embedded database) could not be reached, or the connection broke.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The broker refused a publish (negative confirm) or it was not confirmed in time.
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    /// No reply arrived in time for a request.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Anything else the queue reported.
    #[error("queue error: {0}")]
    Protocol(String),
}

/// Why a message was dead-lettered: kept with it for whoever inspects the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    /// Stable short code (`unsupported_type`, `delivery_limit`, ...).
    pub code: String,
    /// What happened.
    pub reason: String,
    /// Whether the failure was transient (gave up after retries) rather than permanent.
    pub retryable: bool,
}

/// A dead-lettered message and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as it was published.
    pub body: Vec<u8>,
    /// Why it was given up.
    pub reason: DeadLetterReason,
}

/// How one delivery is settled. Exactly one method is called, once.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Done: remove the message.
    async fn ack(&self) -> Result<(), QueueError>;
    /// Not done: deliver it again after `delay` (counts toward the delivery limit).
    async fn retry_after(&self, delay: Duration) -> Result<(), QueueError>;
    /// Failed for good: move `body` to the dead letters with `reason`, and remove the message.
    async fn dead_letter(&self, body: &[u8], reason: &DeadLetterReason) -> Result<(), QueueError>;
}

/// A received upload.
pub struct Delivery {
    /// The message body.
    pub body: Vec<u8>,
    /// Which delivery of this message this is, from 1 (a crash or retry makes it 2, 3, ...).
    pub attempt: u32,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// A delivery settled through `settle` (for adapters).
    pub fn new(body: Vec<u8>, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Self { body, attempt: attempt.max(1), settle }
    }

    /// Acknowledges the message: it is done and removed.
    ///
    /// # Errors
    /// The queue is unreachable; the message will then be delivered again.
    pub async fn ack(&self) -> Result<(), QueueError> {
        self.settle.ack().await
    }

    /// Hands the message back to be delivered again after `delay`.
    ///
    /// # Errors
    /// The queue is unreachable; the message will then be delivered again anyway.
    pub async fn retry_after(&self, delay: Duration) -> Result<(), QueueError> {
        self.settle.retry_after(delay).await
    }

    /// Moves the message to the dead letters with `reason`.
    ///
    /// # Errors
    /// The queue is unreachable; the message stays unsettled and will be delivered again.
    pub async fn dead_letter(&self, reason: &DeadLetterReason) -> Result<(), QueueError> {
        self.settle.dead_letter(&self.body, reason).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("bytes", &self.body.len()).field("attempt", &self.attempt).finish()
    }
}

/// Stream of deliveries; ends (or yields an error) when the connection breaks.
pub type Deliveries = BoxStream<'static, Result<Delivery, QueueError>>;

/// Messages waiting per queue, for `ragpipe status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepths {
    /// Uploads waiting (not yet taken by a consumer).
    pub ingest: u64,
    /// Uploads taken by a consumer and not settled yet (embedded queue only; RabbitMQ does not
    /// say).
    pub in_progress: Option<u64>,
    /// Dead letters kept.
    pub dead: u64,
    /// Queries waiting.
    pub query: u64,
}

/// Uploads: publish, consume with manual settlement.
#[async_trait]
pub trait UploadQueue: Send + Sync {
    /// Publishes an upload; returns once it is durable (confirmed, or committed).
    async fn publish(&self, body: &[u8]) -> Result<(), QueueError>;
    /// Publishes several uploads; returns once every one is durable. Not atomic: after an error
    /// some may be published (publishing one again is harmless, ingest is idempotent). The
    /// default publishes them concurrently, so their confirms are awaited together.
    async fn publish_all(&self, bodies: &[Vec<u8>]) -> Result<(), QueueError> {
        futures::future::try_join_all(bodies.iter().map(|body| self.publish(body))).await.map(|_| ())
    }
    /// Consumes uploads, at most the configured prefetch unsettled at once.
    async fn consume(&self) -> Result<Deliveries, QueueError>;
    /// Whether some process is consuming uploads right now (a worker is running).
    async fn has_consumers(&self) -> Result<bool, QueueError>;
    /// Messages waiting, for `ragpipe status`.
    async fn depths(&self) -> Result<QueueDepths, QueueError>;
    /// The oldest `limit` dead letters, left in place (for inspection).
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
}

/// An event received from the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMessage {
    /// Routing key, e.g. `document.ingested`.
    pub routing_key: String,
    /// JSON body.
    pub body: Vec<u8>,
}

/// Stream of events.
pub type Events = BoxStream<'static, Result<EventMessage, QueueError>>;

/// Events: publish to every subscriber whose pattern matches.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes an event; returns once it is durable (confirmed, or committed).
    async fn publish(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError>;
    /// Publishes several events (routing key, body); returns once every one is durable. Not
    /// atomic: after an error some may be published (events are at-least-once). The default
    /// publishes them concurrently, so their confirms are awaited together.
    async fn publish_all(&self, events: &[(&str, Vec<u8>)]) -> Result<(), QueueError> {
        futures::future::try_join_all(events.iter().map(|(key, body)| self.publish(key, body))).await.map(|_| ())
    }
    /// Subscribes to events whose routing keys match the patterns (topic syntax: `document.*`,
    /// `#`); only events published after this returns are seen.
    async fn subscribe(&self, patterns: &[&str]) -> Result<Events, QueueError>;
}

/// Answers one request: the reply (which also settles the request), optionally after streamed
/// parts, or no reply at all for a request nobody waits for any more.
#[async_trait]
pub trait Reply: Send + Sync {
    /// Sends one part of a streamed reply; the request stays open for more parts and the final
    /// reply. Parts arrive in the order they were sent.
    async fn send_part(&self, body: &[u8]) -> Result<(), QueueError>;
    /// Sends `body` as the (final) reply to this request and settles it.
    async fn send(&self, body: &[u8]) -> Result<(), QueueError>;
    /// Settles the request without replying (its deadline passed before work began).
    async fn discard(&self) -> Result<(), QueueError>;
}

/// A received request.
pub struct Request {
    /// The request body.
    pub body: Vec<u8>,
    /// Where the answer goes; `None` when the requester asked for no reply (no `reply_to`).
    pub reply: Option<Box<dyn Reply>>,
    /// When the requester stops waiting, as the transport says (RabbitMQ: the `expiration`
    /// property, counted from delivery; embedded: the requester's timeout).
    pub deadline: Option<tokio::time::Instant>,
}

/// Stream of requests.
pub type Requests = BoxStream<'static, Result<Request, QueueError>>;

/// One message of a reply as the requester receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyMessage {
    /// The message body.
    pub body: Vec<u8>,
    /// Whether this is the final reply (after it, nothing more comes for the request).
    pub last: bool,
}

/// The messages of one reply: parts, then the final reply; the stream ends after it (or with an
/// error: no reply in time, connection lost).
pub type ReplyMessages = BoxStream<'static, Result<ReplyMessage, QueueError>>;

/// Request/reply (queries).
#[async_trait]
pub trait RequestReply: Send + Sync {
    /// Serves requests, at most the configured prefetch at once.
    async fn serve(&self) -> Result<Requests, QueueError>;
    /// Sends a request; its reply's messages (streamed parts, then the final reply) arrive on the
    /// stream, which fails with [`QueueError::Timeout`] if the final reply is not in by `timeout`.
    async fn request_parts(&self, body: &[u8], timeout: Duration) -> Result<ReplyMessages, QueueError>;
    /// Sends a request and waits for its final reply (skipping any streamed parts).
    async fn request(&self, body: &[u8], timeout: Duration) -> Result<Vec<u8>, QueueError> {
        let mut messages = self.request_parts(body, timeout).await?;
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            let message = message?;
            if message.last {
                return Ok(message.body);
            }
        }
        Err(QueueError::Unavailable("the reply stream ended before the final reply".into()))
    }
}

/// Which adapter a [`Queue`] runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueKind {
    /// RabbitMQ at this (redacted) URL.
    Amqp(String),
    /// The job table in this SQLite file.
    Embedded(std::path::PathBuf),
}

impl std::fmt::Display for QueueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Amqp(url) => write!(f, "rabbitmq ({url})"),
            Self::Embedded(path) => write!(f, "embedded ({})", path.display()),
        }
    }
}

/// The three ports of one connected queue.
#[derive(Clone)]
pub struct Queue {
    /// Which adapter.
    pub kind: QueueKind,
    /// Uploads.
    pub uploads: Arc<dyn UploadQueue>,
    /// Events.
    pub events: Arc<dyn EventBus>,
    /// Queries.
    pub requests: Arc<dyn RequestReply>,
    health: Arc<dyn Health>,
}

/// Connection state and shutdown, common to both adapters.
#[async_trait]
pub trait Health: Send + Sync {
    /// Whether the connection is up, for `/ready`.
    fn is_connected(&self) -> bool;
    /// Closes the connection; unsettled deliveries go back to the queue at once.
    async fn close(&self);
}

impl Queue {
    /// Wraps one adapter implementing every port.
    pub fn new<T>(kind: QueueKind, adapter: Arc<T>) -> Self
    where
        T: UploadQueue + EventBus + RequestReply + Health + 'static,
    {
        Self { kind, uploads: adapter.clone(), events: adapter.clone(), requests: adapter.clone(), health: adapter }
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.health.is_connected()
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.health.close().await;
    }
}

/// Connects the queue `[broker]` names: RabbitMQ for an `amqp://` URL, the embedded queue in
/// `database` (the data directory's SQLite file) when there is no URL.
///
/// # Errors
/// The broker is unreachable or refuses the topology, or the embedded database cannot be opened.
pub async fn connect(settings: &BrokerSettings, database: &LazyDatabase) -> Result<Queue, QueueError> {
    match &settings.url {
        Some(url) => {
            let broker = amqp::AmqpBroker::connect(settings).await?;
            Ok(Queue::new(QueueKind::Amqp(crate::config::redact_url(url)), Arc::new(broker)))
        }
        None => {
            let db = database.get().await.map_err(|e| QueueError::Unavailable(e.to_string()))?;
            let queue = embedded::EmbeddedQueue::new(db.clone(), settings);
            Ok(Queue::new(QueueKind::Embedded(db.path().to_owned()), Arc::new(queue)))
        }
    }
}

/// The receiving end of a channel as a stream (for adapters).
pub(crate) fn receiver_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// Whether `routing_key` matches a topic `pattern` (AMQP syntax: words separated by `.`, `*`
/// matches one word, `#` zero or more).
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => matches(&pattern[1..], key) || (!key.is_empty() && matches(pattern, &key[1..])),
            (Some(&"*"), Some(_)) => matches(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k => matches(&pattern[1..], &key[1..]),
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    matches(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("document.ingested", "document.ingested"));
        assert!(topic_matches("document.*", "document.failed"));
        assert!(!topic_matches("document.*", "document.a.b"));
        assert!(topic_matches("#", "index.rebuilt"));
        assert!(topic_matches("document.#", "document"));
        assert!(topic_matches("*.rebuilt", "index.rebuilt"));
        assert!(!topic_matches("index.*", "document.ingested"));
    }
}
