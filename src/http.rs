//! The operations endpoint: `/metrics` (Prometheus), `/health` (liveness: the process answers)
//! and `/ready` (readiness: store and queue usable).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::app::Services;
use crate::telemetry::metrics;

/// Serves the endpoint on `listener` until `shutdown`.
///
/// # Errors
/// The server fails while running.
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Arc<Services>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|| async { metrics::render() }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(services);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn ready(State(s): State<Arc<Services>>) -> (StatusCode, String) {
    let mut problems = Vec::new();
    if let Err(error) = s.store.ping().await {
        problems.push(format!("store: {error}"));
    }
    if !s.queue.is_connected() {
        problems.push(format!("queue: not connected ({})", s.backends.queue));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", problems.join("\n")))
    }
}
