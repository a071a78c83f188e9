//! The queue with no broker: a job table with leases in the embedded SQLite file, an event log
//! other processes on the machine follow, and request/reply inside the process.
//!
//! - **Uploads.** Publishing commits a row. A consumer *leases* up to `prefetch` jobs at a time
//!   (one `UPDATE … RETURNING`, atomic across processes), renews the leases while it works, and
//!   settles each: ack deletes the row, `retry_after` makes it visible again later, dead-letter
//!   moves it to `dead_letters` with the reason. A job whose consumer died (SIGKILL, power cut)
//!   becomes visible again when its lease expires; a job that came back more than
//!   `delivery_limit` times (as RabbitMQ counts: `delivery_limit + 1` deliveries) is
//!   dead-lettered with code `delivery_limit` instead of being handed out again, so a document
//!   that crashes the worker cannot crash it forever.
//! - **Events.** Publishing commits a row to `events`; subscribers read `id > cursor` in order.
//!   Ids are allocated under SQLite's single write lock, so they commit in id order and a
//!   subscriber never skips one. Subscribers in this process are woken at once; others poll.
//! - **Requests.** In-process only: `ragpipe query` in embedded mode runs the query role in its
//!   own process, so a request never needs to cross processes.
//!
//! Times are Unix milliseconds of the wall clock, which every process on the machine shares.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use sqlx::Row;
use tokio::sync::{Notify, mpsc, watch};

use super::{
    DeadLetter, DeadLetterReason, Deliveries, Delivery, EventBus, EventMessage, Events, Health, QueueDepths,
    QueueError, Reply, ReplyMessage, ReplyMessages, Request, RequestReply, Requests, Settle, UploadQueue,
    receiver_stream, topic_matches,
};
use crate::config::BrokerSettings;
use crate::embedded::Database;

/// How long events are kept for subscribers that fell behind.
const EVENT_RETENTION: Duration = Duration::from_secs(3600);
/// Events read per query by a subscriber.
const EVENT_PAGE: i64 = 512;
/// Rows per `INSERT` of [`UploadQueue::publish_all`] and [`EventBus::publish_all`] (4 and 3
/// parameters each, under SQLite's limit).
const JOBS_PER_INSERT: usize = 1000;

/// The embedded queue on one SQLite database.
pub struct EmbeddedQueue {
    db: Database,
    uploads: String,
    delivery_limit: u32,
    prefetch: usize,
    query_prefetch: usize,
    lease: Duration,
    poll: Duration,
    /// Wakes this process's consumers when it publishes a job.
    jobs_published: Arc<Notify>,
    /// The newest event id this process published: wakes its subscribers.
    last_event: watch::Sender<i64>,
    events_published: AtomicU64,
    /// In-process query servers; requests go round-robin to those still serving.
    servers: Mutex<Vec<mpsc::Sender<Request>>>,
    next_server: AtomicUsize,
    /// Wakes requesters waiting for a query role that is still starting.
    server_started: Notify,
}

/// How long a request waits for a query role of this process that is still starting.
const SERVER_START_WAIT: Duration = Duration::from_secs(2);

impl EmbeddedQueue {
    /// The queue in `db`, with the names and limits of `[broker]`.
    pub fn new(db: Database, settings: &BrokerSettings) -> Self {
        Self {
            db,
            uploads: settings.ingest_queue.clone(),
            delivery_limit: settings.delivery_limit,
            prefetch: usize::from(settings.prefetch),
            query_prefetch: usize::from(settings.query_prefetch),
            lease: Duration::from_secs(settings.lease_secs),
            poll: Duration::from_millis(settings.poll_ms),
            jobs_published: Arc::new(Notify::new()),
            last_event: watch::Sender::new(0),
            events_published: AtomicU64::new(0),
            servers: Mutex::new(Vec::new()),
            next_server: AtomicUsize::new(0),
            server_started: Notify::new(),
        }
    }

    async fn prune_events(&self) {
        let horizon = now_ms() - millis(EVENT_RETENTION);
        if let Err(error) =
            sqlx::query("DELETE FROM events WHERE published_at < ?1").bind(horizon).execute(self.db.writer()).await
        {
            tracing::debug!(%error, "pruning old events");
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn db_error(error: sqlx::Error) -> QueueError {
    QueueError::Unavailable(format!("embedded queue: {error}"))
}

/// One consumer's leases. Shared by its lease loop and the deliveries it handed out, so leases
/// are renewed until every delivery is settled, and released when all of them are gone.
struct Consumer {
    id: String,
    db: Database,
    queue: String,
    lease: Duration,
    held: Mutex<HashSet<i64>>,
    /// Wakes the lease loop when a delivery is settled (room for another).
    settled: Notify,
}

impl Consumer {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget(&self, job: i64) {
        self.held().remove(&job);
        self.settled.notify_one();
    }

    /// Leases up to `room` visible jobs: (id, body, attempts).
    async fn lease(&self, room: usize) -> Result<Vec<(i64, Vec<u8>, i64)>, QueueError> {
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE jobs SET lease_owner = ?1, visible_at = ?2 + ?3, attempts = attempts + 1
             WHERE id IN (SELECT id FROM jobs WHERE queue = ?4 AND visible_at <= ?2 ORDER BY id LIMIT ?5)
             RETURNING id, body, attempts",
        )
        .bind(&self.id)
        .bind(now)
        .bind(millis(self.lease))
        .bind(&self.queue)
        .bind(i64::try_from(room).unwrap_or(i64::MAX))
        .fetch_all(self.db.writer())
        .await
        .map_err(db_error)?;
        let mut jobs = rows
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("body")?, r.try_get("attempts")?)))
            .collect::<Result<Vec<(i64, Vec<u8>, i64)>, sqlx::Error>>()
            .map_err(db_error)?;
        jobs.sort_unstable_by_key(|job| job.0);
        self.held().extend(jobs.iter().map(|job| job.0));
        Ok(jobs)
    }

    /// Extends the leases of the jobs still held, and the heartbeat.
    async fn renew(&self) -> Result<(), QueueError> {
        let held: Vec<i64> = self.held().iter().copied().collect();
        let now = now_ms();
        let mut tx = self.db.begin_write().await.map_err(db_error)?;
        sqlx::query(
            "UPDATE jobs SET visible_at = ?1 WHERE lease_owner = ?2
               AND id IN (SELECT value FROM json_each(?3))",
        )
        .bind(now + millis(self.lease))
        .bind(&self.id)
        .bind(serde_json::to_string(&held).unwrap_or_else(|_| "[]".into()))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("UPDATE consumers SET heartbeat_at = ?1 WHERE id = ?2")
            .bind(now)
            .bind(&self.id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    /// Moves a job to the dead letters (it stays leased by us until then, so nobody else acts).
    async fn dead_letter(&self, job: i64, body: &[u8], reason: &DeadLetterReason) -> Result<(), QueueError> {
        let mut tx = self.db.begin_write().await.map_err(db_error)?;
        let attempts: Option<i64> =
            sqlx::query_scalar("DELETE FROM jobs WHERE id = ?1 AND lease_owner = ?2 RETURNING attempts")
                .bind(job)
                .bind(&self.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(attempts) = attempts else {
            // The lease expired and another consumer has the job now: it settles it.
            return Err(lease_lost(job));
        };
        sqlx::query(
            "INSERT INTO dead_letters (queue, body, code, reason, retryable, attempts, dead_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&self.queue)
        .bind(body)
        .bind(&reason.code)
        .bind(&reason.reason)
        .bind(i64::from(reason.retryable))
        .bind(attempts)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }
}

/// Gives `held` back at once and removes the consumer's heartbeat (it is going away).
async fn release(db: Database, consumer: String, held: Vec<i64>) {
    let released = sqlx::query(
        "UPDATE jobs SET lease_owner = NULL, visible_at = ?1 WHERE lease_owner = ?2
           AND id IN (SELECT value FROM json_each(?3))",
    )
    .bind(now_ms())
    .bind(&consumer)
    .bind(serde_json::to_string(&held).unwrap_or_else(|_| "[]".into()))
    .execute(db.writer())
    .await;
    let gone = sqlx::query("DELETE FROM consumers WHERE id = ?1").bind(&consumer).execute(db.writer()).await;
    if let Err(error) = released.and(gone) {
        tracing::warn!(%error, "releasing job leases; they expire by themselves");
    }
}

fn lease_lost(job: i64) -> QueueError {
    QueueError::Protocol(format!("job {job}: lease expired and another consumer took it over"))
}

/// Settles one leased job.
struct EmbeddedSettle {
    consumer: Arc<Consumer>,
    job: i64,
}

#[async_trait]
impl Settle for EmbeddedSettle {
    async fn ack(&self) -> Result<(), QueueError> {
        let c = &self.consumer;
        let done = sqlx::query("DELETE FROM jobs WHERE id = ?1 AND lease_owner = ?2")
            .bind(self.job)
            .bind(&c.id)
            .execute(c.db.writer())
            .await
            .map_err(db_error)?;
        c.forget(self.job);
        if done.rows_affected() == 0 { Err(lease_lost(self.job)) } else { Ok(()) }
    }

    async fn retry_after(&self, delay: Duration) -> Result<(), QueueError> {
        let c = &self.consumer;
        sqlx::query("UPDATE jobs SET lease_owner = NULL, visible_at = ?1 WHERE id = ?2 AND lease_owner = ?3")
            .bind(now_ms() + millis(delay))
            .bind(self.job)
            .bind(&c.id)
            .execute(c.db.writer())
            .await
            .map_err(db_error)?;
        c.forget(self.job);
        Ok(())
    }

    async fn dead_letter(&self, body: &[u8], reason: &DeadLetterReason) -> Result<(), QueueError> {
        let result = self.consumer.dead_letter(self.job, body, reason).await;
        if result.is_ok() || matches!(result, Err(QueueError::Protocol(_))) {
            self.consumer.forget(self.job);
        }
        result
    }
}

/// The consumer's loop: lease while there is room, renew held leases, stop when nobody listens
/// and every delivery is settled or dropped.
async fn lease_loop(
    consumer: Weak<Consumer>,
    tx: mpsc::Sender<Result<Delivery, QueueError>>,
    prefetch: usize,
    delivery_limit: u32,
    poll: Duration,
    published: Arc<Notify>,
) {
    let renew_every = consumer.upgrade().map_or(Duration::from_secs(10), |c| c.lease / 3);
    let mut next_renewal = tokio::time::Instant::now() + renew_every;
    loop {
        let Some(c) = consumer.upgrade() else { return };
        if tokio::time::Instant::now() >= next_renewal {
            if let Err(error) = c.renew().await {
                tracing::warn!(%error, "renewing job leases");
            }
            next_renewal = tokio::time::Instant::now() + renew_every;
        }
        let room = prefetch.saturating_sub(c.held().len());
        let mut leased_any = false;
        if room > 0 && !tx.is_closed() {
            match c.lease(room).await {
                Ok(jobs) => {
                    leased_any = !jobs.is_empty();
                    for (job, body, attempts) in jobs {
                        let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
                        // Returned `attempt - 1` times; RabbitMQ's limit counts returns.
                        if attempt > delivery_limit.saturating_add(1) {
                            let reason = DeadLetterReason {
                                code: "delivery_limit".into(),
                                reason: format!(
                                    "returned {} times without being settled (broker.delivery_limit is \
                                     {delivery_limit}): the worker crashed or was stopped while processing it",
                                    attempt - 1
                                ),
                                retryable: false,
                            };
                            if let Err(error) = c.dead_letter(job, &body, &reason).await {
                                tracing::warn!(%error, job, "dead-lettering a job over its delivery limit");
                            }
                            c.forget(job);
                            continue;
                        }
                        let settle = Box::new(EmbeddedSettle { consumer: c.clone(), job });
                        if tx.send(Ok(Delivery::new(body, attempt, settle))).await.is_err() {
                            // Nobody listens any more; the dropped delivery is released below.
                            c.forget(job);
                        }
                    }
                }
                Err(error) => {
                    if tx.send(Err(error)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if tx.is_closed() && c.held().is_empty() {
            return;
        }
        if leased_any {
            continue;
        }
        let wait = poll.min(next_renewal.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            () = published.notified() => {}
            () = c.settled.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = tx.closed(), if !tx.is_closed() => {}
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Nobody consumes and every delivery is settled or dropped: give back what is left (a
        // dropped, unsettled delivery) at once, like a closed AMQP channel.
        let held: Vec<i64> = self.held().drain().collect();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release(self.db.clone(), std::mem::take(&mut self.id), held));
        }
    }
}

#[async_trait]
impl UploadQueue for EmbeddedQueue {
    async fn publish(&self, body: &[u8]) -> Result<(), QueueError> {
        let now = now_ms();
        sqlx::query("INSERT INTO jobs (queue, body, visible_at, enqueued_at) VALUES (?1, ?2, ?3, ?3)")
            .bind(&self.uploads)
            .bind(body)
            .bind(now)
            .execute(self.db.writer())
            .await
            .map_err(db_error)?;
        self.jobs_published.notify_waiters();
        Ok(())
    }

    /// One statement (one commit, one turn of the write lock) for the whole list, in order: a
    /// bulk ingest's `ragpipe ingest` then takes SQLite's lock once per list instead of once per
    /// file, away from the worker that is ingesting them.
    async fn publish_all(&self, bodies: &[Vec<u8>]) -> Result<(), QueueError> {
        let now = now_ms();
        for part in bodies.chunks(JOBS_PER_INSERT) {
            let mut insert =
                sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO jobs (queue, body, visible_at, enqueued_at) ");
            insert.push_values(part, |mut row, body| {
                row.push_bind(&self.uploads).push_bind(body.as_slice()).push_bind(now).push_bind(now);
            });
            insert.build().execute(self.db.writer()).await.map_err(db_error)?;
        }
        self.jobs_published.notify_waiters();
        Ok(())
    }

    async fn consume(&self) -> Result<Deliveries, QueueError> {
        let consumer = Arc::new(Consumer {
            id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            db: self.db.clone(),
            queue: self.uploads.clone(),
            lease: self.lease,
            held: Mutex::new(HashSet::new()),
            settled: Notify::new(),
        });
        // Rows of consumers that died without saying so (SIGKILL) are only history by now.
        sqlx::query("DELETE FROM consumers WHERE heartbeat_at < ?1")
            .bind(now_ms() - 10 * millis(self.lease))
            .execute(self.db.writer())
            .await
            .map_err(db_error)?;
        sqlx::query("INSERT INTO consumers (id, queue, pid, heartbeat_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(&consumer.id)
            .bind(&self.uploads)
            .bind(i64::from(std::process::id()))
            .bind(now_ms())
            .execute(self.db.writer())
            .await
            .map_err(db_error)?;
        let (tx, rx) = mpsc::channel(self.prefetch.max(1));
        tokio::spawn(lease_loop(
            Arc::downgrade(&consumer),
            tx,
            self.prefetch,
            self.delivery_limit,
            self.poll,
            self.jobs_published.clone(),
        ));
        // The stream owns one reference: the loop runs while it or any delivery is alive.
        let stream = receiver_stream(rx).map(move |item| {
            let _keep = &consumer;
            item
        });
        Ok(stream.boxed())
    }

    async fn has_consumers(&self) -> Result<bool, QueueError> {
        // A live consumer renews its heartbeat every third of a lease.
        let horizon = now_ms() - millis(self.lease);
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM consumers WHERE queue = ?1 AND heartbeat_at > ?2")
            .bind(&self.uploads)
            .bind(horizon)
            .fetch_one(self.db.reader())
            .await
            .map_err(db_error)?;
        Ok(live > 0)
    }

    async fn depths(&self) -> Result<QueueDepths, QueueError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM jobs WHERE queue = ?1 AND lease_owner IS NULL) AS waiting,
                    (SELECT count(*) FROM jobs WHERE queue = ?1 AND lease_owner IS NOT NULL) AS leased,
                    (SELECT count(*) FROM dead_letters WHERE queue = ?1) AS dead",
        )
        .bind(&self.uploads)
        .fetch_one(self.db.reader())
        .await
        .map_err(db_error)?;
        let count = |name: &str| row.try_get::<i64, _>(name).map(|n| u64::try_from(n).unwrap_or(0)).map_err(db_error);
        Ok(QueueDepths {
            ingest: count("waiting")?,
            in_progress: Some(count("leased")?),
            dead: count("dead")?,
            query: 0,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let rows =
            sqlx::query("SELECT body, code, reason, retryable FROM dead_letters WHERE queue = ?1 ORDER BY id LIMIT ?2")
                .bind(&self.uploads)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(self.db.reader())
                .await
                .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let reason = DeadLetterReason {
                    code: row.try_get("code")?,
                    reason: row.try_get("reason")?,
                    retryable: row.try_get::<i64, _>("retryable")? != 0,
                };
                Ok(DeadLetter { body: row.try_get("body")?, reason })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_error)
    }
}

#[async_trait]
impl EventBus for EmbeddedQueue {
    async fn publish(&self, routing_key: &str, body: &[u8]) -> Result<(), QueueError> {
        let id: i64 =
            sqlx::query_scalar("INSERT INTO events (routing_key, body, published_at) VALUES (?1, ?2, ?3) RETURNING id")
                .bind(routing_key)
                .bind(body)
                .bind(now_ms())
                .fetch_one(self.db.writer())
                .await
                .map_err(db_error)?;
        self.last_event.send_replace(id);
        if self.events_published.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
            self.prune_events().await;
        }
        Ok(())
    }

    /// One statement for the whole list, in order (one turn of the write lock, which the
    /// worker's claims and writes wait for).
    async fn publish_all(&self, events: &[(&str, Vec<u8>)]) -> Result<(), QueueError> {
        let now = now_ms();
        for part in events.chunks(JOBS_PER_INSERT) {
            let mut insert =
                sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO events (routing_key, body, published_at) ");
            insert.push_values(part, |mut row, (key, body)| {
                row.push_bind(*key).push_bind(body.as_slice()).push_bind(now);
            });
            insert.push(" RETURNING id");
            let ids: Vec<i64> = insert.build_query_scalar().fetch_all(self.db.writer()).await.map_err(db_error)?;
            if let Some(&last) = ids.iter().max() {
                self.last_event.send_replace(last);
            }
            let before = self.events_published.fetch_add(part.len() as u64, Ordering::Relaxed);
            if before / 1000 != (before + part.len() as u64) / 1000 {
                self.prune_events().await;
            }
        }
        Ok(())
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Events, QueueError> {
        let mut cursor: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM events")
            .fetch_one(self.db.reader())
            .await
            .map_err(db_error)?;
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        let (db, poll, mut wake) = (self.db.clone(), self.poll, self.last_event.subscribe());
        let (tx, rx) = mpsc::channel(EVENT_PAGE as usize);
        tokio::spawn(async move {
            loop {
                let rows = sqlx::query("SELECT id, routing_key, body FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
                    .bind(cursor)
                    .bind(EVENT_PAGE)
                    .fetch_all(db.reader())
                    .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(error) => {
                        let _ = tx.send(Err(db_error(error))).await;
                        return;
                    }
                };
                let full_page = rows.len() as i64 == EVENT_PAGE;
                for row in rows {
                    let (Ok(id), Ok(routing_key), Ok(body)) =
                        (row.try_get::<i64, _>("id"), row.try_get::<String, _>("routing_key"), row.try_get("body"))
                    else {
                        continue;
                    };
                    cursor = id;
                    if patterns.iter().any(|p| topic_matches(p, &routing_key))
                        && tx.send(Ok(EventMessage { routing_key, body })).await.is_err()
                    {
                        return;
                    }
                }
                if full_page {
                    continue;
                }
                tokio::select! {
                    changed = wake.changed() => if changed.is_err() {
                        // The queue is gone from this process; keep polling for other processes.
                        tokio::time::sleep(poll).await;
                    },
                    () = tokio::time::sleep(poll) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(receiver_stream(rx).boxed())
    }
}

/// Replies through a channel to a requester in this process.
struct InProcessReply(mpsc::UnboundedSender<ReplyMessage>);

impl InProcessReply {
    fn deliver(&self, body: &[u8], last: bool) -> Result<(), QueueError> {
        self.0
            .send(ReplyMessage { body: body.to_vec(), last })
            .map_err(|_| QueueError::Protocol("the requester left".into()))
    }
}

#[async_trait]
impl Reply for InProcessReply {
    async fn send_part(&self, body: &[u8]) -> Result<(), QueueError> {
        self.deliver(body, false)
    }

    async fn send(&self, body: &[u8]) -> Result<(), QueueError> {
        self.deliver(body, true)
    }

    async fn discard(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

#[async_trait]
impl RequestReply for EmbeddedQueue {
    async fn serve(&self) -> Result<Requests, QueueError> {
        let (tx, rx) = mpsc::channel(self.query_prefetch.max(1));
        self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tx);
        self.server_started.notify_waiters();
        Ok(receiver_stream(rx).map(Ok).boxed())
    }

    async fn request_parts(&self, body: &[u8], timeout: Duration) -> Result<ReplyMessages, QueueError> {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let mut request =
            Request { body: body.to_vec(), reply: Some(Box::new(InProcessReply(reply_tx))), deadline: Some(deadline) };
        let handed_over = async {
            loop {
                // Registered before looking, so a role that starts in between still wakes us.
                let started_signal = self.server_started.notified();
                let mut started_signal = std::pin::pin!(started_signal);
                started_signal.as_mut().enable();
                let server = {
                    let mut servers = self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    servers.retain(|s| !s.is_closed());
                    if servers.is_empty() && started.elapsed() < SERVER_START_WAIT {
                        None
                    } else if servers.is_empty() {
                        return Err(QueueError::Unavailable(
                            "no query role runs in this process: with the embedded queue, queries are answered by \
                             the process that asks (`ragpipe query` starts one itself)"
                                .into(),
                        ));
                    } else {
                        let n = self.next_server.fetch_add(1, Ordering::Relaxed);
                        Some(servers[n % servers.len()].clone())
                    }
                };
                let Some(server) = server else {
                    // A query role of this process may be starting (`ragpipe query` spawns one).
                    let left = SERVER_START_WAIT.saturating_sub(started.elapsed());
                    let _ = tokio::time::timeout(left, started_signal).await;
                    continue;
                };
                match server.send(request).await {
                    Ok(()) => return Ok(()),
                    // That server stopped between the check and the send: try another.
                    Err(mpsc::error::SendError(back)) => request = back,
                }
            }
        };
        tokio::time::timeout_at(deadline, handed_over).await.unwrap_or(Err(QueueError::Timeout(timeout)))?;
        let messages = futures::stream::unfold(Some(reply_rx), move |state| async move {
            let mut rx = state?;
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(message)) => {
                    let last = message.last;
                    Some((Ok(message), (!last).then_some(rx)))
                }
                Ok(None) => Some((Err(QueueError::Unavailable("the query role stopped before replying".into())), None)),
                Err(_) => Some((Err(QueueError::Timeout(timeout)), None)),
            }
        });
        Ok(messages.boxed())
    }
}

#[async_trait]
impl Health for EmbeddedQueue {
    fn is_connected(&self) -> bool {
        !self.db.writer().is_closed()
    }

    async fn close(&self) {}
}
