//! Each collection's change-log position (its last sequence number), read once for every query
//! waiting for it.
//!
//! Every query reads the position of the collections it searches, because it keys the caches
//! (see `query::cache`): a document committed before the query arrived must change the key. Under
//! load that is one store round trip per query for a number that rarely moves. Here one read
//! serves every query that was waiting when it *began*: a query that arrives while a read is
//! under way waits for the next one, which begins after it arrived and so sees every commit
//! made before that. At most one read per collection is under way at a time; with queries
//! arriving faster than a read takes, each read serves many of them, and a lone query waits for
//! no more than its own read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Store, StoreError};

type Waiter = oneshot::Sender<Result<i64, String>>;

/// Shared reads of change-log positions from one store.
pub struct LogPositions {
    store: Arc<dyn Store>,
    /// Per collection: the queries waiting for a read that has not begun yet, and whether a read
    /// is under way (an entry exists exactly while one is).
    waiting: Mutex<HashMap<i64, Vec<Waiter>>>,
    reads: AtomicU64,
}

impl LogPositions {
    /// Positions read from `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self { store, waiting: Mutex::new(HashMap::new()), reads: AtomicU64::new(0) })
    }

    /// The collection's last change-log sequence number, as a read that began after this call
    /// did saw it.
    ///
    /// # Errors
    /// The store could not be read.
    pub async fn last_log_seq(self: &Arc<Self>, collection_id: i64) -> Result<i64, StoreError> {
        let (sender, receiver) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match waiting.get_mut(&collection_id) {
                Some(next) => {
                    next.push(sender);
                    false
                }
                None => {
                    waiting.insert(collection_id, vec![sender]);
                    true
                }
            }
        };
        if start {
            // A task of its own, so no query waits for reads made for others after its own.
            tokio::spawn(self.clone().read_rounds(collection_id));
        }
        match receiver.await {
            Ok(result) => result.map_err(StoreError::Unavailable),
            Err(_) => Err(StoreError::Unavailable("the change-log position read was abandoned".into())),
        }
    }

    /// Reads done so far (each served one or more queries).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Reads the position for whoever waits, round after round, until nobody does.
    async fn read_rounds(self: Arc<Self>, collection_id: i64) {
        // Should this task end early (a panic, the runtime shutting down), its waiters are told
        // and the next query starts reads afresh instead of waiting for this task forever.
        let mut rounds = Rounds { positions: &self, collection_id, finished: false };
        while let Some(round) = rounds.next() {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let result = self.store.last_log_seq(collection_id).await.map_err(|e| match e {
                StoreError::Unavailable(message) => message,
                other => other.to_string(),
            });
            for waiter in round {
                // (A query abandoned at its deadline no longer listens.)
                let _ = waiter.send(result.clone());
            }
        }
    }
}

/// The rounds of one collection's reading task; removes the collection's entry when they end.
struct Rounds<'a> {
    positions: &'a LogPositions,
    collection_id: i64,
    /// The entry was removed because nobody waited: a new one may belong to a new task.
    finished: bool,
}

impl Rounds<'_> {
    /// The queries waiting now, or `None` (and the entry removed) when there are none.
    fn next(&mut self) -> Option<Vec<Waiter>> {
        let mut waiting = self.positions.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = waiting.get_mut(&self.collection_id).map(std::mem::take).unwrap_or_default();
        if next.is_empty() {
            waiting.remove(&self.collection_id);
            self.finished = true;
            return None;
        }
        Some(next)
    }
}

impl Drop for Rounds<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Ended early: the waiters' senders drop here, and they are told.
        self.positions.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.collection_id);
    }
}
