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

/// A lazily made, self-healing Redis connection: the first connection is attempted on first
/// use and, after a failure, again at most every [`RECONNECT_AFTER`]; once made, the
/// `ConnectionManager` reconnects by itself. Shared by the cache and the rate governor.
pub(crate) struct RedisLink {
    url: SecretString,
    timeout: Duration,
    state: Mutex<LinkState>,
}

struct LinkState {
    manager: Option<ConnectionManager>,
    last_attempt: Option<Instant>,
}

impl RedisLink {
    /// A link to `url` whose commands time out after `timeout` (connecting: four times that).
    pub(crate) fn new(url: &SecretString, timeout: Duration) -> Self {
        Self { url: url.clone(), timeout, state: Mutex::new(LinkState { manager: None, last_attempt: None }) }
    }

    /// The command timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection, or why there is none: `Err(None)` while waiting to retry after a
    /// failure (already reported), `Err(Some(reason))` when this attempt failed (the reason
    /// names the redacted URL).
    pub(crate) async fn manager(&self) -> Result<ConnectionManager, Option<String>> {
        let mut state = self.state.lock().await;
        if let Some(manager) = &state.manager {
            return Ok(manager.clone());
        }
        if state.last_attempt.is_some_and(|at| at.elapsed() < RECONNECT_AFTER) {
            return Err(None);
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
                Ok(manager)
            }
            Ok(Err(error)) => Err(Some(format!("{} ({error})", redact_url(&self.url)))),
            Err(_) => Err(Some(format!("{} (connect timed out)", redact_url(&self.url)))),
        }
    }
}

/// A Redis-backed cache.
pub struct RedisCache {
    link: RedisLink,
    prefix: String,
}

impl RedisCache {
    /// A cache that connects to `url` on first use.
    pub fn new(url: &SecretString, settings: &CacheSettings) -> Self {
        let timeout = Duration::from_millis(settings.timeout_ms);
        Self { link: RedisLink::new(url, timeout), prefix: settings.key_prefix.clone() }
    }

    async fn manager(&self) -> Option<ConnectionManager> {
        match self.link.manager().await {
            Ok(manager) => Some(manager),
            Err(None) => None,
            Err(Some(reason)) => {
                tracing::warn!(%reason, "redis unavailable; caching disabled for now");
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
    async fn ping(&self) -> Result<(), String> {
        let mut manager = match self.link.manager().await {
            Ok(manager) => manager,
            Err(Some(reason)) => return Err(reason),
            Err(None) => return Err("unreachable at the last attempt; retrying in a few seconds".to_owned()),
        };
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut manager);
        match tokio::time::timeout(self.link.timeout(), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer to PING within {:?}", self.link.timeout())),
        }
    }

    async fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let misses = || vec![None; keys.len()];
        if keys.is_empty() {
            return Vec::new();
        }
        let Some(mut manager) = self.manager().await else { return misses() };
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let fetch = async { manager.mget::<_, Vec<Option<Vec<u8>>>>(&full).await };
        match tokio::time::timeout(self.link.timeout(), fetch).await {
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
        // Every write carries a TTL (the seed article's Redis OOM lesson), in milliseconds.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            pipe.pset_ex(self.key(key), value.as_slice(), ttl_ms).ignore();
        }
        let write = async { pipe.query_async::<()>(&mut manager).await };
        match tokio::time::timeout(self.link.timeout(), write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => degraded("set", &error),
            Err(_) => degraded("set", &"timed out"),
        }
    }
}
