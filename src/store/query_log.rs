//! The query log, written behind the replies. Entries wait in a bounded queue in memory; one
//! writer takes an entry, waits 50 ms for more to gather (up to 256), and stores them in one
//! statement, so a busy worker costs the store at most ~20 commits a second instead of one per
//! query. The log is analytics: PostgreSQL commits it asynchronously (no wait for the disk), and
//! it never delays or fails a reply: when the store falls so far behind that the queue is full,
//! entries are dropped and counted (`ragpipe_errors_total{code="query_log_lost"}`), not waited
//! for.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{QUERY_LOG_ROWS_PER_INSERT, QueryLogEntry, Store};
use crate::telemetry::metrics;

/// Entries one write takes at most: one statement.
const BATCH: usize = QUERY_LOG_ROWS_PER_INSERT;

/// How long the writer waits after the first entry of a batch for more to join it.
const LINGER: Duration = Duration::from_millis(50);

/// The queue of entries not yet written, and its writer's end.
pub struct QueryLog {
    sender: mpsc::Sender<QueryLogEntry>,
    receiver: Mutex<Option<mpsc::Receiver<QueryLogEntry>>>,
    /// Entries are being dropped (the queue is full): warned once until a write succeeds, not
    /// once per query.
    dropping: AtomicBool,
}

impl QueryLog {
    /// A log holding up to `capacity` unwritten entries.
    pub fn new(capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        Self { sender, receiver: Mutex::new(Some(receiver)), dropping: AtomicBool::new(false) }
    }

    /// Queues `entry` for the writer; never waits.
    pub fn record(&self, entry: QueryLogEntry) {
        match self.sender.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::ERRORS.with_label_values(&["query_log_lost", "query"]).inc();
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!("query log queue full (the store is not keeping up): dropping entries");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::ERRORS.with_label_values(&["query_log_lost", "query"]).inc();
                tracing::debug!("query log closed: an entry after shutdown was dropped");
            }
        }
    }

    /// Writes queued entries to `store` until `stop`, then what is still queued, for at most
    /// `drain`. Only one writer runs per log: a second call returns at once.
    pub async fn write(&self, store: &dyn Store, stop: CancellationToken, drain: Duration) {
        let taken = self.receiver.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(mut receiver) = taken else {
            tracing::debug!("the query log already has a writer");
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                received = receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    // Let a busy worker's next entries join this write: one commit per
                    // `LINGER` at most, instead of one per round trip to the store.
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(LINGER) => {}
                    }
                    while batch.len() < BATCH && let Ok(entry) = receiver.try_recv() {
                        batch.push(entry);
                    }
                    self.write_batch(store, &mut batch).await;
                }
            }
        }
        // Shutdown: no new entries; what was queued is written if the store lets it in time.
        receiver.close();
        let rest = async {
            while receiver.recv_many(&mut batch, BATCH).await > 0 {
                self.write_batch(store, &mut batch).await;
            }
        };
        if tokio::time::timeout(drain, rest).await.is_err() {
            let left = batch.len() + receiver.len();
            metrics::ERRORS.with_label_values(&["query_log_lost", "query"]).inc_by(left as u64);
            tracing::warn!(left, "query log entries still unwritten at shutdown; left unwritten");
        }
    }

    /// Writes and empties `batch`; a failed write is logged and counted, never retried (the
    /// entries are analytics, and the next batch must not wait behind them).
    async fn write_batch(&self, store: &dyn Store, batch: &mut Vec<QueryLogEntry>) {
        match store.log_queries(batch).await {
            Ok(()) => {
                if self.dropping.swap(false, Ordering::Relaxed) {
                    tracing::info!("query log keeping up again");
                }
            }
            Err(error) => {
                metrics::ERRORS.with_label_values(&["query_log_lost", "query"]).inc_by(batch.len() as u64);
                tracing::warn!(%error, entries = batch.len(), "query log write failed");
            }
        }
        batch.clear();
    }
}
