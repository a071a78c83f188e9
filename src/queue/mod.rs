//! The message queue: uploads in, queries in, replies and events out.
//!
//! [`Broker`] is the small surface the workers and the CLI need; [`amqp::AmqpBroker`] implements
//! it over RabbitMQ (quorum queues, publisher confirms, manual acks, dead letters). Adapters know
//! nothing of stages or workers: they move bytes and acknowledgements.

pub mod amqp;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::Failure;

/// A queue failure. Connection-level problems are transient; the consumer reconnects.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached or the connection/channel broke.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused a publish (negative confirm) or it was not confirmed in time.
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    /// No reply arrived in time for a request.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Anything else the broker reported.
    #[error("broker error: {0}")]
    Protocol(String),
}

impl From<QueueError> for Failure {
    fn from(error: QueueError) -> Self {
        Failure::transient("broker", error.to_string())
    }
}

/// Acknowledges one delivery. Exactly one of the methods should be called, once.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done: remove the message.
    async fn ack(&self) -> Result<(), QueueError>;
    /// Not done, try again later: return the message to the queue (counts toward the delivery limit).
    async fn requeue(&self) -> Result<(), QueueError>;
}

/// A received message.
pub struct Delivery {
    /// The message body.
    pub body: Vec<u8>,
    /// Whether the broker delivered it before (a previous consumer did not ack).
    pub redelivered: bool,
    /// How many times it was delivered before (quorum queues count this).
    pub delivery_count: u32,
    /// `reply_to` property (queries).
    pub reply_to: Option<String>,
    /// `correlation_id` property (queries).
    pub correlation_id: Option<String>,
    /// How to acknowledge it.
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .field("reply_to", &self.reply_to)
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

/// An event received from the events exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMessage {
    /// Routing key, e.g. `document.ingested`.
    pub routing_key: String,
    /// JSON body.
    pub body: Vec<u8>,
}

/// Stream of deliveries; ends (or yields an error) when the connection breaks.
pub type Deliveries = BoxStream<'static, Result<Delivery, QueueError>>;
/// Stream of events.
pub type Events = BoxStream<'static, Result<EventMessage, QueueError>>;

/// What workers and clients need from the queue.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Publishes an upload and waits for the broker's confirm.
    async fn publish_upload(&self, body: &[u8]) -> Result<(), QueueError>;
    /// Publishes an event (`document.ingested`, ...) and waits for the confirm.
    async fn publish_event(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError>;
    /// Copies a message to the dead-letter queue with the failure in its headers (then ack the original).
    async fn dead_letter(&self, body: &[u8], failure: &Failure) -> Result<(), QueueError>;
    /// Consumes uploads with the configured prefetch and manual acks.
    async fn consume_uploads(&self) -> Result<Deliveries, QueueError>;
    /// Consumes query requests with the configured prefetch and manual acks.
    async fn consume_queries(&self) -> Result<Deliveries, QueueError>;
    /// Sends a reply to `reply_to` with the request's `correlation_id`.
    async fn reply(&self, reply_to: &str, correlation_id: Option<&str>, body: &[u8]) -> Result<(), QueueError>;
    /// Subscribes to events whose routing keys match the patterns (`document.*`); only events
    /// published after this returns are seen.
    async fn subscribe_events(&self, patterns: &[&str]) -> Result<Events, QueueError>;
    /// Sends a request to the query queue and waits for its reply (RPC).
    async fn request(&self, body: &[u8], timeout: Duration) -> Result<Vec<u8>, QueueError>;
    /// Messages waiting in the (ingest, dead-letter, query) queues, for `ragpipe status`.
    async fn depths(&self) -> Result<QueueDepths, QueueError>;
    /// Whether the connection is up, for `/ready`.
    fn is_connected(&self) -> bool;
    /// Closes the connection; unacknowledged deliveries go back to their queues at once.
    async fn close(&self);
}

/// Messages waiting per queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepths {
    /// Uploads waiting.
    pub ingest: u32,
    /// Dead letters kept.
    pub dead: u32,
    /// Queries waiting.
    pub query: u32,
}
