//! Caches with per-entry TTLs: Redis when `[cache] url` is set, in-process (moka) otherwise.
//!
//! A cache is an optimisation, never a dependency: every failure degrades to a miss (and is
//! logged and counted), so an outage slows ragpipe down but never fails a document or a query.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::CacheSettings;

/// A byte cache with TTLs. Keys are given without the deployment prefix.
#[async_trait]
pub trait Cache: Send + Sync {
    /// Values of `keys`, `None` for misses (and for errors).
    async fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>>;
    /// Stores every entry with `ttl`. Errors are logged and swallowed.
    async fn set_many(&self, entries: &[(String, Vec<u8>)], ttl: Duration);

    /// Value of one key.
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.get_many(&[key.to_owned()]).await.into_iter().next().flatten()
    }
    /// Stores one entry.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        self.set_many(&[(key.to_owned(), value)], ttl).await;
    }
    /// Whether the cache answers now, for `/ready`; the error says why not. In-process caches
    /// always do.
    async fn ping(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The cache `[cache]` asks for: Redis for a `redis://` URL, in-process (moka) when there is
/// none. Never fails: Redis is connected lazily and an outage only costs misses. Returns the
/// backend's description (`redis (url)` or `memory`) with it.
pub fn connect(settings: &CacheSettings) -> (String, Arc<dyn Cache>) {
    let cache: Arc<dyn Cache> = match &settings.url {
        Some(url) => Arc::new(redis::RedisCache::new(url, settings)),
        None => Arc::new(memory::MemoryCache::new(settings.memory_capacity)),
    };
    (describe(settings), cache)
}

/// Which cache `[cache]` names (`redis (url)`, password redacted, or `memory`).
pub fn describe(settings: &CacheSettings) -> String {
    match &settings.url {
        Some(url) => format!("redis ({})", crate::config::redact_url(url)),
        None => "memory".to_owned(),
    }
}
