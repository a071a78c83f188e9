//! In-process cache (moka) for embedded mode, with a TTL per entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::future::Cache as Moka;

use super::Cache;

#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A bounded in-process cache.
pub struct MemoryCache {
    inner: Moka<String, Entry>,
}

impl MemoryCache {
    /// A cache holding at most `capacity` entries.
    pub fn new(capacity: u64) -> Self {
        Self { inner: Moka::builder().max_capacity(capacity).expire_after(PerEntryTtl).build() }
    }

    /// Entries held, once pending evictions have run (moka evicts in the background).
    pub async fn len(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.entry_count()
    }

    /// Whether it holds nothing.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.inner.get(key).await.map(|e| e.bytes.to_vec()));
        }
        out
    }

    async fn set_many(&self, entries: &[(String, Vec<u8>)], ttl: Duration) {
        for (key, value) in entries {
            self.inner.insert(key.clone(), Entry { bytes: value.as_slice().into(), ttl }).await;
        }
    }
}
