//! Redis cache through a `ConnectionManager` (reconnects by itself), with a key prefix and TTLs.
//!
//! The first connection is made lazily and retried at most every few seconds, so a worker starts
//! (and works, with misses) while Redis is down.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::Cache;
use crate::config::{CacheSettings, redact_url};
use crate::telemetry::metrics;

/// How long to wait before trying to connect again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);

/// A Redis-backed cache.
pub struct RedisCache {
    url: SecretString,
    prefix: String,
    timeout: Duration,
    state: Mutex<State>,
}

struct State {
    manager: Option<ConnectionManager>,
    last_attempt: Option<Instant>,
}

impl RedisCache {
    /// A cache that connects to `url` on first use.
    pub fn new(url: &SecretString, settings: &CacheSettings) -> Self {
        Self {
            url: url.clone(),
            prefix: settings.key_prefix.clone(),
            timeout: Duration::from_millis(settings.timeout_ms),
            state: Mutex::new(State { manager: None, last_attempt: None }),
        }
    }

    async fn manager(&self) -> Option<ConnectionManager> {
        let mut state = self.state.lock().await;
        if let Some(manager) = &state.manager {
            return Some(manager.clone());
        }
        if state.last_attempt.is_some_and(|at| at.elapsed() < RECONNECT_AFTER) {
            return None;
        }
        state.last_attempt = Some(Instant::now());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout * 4))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let connect = async {
            let client = redis::Client::open(self.url.expose_secret())?;
            ConnectionManager::new_with_config(client, config).await
        };
        match tokio::time::timeout(self.timeout * 4, connect).await {
            Ok(Ok(manager)) => {
                state.manager = Some(manager.clone());
                Some(manager)
            }
            Ok(Err(error)) => {
                tracing::warn!(url = %redact_url(&self.url), %error, "redis unavailable; caching disabled for now");
                None
            }
            Err(_) => {
                tracing::warn!(url = %redact_url(&self.url), "redis connect timed out; caching disabled for now");
                None
            }
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn degraded(op: &str, error: &dyn std::fmt::Display) {
    metrics::CACHE_ERRORS.with_label_values(&[op]).inc();
    tracing::warn!(op, %error, "cache operation failed; treated as a miss");
}

#[async_trait]
impl Cache for RedisCache {
    async fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let misses = || vec![None; keys.len()];
        if keys.is_empty() {
            return Vec::new();
        }
        let Some(mut manager) = self.manager().await else { return misses() };
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let fetch = async { manager.mget::<_, Vec<Option<Vec<u8>>>>(&full).await };
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(Ok(values)) if values.len() == keys.len() => values,
            Ok(Ok(values)) => {
                degraded("get", &format!("MGET returned {} values for {} keys", values.len(), keys.len()));
                misses()
            }
            Ok(Err(error)) => {
                degraded("get", &error);
                misses()
            }
            Err(_) => {
                degraded("get", &"timed out");
                misses()
            }
        }
    }

    async fn set_many(&self, entries: &[(String, Vec<u8>)], ttl: Duration) {
        if entries.is_empty() {
            return;
        }
        let Some(mut manager) = self.manager().await else { return };
        // Every write carries a TTL (the seed article's Redis OOM lesson).
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            pipe.set_ex(self.key(key), value.as_slice(), ttl.as_secs().max(1)).ignore();
        }
        let write = async { pipe.query_async::<()>(&mut manager).await };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => degraded("set", &error),
            Err(_) => degraded("set", &"timed out"),
        }
    }
}
