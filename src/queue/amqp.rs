//! [`Broker`] over RabbitMQ with lapin.
//!
//! Topology (declared idempotently on connect, names from `[broker]`):
//! - `ingest_exchange` (direct) --`ingest_routing_key`--> `ingest_queue` (durable quorum queue with
//!   `x-delivery-limit` and `x-dead-letter-exchange`);
//! - `dead_letter_exchange` (fanout) --> `dead_letter_queue` (quorum);
//! - `query_queue` (durable, default exchange, standard RPC; direct reply-to works);
//! - `events_exchange` (topic) for `document.*` and `index.*`.
//!
//! Every publish goes through a channel in confirm mode and waits for the broker's confirm.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use secrecy::ExposeSecret;

use super::{Acker, Broker, Deliveries, Delivery, EventMessage, Events, QueueDepths, QueueError};
use crate::config::{BrokerSettings, redact_url};
use crate::error::Failure;

/// RabbitMQ's pseudo-queue for direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A RabbitMQ connection with the ragpipe topology declared.
pub struct AmqpBroker {
    connection: Connection,
    publisher: Channel,
    settings: BrokerSettings,
}

impl AmqpBroker {
    /// Connects, opens a confirm-mode publishing channel and declares the topology.
    ///
    /// # Errors
    /// No URL configured, the broker is unreachable, or a declaration conflicts with an existing
    /// queue of other arguments (RabbitMQ's PRECONDITION_FAILED: delete the queue or rename it).
    pub async fn connect(settings: &BrokerSettings) -> Result<Self, QueueError> {
        let url = settings.url.as_ref().ok_or_else(|| QueueError::Unavailable("broker.url is not set".into()))?;
        let properties = ConnectionProperties::default().with_connection_name("ragpipe".into());
        let connection = Connection::connect(url.expose_secret(), properties)
            .await
            .map_err(|e| QueueError::Unavailable(format!("{}: {e}", redact_url(url))))?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        let broker = Self { connection, publisher, settings: settings.clone() };
        broker.declare_topology().await?;
        Ok(broker)
    }

    async fn declare_topology(&self) -> Result<(), QueueError> {
        let s = &self.settings;
        let ch = &self.publisher;
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
            .queue_declare(name.into(), options, args)
            .await
            .map(|_| ())
            .map_err(|e| protocol(format!("declare queue `{name}` (if it exists with other arguments, delete it)"), e))
    }

    async fn publish(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), QueueError> {
        let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
        let confirm = channel
            .basic_publish(exchange.into(), routing_key.into(), options, body, properties)
            .await
            .map_err(unavailable)?;
        let timeout = Duration::from_secs(self.settings.confirm_timeout_secs);
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(QueueError::NotConfirmed(format!("no confirm within {timeout:?}"))),
            Ok(Err(e)) => Err(unavailable(e)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(QueueError::NotConfirmed(format!(
                "unroutable: no queue is bound to exchange `{exchange}` with key `{routing_key}`"
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(QueueError::NotConfirmed("the broker refused the message".into())),
        }
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Deliveries, QueueError> {
        let channel = self.connection.create_channel().await.map_err(unavailable)?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(unavailable)?;
        let tag = format!("ragpipe-{}", uuid::Uuid::new_v4());
        let consumer = channel
            .basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| protocol(format!("consume `{queue}`"), e))?;
        let stream = consumer.map(move |item| {
            // The stream owns the channel so it stays open as long as someone consumes.
            let _keep = &channel;
            item.map(convert_delivery).map_err(unavailable)
        });
        Ok(stream.boxed())
    }
}

fn convert_delivery(delivery: lapin::message::Delivery) -> Delivery {
    let props = &delivery.properties;
    let delivery_count =
        props.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count")).and_then(amqp_int).unwrap_or(0);
    Delivery {
        redelivered: delivery.redelivered,
        delivery_count: u32::try_from(delivery_count).unwrap_or(u32::MAX),
        reply_to: props.reply_to().as_ref().map(|s| s.as_str().to_owned()),
        correlation_id: props.correlation_id().as_ref().map(|s| s.as_str().to_owned()),
        acker: Box::new(AmqpAcker(delivery.acker)),
        body: delivery.data,
    }
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

struct AmqpAcker(lapin::Acker);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        self.0.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(unavailable)
    }

    async fn requeue(&self) -> Result<(), QueueError> {
        let options = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
        self.0.nack(options).await.map(|_| ()).map_err(unavailable)
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn publish_upload(&self, body: &[u8]) -> Result<(), QueueError> {
        let s = &self.settings;
        self.publish(&self.publisher, &s.ingest_exchange, &s.ingest_routing_key, body, json_properties(), true).await
    }

    async fn publish_event(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        // Not mandatory: an event nobody listens to is not an error.
        self.publish(&self.publisher, &self.settings.events_exchange, routing_key, body, json_properties(), false).await
    }

    async fn dead_letter(&self, body: &[u8], failure: &Failure) -> Result<(), QueueError> {
        let mut headers = FieldTable::default();
        headers.insert("x-ragpipe-code".into(), long_string(&failure.code));
        headers.insert("x-ragpipe-reason".into(), long_string(&failure.reason));
        headers.insert("x-ragpipe-retryable".into(), AMQPValue::Boolean(failure.is_transient()));
        headers.insert("x-ragpipe-queue".into(), long_string(&self.settings.ingest_queue));
        let properties = json_properties().with_headers(headers);
        let s = &self.settings;
        self.publish(&self.publisher, &s.dead_letter_exchange, &s.ingest_queue, body, properties, true).await
    }

    async fn consume_uploads(&self) -> Result<Deliveries, QueueError> {
        self.consume(&self.settings.ingest_queue, self.settings.prefetch).await
    }

    async fn consume_queries(&self) -> Result<Deliveries, QueueError> {
        self.consume(&self.settings.query_queue, self.settings.query_prefetch).await
    }

    async fn reply(&self, reply_to: &str, correlation_id: Option<&str>, body: &[u8]) -> Result<(), QueueError> {
        let mut properties = BasicProperties::default().with_content_type("application/json".into());
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.into());
        }
        self.publish(&self.publisher, "", reply_to, body, properties, false).await
    }

    async fn subscribe_events(&self, patterns: &[&str]) -> Result<Events, QueueError> {
        let channel = self.connection.create_channel().await.map_err(unavailable)?;
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.map_err(unavailable)?;
        let name: ShortString = queue.name().clone();
        for pattern in patterns {
            channel
                .queue_bind(
                    name.clone(),
                    self.settings.events_exchange.as_str().into(),
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

    async fn request(&self, body: &[u8], timeout: Duration) -> Result<Vec<u8>, QueueError> {
        let channel = self.connection.create_channel().await.map_err(unavailable)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let mut replies = channel
            .basic_consume(DIRECT_REPLY_TO.into(), "".into(), options, FieldTable::default())
            .await
            .map_err(unavailable)?;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let properties =
            json_properties().with_reply_to(DIRECT_REPLY_TO.into()).with_correlation_id(correlation_id.as_str().into());
        self.publish(&channel, "", &self.settings.query_queue, body, properties, true).await?;
        let wait = async {
            while let Some(item) = replies.next().await {
                let delivery = item.map_err(unavailable)?;
                let matches = delivery.properties.correlation_id().as_ref().map(ShortString::as_str)
                    == Some(correlation_id.as_str());
                if matches {
                    return Ok(delivery.data);
                }
            }
            Err(QueueError::Unavailable("reply channel closed".into()))
        };
        let result = tokio::time::timeout(timeout, wait).await.unwrap_or(Err(QueueError::Timeout(timeout)));
        // Closing is best effort: the reply (or the timeout) is what the caller needs.
        let _ = channel.close(200, "done".into()).await;
        result
    }

    async fn depths(&self) -> Result<QueueDepths, QueueError> {
        let channel = self.connection.create_channel().await.map_err(unavailable)?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let mut counts = [0u32; 3];
        let s = &self.settings;
        for (slot, name) in counts.iter_mut().zip([&s.ingest_queue, &s.dead_letter_queue, &s.query_queue]) {
            let queue = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .map_err(|e| protocol(format!("inspect `{name}`"), e))?;
            *slot = queue.message_count();
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(QueueDepths { ingest: counts[0], dead: counts[1], query: counts[2] })
    }

    fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    async fn close(&self) {
        if let Err(error) = self.connection.close(200, "shutting down".into()).await {
            tracing::debug!(%error, "closing the broker connection");
        }
    }
}
