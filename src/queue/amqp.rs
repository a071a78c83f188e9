//! The queue ports over RabbitMQ with lapin.
//!
//! Topology (declared idempotently on connect, names from `[broker]`):
//! - `ingest_exchange` (direct) --`ingest_routing_key`--> `ingest_queue` (durable quorum queue with
//!   `x-delivery-limit` and `x-dead-letter-exchange`);
//! - `dead_letter_exchange` (fanout) --> `dead_letter_queue` (quorum);
//! - `query_queue` (durable, default exchange, standard RPC; direct reply-to works);
//! - `events_exchange` (topic) for `document.*` and `index.*`.
//!
//! Every publish goes through a channel in confirm mode and waits for the broker's confirm, except
//! query replies (see [`AmqpReply`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use secrecy::ExposeSecret;

use super::{
    DeadLetter, DeadLetterReason, Deliveries, Delivery, EventBus, EventMessage, Events, Health, QueueDepths,
    QueueError, Reply, ReplyMessage, ReplyMessages, Request, RequestReply, Requests, Settle, UploadQueue,
    receiver_stream,
};
use crate::config::{BrokerSettings, redact_url};

/// Delay between reconnection attempts: 250 ms, doubling to this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// How long one reconnection attempt (connect, handshake, topology) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an operation that needs the connection waits for a reconnection in progress.
const LINK_WAIT: Duration = Duration::from_secs(5);

/// RabbitMQ's pseudo-queue for direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A RabbitMQ connection with the ragpipe topology declared, replaced by a new one whenever it
/// breaks.
///
/// Reconnection is ours, not lapin's: lapin's auto-recovery gives up for good when one attempt
/// reaches the broker but fails in the handshake (a broker still starting, a load balancer, a
/// proxy that accepts and closes), leaving the connection "reconnecting" forever. Here a
/// supervisor task opens a whole new connection with backoff, as long as the broker is alive.
/// Consumers of the broken connection end; their callers (the ingest and query loops, the index
/// follower) consume again. Unacknowledged messages are redelivered by the broker; settling them
/// on the old connection fails (and is logged), which is harmless: every stage is idempotent.
pub struct AmqpBroker {
    shared: Arc<Shared>,
    /// This connection's requests waiting for replies (opened on the first request).
    replies: tokio::sync::Mutex<Option<Arc<Replies>>>,
}

/// What the broker and its supervisor share.
struct Shared {
    url: secrecy::SecretString,
    settings: Arc<BrokerSettings>,
    /// The current connection (replaced by the supervisor after a break).
    link: tokio::sync::watch::Sender<Arc<Link>>,
    /// Cancelled by [`Health::close`]: the supervisor stops reconnecting.
    closed: tokio_util::sync::CancellationToken,
}

/// One connection, with its confirm-mode publishing channel and the topology declared.
struct Link {
    connection: Connection,
    publisher: Publisher,
}

/// Where the replies to this connection's requests arrive: one channel consuming direct
/// reply-to, shared by every request (RabbitMQ routes a direct reply only to the channel that
/// published the request, so requests are published on it too), and the requests waiting on it
/// by correlation id.
struct Replies {
    channel: Channel,
    waiting: Arc<Waiting>,
    /// The publisher of the connection the channel belongs to (its settings and confirm wait).
    publisher: Publisher,
}

type Waiting = std::sync::Mutex<std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<ReplyMessage>>>;

/// Removes a request from [`Replies::waiting`] when its reply stream ends or is dropped.
struct Awaiting {
    waiting: Arc<Waiting>,
    correlation_id: String,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.correlation_id);
    }
}

/// A confirm-mode channel and the names and timeout publishing needs; cheap to clone, so a
/// delivery can dead-letter itself and a request can send its reply.
#[derive(Clone)]
struct Publisher {
    channel: Channel,
    settings: Arc<BrokerSettings>,
}

impl AmqpBroker {
    /// Connects, opens a confirm-mode publishing channel and declares the topology.
    ///
    /// # Errors
    /// No URL configured, the broker is unreachable, or a declaration conflicts with an existing
    /// queue of other arguments (RabbitMQ's PRECONDITION_FAILED: delete the queue or rename it).
    pub async fn connect(settings: &BrokerSettings) -> Result<Self, QueueError> {
        let url = settings.url.clone().ok_or_else(|| QueueError::Unavailable("broker.url is not set".into()))?;
        let settings = Arc::new(settings.clone());
        // A broker that is not there at start is an error at once; one that goes away later is
        // reconnected to.
        let link = Link::open(&url, &settings).await?;
        let (link, _) = tokio::sync::watch::channel(Arc::new(link));
        let shared = Arc::new(Shared { url, settings, link, closed: tokio_util::sync::CancellationToken::new() });
        tokio::spawn(supervise(Arc::downgrade(&shared), shared.closed.clone()));
        Ok(Self { shared, replies: tokio::sync::Mutex::new(None) })
    }

    fn settings(&self) -> &BrokerSettings {
        &self.shared.settings
    }

    /// The current connection; while a reconnection is under way, waits a little for it.
    async fn link(&self) -> Result<Arc<Link>, QueueError> {
        let mut watch = self.shared.link.subscribe();
        let deadline = tokio::time::Instant::now() + LINK_WAIT;
        loop {
            let link = watch.borrow_and_update().clone();
            if link.connection.status().connected() {
                return Ok(link);
            }
            if tokio::time::timeout_at(deadline, watch.changed()).await.is_err() {
                return Err(QueueError::Unavailable("not connected to RabbitMQ (reconnecting)".into()));
            }
        }
    }
}

/// Watches the current connection and replaces it with a new one when it breaks, trying again
/// with backoff for as long as the broker is alive (an outage of any length ends in a reconnect;
/// `/ready` says the queue is down meanwhile).
async fn supervise(shared: std::sync::Weak<Shared>, closed: tokio_util::sync::CancellationToken) {
    loop {
        let Some(link) = shared.upgrade().map(|s| s.link.borrow().clone()) else { return };
        let mut events = link.connection.events_listener();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while link.connection.status().connected() {
            tokio::select! {
                () = closed.cancelled() => return,
                Some(_) = events.next() => {}
                _ = tick.tick() => {}
            }
        }
        drop(link);
        tracing::warn!("the RabbitMQ connection broke; reconnecting");
        let mut delay = Duration::from_millis(250);
        loop {
            tokio::select! {
                () = closed.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            let Some(s) = shared.upgrade() else { return };
            // Bounded: a broker that accepts the connection and then says nothing must not
            // stop the attempts.
            let opened = tokio::time::timeout(OPEN_TIMEOUT, Link::open(&s.url, &s.settings))
                .await
                .unwrap_or_else(|_| Err(QueueError::Unavailable(format!("no answer within {OPEN_TIMEOUT:?}"))));
            match opened {
                Ok(link) => {
                    s.link.send_replace(Arc::new(link));
                    tracing::info!("reconnected to RabbitMQ");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "cannot reconnect to RabbitMQ yet");
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    }
}

impl Link {
    /// Opens a connection, its confirm-mode publishing channel, and declares the topology.
    async fn open(url: &secrecy::SecretString, settings: &Arc<BrokerSettings>) -> Result<Self, QueueError> {
        let unreachable = |e: lapin::Error| QueueError::Unavailable(format!("{}: {e}", redact_url(url)));
        let properties = ConnectionProperties::default().with_connection_name("ragpipe".into());
        let connection = Connection::connect(url.expose_secret(), properties).await.map_err(unreachable)?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        let link = Self { connection, publisher: Publisher { channel, settings: settings.clone() } };
        link.declare_topology().await?;
        Ok(link)
    }

    async fn declare_topology(&self) -> Result<(), QueueError> {
        let s = &self.publisher.settings;
        let ch = &self.publisher.channel;
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        for (name, kind) in [
            (&s.ingest_exchange, ExchangeKind::Direct),
            (&s.dead_letter_exchange, ExchangeKind::Fanout),
            (&s.events_exchange, ExchangeKind::Topic),
        ] {
            ch.exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .map_err(|e| protocol(format!("declare exchange `{name}`"), e))?;
        }
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), long_string("quorum"));
        self.declare_queue(&s.dead_letter_queue, dead_args).await?;
        ch.queue_bind(
            s.dead_letter_queue.as_str().into(),
            s.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| protocol(format!("bind `{}`", s.dead_letter_queue), e))?;

        let mut ingest_args = FieldTable::default();
        ingest_args.insert("x-queue-type".into(), long_string("quorum"));
        ingest_args.insert("x-dead-letter-exchange".into(), long_string(&s.dead_letter_exchange));
        ingest_args
            .insert("x-delivery-limit".into(), AMQPValue::LongInt(i32::try_from(s.delivery_limit).unwrap_or(i32::MAX)));
        self.declare_queue(&s.ingest_queue, ingest_args).await?;
        ch.queue_bind(
            s.ingest_queue.as_str().into(),
            s.ingest_exchange.as_str().into(),
            s.ingest_routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| protocol(format!("bind `{}`", s.ingest_queue), e))?;
        self.declare_queue(&s.query_queue, FieldTable::default()).await
    }

    async fn declare_queue(&self, name: &str, args: FieldTable) -> Result<(), QueueError> {
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        self.publisher
            .channel
            .queue_declare(name.into(), options, args)
            .await
            .map(|_| ())
            .map_err(|e| protocol(format!("declare queue `{name}` (if it exists with other arguments, delete it)"), e))
    }

    /// Consumes `queue` with manual acks and `prefetch` on a channel of its own (returned too);
    /// the stream keeps the channel open.
    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<(Channel, impl futures::Stream<Item = Result<lapin::message::Delivery, QueueError>> + use<>), QueueError>
    {
        let channel = self.connection.create_channel().await.map_err(unavailable)?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(unavailable)?;
        let tag = format!("ragpipe-{}", uuid::Uuid::new_v4());
        let consumer = channel
            .basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| protocol(format!("consume `{queue}`"), e))?;
        let kept = channel.clone();
        Ok((
            channel,
            consumer.map(move |item| {
                // The stream owns the channel so it stays open as long as someone consumes.
                let _keep = &kept;
                item.map_err(unavailable)
            }),
        ))
    }
}

impl Publisher {
    /// Publishes on `channel` (default: the shared publishing channel) and waits for the confirm.
    async fn publish(
        &self,
        channel: Option<&Channel>,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), QueueError> {
        let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
        let channel = channel.unwrap_or(&self.channel);
        // Sending is bounded too: a publish racing a connection break may never be written.
        let confirmed = async {
            channel.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await?.await
        };
        let timeout = Duration::from_secs(self.settings.confirm_timeout_secs);
        match tokio::time::timeout(timeout, confirmed).await {
            Err(_) => Err(QueueError::NotConfirmed(format!("no confirm within {timeout:?}"))),
            Ok(Err(e)) => Err(unavailable(e)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(QueueError::NotConfirmed(format!(
                "unroutable: no queue is bound to exchange `{exchange}` with key `{routing_key}`"
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(QueueError::NotConfirmed("the broker refused the message".into())),
        }
    }
}

/// The upload as a [`Delivery`]: its attempt from the quorum queue's `x-delivery-count`.
fn upload_delivery(delivery: lapin::message::Delivery, publisher: &Publisher) -> Delivery {
    let earlier = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(amqp_int)
        .unwrap_or(0);
    let attempt = u32::try_from(earlier).unwrap_or(u32::MAX).saturating_add(1);
    let settle = AmqpSettle { acker: delivery.acker, publisher: publisher.clone() };
    Delivery::new(delivery.data, attempt, Box::new(settle))
}

fn amqp_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// The `reason` of the first `x-death` entry RabbitMQ adds when it dead-letters a message.
fn x_death_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
    match first.inner().get("reason")? {
        AMQPValue::LongString(reason) => Some(reason.to_string()),
        AMQPValue::ShortString(reason) => Some(reason.as_str().to_owned()),
        _ => None,
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn unavailable(error: lapin::Error) -> QueueError {
    QueueError::Unavailable(error.to_string())
}

fn protocol(what: String, error: lapin::Error) -> QueueError {
    QueueError::Protocol(format!("{what}: {error}"))
}

fn json_properties() -> BasicProperties {
    // delivery_mode 2 = persistent.
    BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2)
}

struct AmqpSettle {
    acker: lapin::Acker,
    publisher: Publisher,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&self) -> Result<(), QueueError> {
        settle(self.acker.ack(BasicAckOptions::default())).await
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), QueueError> {
        // RabbitMQ has no delayed requeue: hold the message (it counts against the prefetch, which
        // also slows intake while a dependency struggles), then return it. A broken connection
        // meanwhile returns it too.
        let acker = self.acker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let options = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            if let Err(error) = settle(acker.nack(options)).await {
                tracing::warn!(%error, "requeue failed; the broker redelivers on reconnect");
            }
        });
        Ok(())
    }

    async fn dead_letter(&self, body: &[u8], reason: &DeadLetterReason) -> Result<(), QueueError> {
        let s = &self.publisher.settings;
        let mut headers = FieldTable::default();
        headers.insert("x-ragpipe-code".into(), long_string(&reason.code));
        headers.insert("x-ragpipe-reason".into(), long_string(&reason.reason));
        headers.insert("x-ragpipe-retryable".into(), AMQPValue::Boolean(reason.retryable));
        headers.insert("x-ragpipe-queue".into(), long_string(&s.ingest_queue));
        let properties = json_properties().with_headers(headers);
        // Copy first, then ack: a crash between the two leaves a copy and a redelivery, never a loss.
        self.publisher.publish(None, &s.dead_letter_exchange, &s.ingest_queue, body, properties, true).await?;
        self.ack().await
    }
}

/// The AMQP `type` of a streamed part of a reply.
pub const PART_TYPE: &str = "ragpipe.reply.part";
/// The AMQP `type` of a final reply.
pub const REPLY_TYPE: &str = "ragpipe.reply";

/// How long an ack, a nack or an unconfirmed reply may take to be written before it counts as
/// failed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits an ack or nack, bounded: one racing a connection break may never be written, and the
/// message is redelivered anyway once the connection is gone.
async fn settle(sent: impl std::future::Future<Output = lapin::Result<bool>>) -> Result<(), QueueError> {
    written(sent, "not settled").await
}

/// Awaits a frame being written, for at most [`SETTLE_TIMEOUT`]; `what` names the failure.
async fn written<T>(sent: impl std::future::Future<Output = lapin::Result<T>>, what: &str) -> Result<(), QueueError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, sent).await {
        Ok(result) => result.map(|_| ()).map_err(unavailable),
        Err(_) => Err(QueueError::Unavailable(format!("{what} within {SETTLE_TIMEOUT:?}: connection lost"))),
    }
}

/// Sends a query's reply (and any streamed parts before it) to its `reply_to`, then acks the
/// request.
///
/// Replies go out on the channel the request came in on, which is not in confirm mode: unlike
/// an upload or an event, a reply is worth nothing once its requester is gone, so a confirm
/// could only say that the broker received it — and the broker handles a channel's frames in
/// order, so it has the reply before it sees the request's ack written after it. Unconfirmed,
/// a reply costs the broker one frame less and the request is settled a round trip sooner.
struct AmqpReply {
    channel: Channel,
    acker: lapin::Acker,
    reply_to: String,
    correlation_id: Option<String>,
}

impl AmqpReply {
    async fn publish(&self, body: &[u8], kind: &str) -> Result<(), QueueError> {
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into()).with_type(kind.into());
        if let Some(id) = &self.correlation_id {
            properties = properties.with_correlation_id(id.as_str().into());
        }
        let options = BasicPublishOptions::default();
        // Bounded: a publish racing a connection break may never be written.
        let sent = async {
            self.channel.basic_publish("".into(), self.reply_to.as_str().into(), options, body, properties).await?.await
        };
        written(sent, "reply not written").await
    }
}

#[async_trait]
impl Reply for AmqpReply {
    async fn send_part(&self, body: &[u8]) -> Result<(), QueueError> {
        // Written before the next part is sent, on one channel: parts keep their order.
        self.publish(body, PART_TYPE).await
    }

    async fn send(&self, body: &[u8]) -> Result<(), QueueError> {
        let sent = self.publish(body, REPLY_TYPE).await;
        // Acked either way: a reply that could not be sent is not retried (the client times out).
        sent.and(self.discard().await)
    }

    async fn discard(&self) -> Result<(), QueueError> {
        settle(self.acker.ack(BasicAckOptions::default())).await
    }
}

#[async_trait]
impl UploadQueue for AmqpBroker {
    async fn publish(&self, body: &[u8]) -> Result<(), QueueError> {
        let s = self.settings();
        let link = self.link().await?;
        link.publisher.publish(None, &s.ingest_exchange, &s.ingest_routing_key, body, json_properties(), true).await
    }

    async fn consume(&self) -> Result<Deliveries, QueueError> {
        let s = self.settings();
        let link = self.link().await?;
        let publisher = link.publisher.clone();
        let (_, stream) = link.consume(&s.ingest_queue, s.prefetch).await?;
        Ok(stream.map(move |item| item.map(|d| upload_delivery(d, &publisher))).boxed())
    }

    async fn has_consumers(&self) -> Result<bool, QueueError> {
        let channel = self.link().await?.connection.create_channel().await.map_err(unavailable)?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let name = &self.settings().ingest_queue;
        let queue = channel
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(|e| protocol(format!("inspect `{name}`"), e))?;
        let _ = channel.close(200, "done".into()).await;
        Ok(queue.consumer_count() > 0)
    }

    async fn depths(&self) -> Result<QueueDepths, QueueError> {
        let channel = self.link().await?.connection.create_channel().await.map_err(unavailable)?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let mut counts = [0u64; 3];
        let s = self.settings();
        for (slot, name) in counts.iter_mut().zip([&s.ingest_queue, &s.dead_letter_queue, &s.query_queue]) {
            let queue = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .map_err(|e| protocol(format!("inspect `{name}`"), e))?;
            *slot = u64::from(queue.message_count());
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(QueueDepths { ingest: counts[0], in_progress: None, dead: counts[1], query: counts[2] })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        // Taken without acking, then the channel is closed: RabbitMQ puts them all back.
        let channel = self.link().await?.connection.create_channel().await.map_err(unavailable)?;
        let queue = &self.settings().dead_letter_queue;
        let mut out = Vec::new();
        while out.len() < limit {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| protocol(format!("read `{queue}`"), e))?;
            let Some(message) = got else { break };
            let headers = message.delivery.properties.headers().clone().unwrap_or_default();
            let text = |key: &str| {
                headers.inner().get(key).and_then(|v| v.as_long_string()).map(ToString::to_string).unwrap_or_default()
            };
            let retryable = matches!(headers.inner().get("x-ragpipe-retryable"), Some(AMQPValue::Boolean(true)));
            let mut reason =
                DeadLetterReason { code: text("x-ragpipe-code"), reason: text("x-ragpipe-reason"), retryable };
            if reason.code.is_empty() {
                // Dead-lettered by RabbitMQ itself (the delivery limit): its reason is in x-death.
                let death = x_death_reason(&headers).unwrap_or_else(|| "unknown".into());
                reason.reason = format!("dead-lettered by RabbitMQ: {death}");
                reason.code = death;
            }
            out.push(DeadLetter { body: message.delivery.data, reason });
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(out)
    }
}

#[async_trait]
impl EventBus for AmqpBroker {
    async fn publish(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        // Not mandatory: an event nobody listens to is not an error.
        let exchange = &self.settings().events_exchange;
        self.link().await?.publisher.publish(None, exchange, routing_key, body, json_properties(), false).await
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Events, QueueError> {
        let channel = self.link().await?.connection.create_channel().await.map_err(unavailable)?;
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.map_err(unavailable)?;
        let name: ShortString = queue.name().clone();
        for pattern in patterns {
            channel
                .queue_bind(
                    name.clone(),
                    self.settings().events_exchange.as_str().into(),
                    (*pattern).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| protocol(format!("bind events `{pattern}`"), e))?;
        }
        let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let consumer =
            channel.basic_consume(name, "".into(), options, FieldTable::default()).await.map_err(unavailable)?;
        let stream = consumer.map(move |item| {
            let _keep = &channel;
            item.map(|d| EventMessage { routing_key: d.routing_key.as_str().to_owned(), body: d.data })
                .map_err(unavailable)
        });
        Ok(stream.boxed())
    }
}

#[async_trait]
impl RequestReply for AmqpBroker {
    async fn serve(&self) -> Result<Requests, QueueError> {
        let s = self.settings();
        let link = self.link().await?;
        let (channel, stream) = link.consume(&s.query_queue, s.query_prefetch).await?;
        // Deliveries are taken off the consumer as they arrive, so a request's `expiration` counts
        // from its delivery even while it waits behind others for a free worker slot (RabbitMQ
        // itself drops requests that expire in the queue). The prefetch bounds the buffer.
        let (tx, rx) = tokio::sync::mpsc::channel(usize::from(s.query_prefetch.max(1)));
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(item) => {
                            if tx.send((tokio::time::Instant::now(), item)).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        let requests = receiver_stream(rx).then(move |(received, item)| {
            let channel = channel.clone();
            async move {
                let delivery = item?;
                let props = &delivery.properties;
                let reply_to = props.reply_to().as_ref().map(|r| r.as_str().to_owned());
                let correlation_id = props.correlation_id().as_ref().map(|c| c.as_str().to_owned());
                let deadline = props
                    .expiration()
                    .as_ref()
                    .and_then(|e| e.as_str().trim().parse::<u64>().ok())
                    .map(|ms| received + Duration::from_millis(ms));
                let reply: Option<Box<dyn Reply>> = match reply_to {
                    Some(reply_to) => {
                        Some(Box::new(AmqpReply { channel, acker: delivery.acker, reply_to, correlation_id }))
                    }
                    None => {
                        // Nowhere to answer: settle it now.
                        delivery.acker.ack(BasicAckOptions::default()).await.map_err(unavailable)?;
                        None
                    }
                };
                Ok(Request { body: delivery.data, reply, deadline })
            }
        });
        Ok(requests.boxed())
    }

    async fn request_parts(&self, body: &[u8], timeout: Duration) -> Result<ReplyMessages, QueueError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let replies = self.replies().await?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        replies.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(correlation_id.clone(), tx);
        let awaiting = Awaiting { waiting: replies.waiting.clone(), correlation_id: correlation_id.clone() };
        // Expiring when this requester stops waiting: nobody works on a request nobody awaits.
        let expiration = timeout.as_millis().max(1).to_string();
        let properties = json_properties()
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_expiration(expiration.as_str().into());
        let queue = &self.settings().query_queue;
        replies.publisher.publish(Some(&replies.channel), "", queue, body, properties, true).await?;
        let messages = futures::stream::unfold(Some((rx, awaiting)), move |state| async move {
            let (mut rx, awaiting) = state?;
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(message)) => {
                    let last = message.last;
                    Some((Ok(message), (!last).then_some((rx, awaiting))))
                }
                Ok(None) => Some((Err(QueueError::Unavailable("reply channel closed".into())), None)),
                Err(_) => Some((Err(QueueError::Timeout(timeout)), None)),
            }
        });
        Ok(messages.boxed())
    }
}

impl AmqpBroker {
    /// The reply channel, opened (again) when there is none or it broke.
    async fn replies(&self) -> Result<Arc<Replies>, QueueError> {
        let mut slot = self.replies.lock().await;
        if let Some(replies) = slot.as_ref()
            && replies.channel.status().connected()
        {
            return Ok(replies.clone());
        }
        let link = self.link().await?;
        let channel = link.connection.create_channel().await.map_err(unavailable)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let mut consumer = channel
            .basic_consume(DIRECT_REPLY_TO.into(), "".into(), options, FieldTable::default())
            .await
            .map_err(unavailable)?;
        let waiting: Arc<Waiting> = Arc::default();
        let routes = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let props = &delivery.properties;
                let Some(id) = props.correlation_id().as_ref().map(|c| c.as_str().to_owned()) else { continue };
                let last = props.kind().as_ref().map(ShortString::as_str) != Some(PART_TYPE);
                let routes = routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // (A reply for a requester that gave up finds nobody: dropped.)
                if let Some(sender) = routes.get(&id) {
                    let _ = sender.send(ReplyMessage { body: delivery.data, last });
                }
            }
            // The channel is gone: every request still waiting hears so at once.
            routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        });
        let replies = Arc::new(Replies { channel, waiting, publisher: link.publisher.clone() });
        *slot = Some(replies.clone());
        Ok(replies)
    }
}

#[async_trait]
impl Health for AmqpBroker {
    fn is_connected(&self) -> bool {
        self.shared.link.borrow().connection.status().connected()
    }

    async fn close(&self) {
        self.shared.closed.cancel();
        let link = self.shared.link.borrow().clone();
        if let Err(error) = link.connection.close(200, "shutting down".into()).await {
            tracing::debug!(%error, "closing the broker connection");
        }
    }
}
