//! The operations endpoint: `/metrics` (Prometheus), `/health` (liveness: the process answers)
//! and `/ready` (readiness: every dependency answers and, in a query process, every index is
//! loaded and caught up with the store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::Services;
use crate::index::IndexStats;
use crate::store::Collection;
use crate::telemetry::metrics;

/// How long one readiness check may take before it counts as failed: a probe must answer
/// quickly even while a dependency hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/ready` checks.
#[derive(Clone)]
pub struct Readiness {
    services: Arc<Services>,
    /// Whether this process answers queries: then its indexes must be open and caught up.
    serves_queries: bool,
}

impl Readiness {
    /// Readiness of `services`; `serves_queries` adds the index checks.
    pub fn new(services: Arc<Services>, serves_queries: bool) -> Self {
        Self { services, serves_queries }
    }

    /// Runs every check: `(ready, body)`. The body names each check with `ok` and, when not,
    /// the `error`; the cache is reported but not `required` (an outage only costs misses).
    pub async fn check(&self) -> (bool, Value) {
        let s = &self.services;
        let mut checks = serde_json::Map::new();
        let store = timed(async { s.store.ping().await.map_err(|e| e.to_string()) }).await.map(Some);
        checks.insert("store".into(), outcome(store, &s.backends.store, true));
        let queue = if s.queue.is_connected() { Ok(None) } else { Err("not connected".to_owned()) };
        checks.insert("queue".into(), outcome(queue, &s.backends.queue, true));
        let cache = timed(s.cache.ping()).await.map(Some);
        checks.insert("cache".into(), outcome(cache, &s.backends.cache, false));
        if self.serves_queries {
            checks.insert("indexes".into(), self.indexes().await);
        }
        let ready = checks.values().all(|c| c["ok"] == true || c["required"] == false);
        (ready, json!({ "ready": ready, "checks": checks }))
    }

    /// Every collection open, each within `[http] ready_max_lag` change-log entries of the store.
    async fn indexes(&self) -> Value {
        if !self.services.indexes.all_open() {
            return json!({ "ok": false, "required": true, "error": "loading: opening every collection's index" });
        }
        let max_lag = self.services.settings.http.ready_max_lag;
        let mut collections = serde_json::Map::new();
        let mut problems = Vec::new();
        for (collection, stats, lag) in self.index_lags().await {
            let lag = match lag {
                Ok(lag) => lag,
                Err(error) => {
                    problems.push(format!("{}: lag unknown ({error})", collection.name));
                    continue;
                }
            };
            if lag > max_lag {
                problems
                    .push(format!("{}: {lag} change-log entries behind the store (limit {max_lag})", collection.name));
            }
            collections.insert(
                collection.name.clone(),
                json!({ "vectors": stats.vectors, "generation": stats.generation, "lag": lag }),
            );
        }
        let mut body = json!({ "ok": problems.is_empty(), "required": true, "collections": collections });
        if !problems.is_empty() {
            body["error"] = json!(problems.join("; "));
        }
        body
    }

    /// Every open index with how far it trails the store, and the index gauges (size,
    /// generation, lag) set to match.
    async fn index_lags(&self) -> Vec<(Collection, IndexStats, Result<u64, String>)> {
        let (indexes, store) = (&self.services.indexes, &self.services.store);
        let mut out = Vec::new();
        for (collection, stats) in indexes.all_stats() {
            let name = collection.name.as_str();
            metrics::INDEX_VECTORS.with_label_values(&[name]).set(i64::try_from(stats.vectors).unwrap_or(i64::MAX));
            metrics::INDEX_GENERATION
                .with_label_values(&[name])
                .set(i64::try_from(stats.generation).unwrap_or(i64::MAX));
            let last = timed_value(async { store.last_log_seq(collection.id).await.map_err(|e| e.to_string()) }).await;
            let lag = last.map(|last| u64::try_from(last - stats.applied_seq).unwrap_or(0));
            if let Ok(lag) = &lag {
                metrics::INDEX_LAG.with_label_values(&[name]).set(i64::try_from(*lag).unwrap_or(i64::MAX));
            }
            out.push((collection, stats, lag));
        }
        out
    }

    /// Sets the gauges that are read off live state rather than counted as things happen:
    /// index sizes, generations and lags, and database pool occupancy.
    pub async fn refresh_gauges(&self) {
        if self.serves_queries {
            let store = &self.services.store;
            for (collection, ..) in self.index_lags().await {
                // The last rebuild as recorded (by whichever process ran it): never rebuilt is 1.
                let recorded =
                    timed_value(async { store.last_generation(collection.id).await.map_err(|e| e.to_string()) });
                if let Ok(record) = recorded.await {
                    let ok = record.map_or(1, |r| i64::from(r.ok));
                    metrics::INDEX_REBUILD_OK.with_label_values(&[collection.name.as_str()]).set(ok);
                }
            }
        }
        for pool in self.services.store.pools() {
            let set = |state: &str, value: i64| metrics::DB_POOL.with_label_values(&[pool.name, state]).set(value);
            set("open", i64::from(pool.open));
            set("in_use", i64::from(pool.open).saturating_sub(i64::try_from(pool.idle).unwrap_or(0)));
            set("max", i64::from(pool.max));
        }
    }
}

/// Runs a check with [`CHECK_TIMEOUT`], returning its value.
async fn timed_value<T, F: Future<Output = Result<T, String>>>(check: F) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// Runs a check with [`CHECK_TIMEOUT`], timing it.
async fn timed<F: Future<Output = Result<(), String>>>(check: F) -> Result<Duration, String> {
    let started = Instant::now();
    timed_value(check).await.map(|()| started.elapsed())
}

/// One dependency's check as JSON, with how long it took when it was timed.
fn outcome(result: Result<Option<Duration>, String>, backend: &str, required: bool) -> Value {
    match result {
        Ok(took) => {
            let mut body = json!({ "ok": true, "backend": backend, "required": required });
            if let Some(took) = took {
                body["ms"] = json!((took.as_secs_f64() * 1e4).round() / 10.0);
            }
            body
        }
        Err(error) => json!({ "ok": false, "backend": backend, "required": required, "error": error }),
    }
}

/// Serves the endpoint on `listener` until `shutdown`.
///
/// # Errors
/// The server fails while running.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(Arc::new(readiness));
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn metrics_page(State(readiness): State<Arc<Readiness>>) -> String {
    readiness.refresh_gauges().await;
    metrics::render()
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let (ready, body) = readiness.check().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    (status, [("content-type", "application/json")], text)
}
