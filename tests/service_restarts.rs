//! Real outages: this machine's RabbitMQ, then PostgreSQL, then Redis are stopped and started
//! again (`ops/services.sh stop|start`) while a worker ingests and answers queries. Every upload
//! is ingested exactly once, the index holds exactly the stored chunks, `/ready` shows each
//! outage while it lasts, and queries are answered again within seconds of each return.
//!
//! These tests stop servers that every other test uses, so they are ignored in the parallel run;
//! `ops/test.sh` runs them afterwards, alone (`--ignored --test-threads=1`). The proxy-cut tests
//! (broker_recovery.rs, ops_ready.rs) cover the same paths inside the parallel run.
#![allow(clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestEnv, http_get, serve_ops};
use ragpipe::client;
use ragpipe::messages::{self, QueryRequest, UploadMessage};
use ragpipe::queue::Queue;
use ragpipe::queue::amqp::AmqpBroker;
use ragpipe::worker::Role;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Runs `bash ops/services.sh ACTION NAME`; true when it succeeded.
fn services(action: &str, name: &str) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/services.sh");
    std::process::Command::new("bash").arg(script).args([action, name]).status().is_ok_and(|s| s.success())
}

/// A stopped service, started again when dropped, so a failing test leaves the servers up for
/// whatever runs next.
struct Stopped(&'static str);

impl Stopped {
    fn new(name: &'static str) -> Self {
        assert!(services("stop", name), "ops/services.sh stop {name} failed");
        Self(name)
    }

    fn start(self) {
        assert!(services("start", self.0), "ops/services.sh start {} failed", self.0);
        std::mem::forget(self);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        services("start", self.0);
    }
}

/// A client connection of its own, made now (a connection from before a broker restart is gone).
async fn client(env: &TestEnv) -> Queue {
    let broker = AmqpBroker::connect(&env.settings.broker).await.expect("client connection");
    Queue::new(ragpipe::queue::QueueKind::Amqp("client".into()), Arc::new(broker))
}

async fn publish(env: &TestEnv, uploads: &[UploadMessage]) {
    let client = client(env).await;
    for upload in uploads {
        client.uploads.publish(&messages::encode(upload)).await.expect("publish");
    }
    client.close().await;
}

/// Documents ingested so far (`None` while PostgreSQL is down).
async fn ingested(env: &TestEnv) -> Option<i64> {
    use sqlx::Connection;
    let url = env.settings.database.url.as_ref().expect("url").expose_secret().to_owned();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url)).await.ok()?.ok()?;
    let sql = "SELECT count(*) FROM documents WHERE status = 'ingested'";
    let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await.ok();
    let _ = conn.close().await;
    count
}

/// Waits until at least `n` documents are ingested.
async fn until_ingested(env: &TestEnv, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = ingested(env).await;
        if done.is_some_and(|d| d >= n) {
            return;
        }
        assert!(Instant::now() < deadline, "only {done:?} of {n} documents ingested after 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await; // polling the store, not a sync point
    }
}

/// Asks `/ready` until `want` holds; returns the body.
async fn ready_until(port: u16, what: &str, want: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(port, "/ready").await;
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        if want(status, &json) {
            return json;
        }
        assert!(Instant::now() < deadline, "never {what}; last answer {status}: {json}");
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing between probes, not a sync point
    }
}

/// Asks until a query is answered with chunks (each try on a fresh connection, with a short
/// reply timeout); returns how long that took.
async fn until_answered(env: &TestEnv, collection: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(5), AmqpBroker::connect(&env.settings.broker)).await
        {
            let client = Queue::new(ragpipe::queue::QueueKind::Amqp("asker".into()), Arc::new(client));
            let request = QueryRequest::new("What says the king?", common::name(collection), 3);
            let reply = client::query(client.requests.as_ref(), &request, Duration::from_secs(5)).await;
            client.close().await;
            if reply.is_ok_and(|r| r["chunks"].as_array().is_some_and(|c| !c.is_empty())) {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no query answered within 60 s of the service's return");
        tokio::time::sleep(Duration::from_millis(200)).await; // pacing retries, not a sync point
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops and starts this machine's RabbitMQ, PostgreSQL and Redis: ops/test.sh runs it alone"]
async fn restarting_rabbitmq_then_postgresql_then_redis_loses_and_duplicates_nothing() {
    let mut env = TestEnv::new().await;
    // The default limit: an outage costs a message in flight one delivery at most.
    env.settings.broker.delivery_limit = 5;
    env.settings.cache.timeout_ms = 200;
    let collection = "restarts";
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let shutdown = CancellationToken::new();
    let port = serve_ops(worker.services.clone(), &shutdown).await;
    let uploads = env.shakespeare_uploads(collection, 270, 4_000);
    let mut expected = 0;
    for (wave, service) in uploads.chunks(90).zip(["rabbitmq", "postgresql", "redis"]) {
        publish(&env, wave).await;
        // Mid-ingest: this wave under way, most of it waiting or in flight.
        until_ingested(&env, expected + 1).await;
        let before = ingested(&env).await.unwrap_or_default();
        expected += wave.len() as i64;
        let stopped = Stopped::new(service);
        match service {
            "rabbitmq" => {
                let down = ready_until(port, "not ready without RabbitMQ", |status, _| status == 503).await;
                assert_eq!(down["checks"]["queue"]["ok"], false, "{down}");
            }
            "postgresql" => {
                let down = ready_until(port, "not ready without PostgreSQL", |status, _| status == 503).await;
                assert_eq!(down["checks"]["store"]["ok"], false, "{down}");
                assert!(down["checks"]["store"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{down}");
            }
            _ => {
                // The cache is optional: still ready, the check says it is down.
                let down =
                    ready_until(port, "cache check failing", |_, body| body["checks"]["cache"]["ok"] == false).await;
                assert_eq!(down["ready"], true, "Redis is not required: {down}");
            }
        }
        stopped.start();
        ready_until(port, "ready again", |status, body| status == 200 && body["checks"]["cache"]["ok"] == true).await;
        let took = until_answered(&env, collection).await;
        eprintln!(
            "{service}: stopped with {} of {expected} uploads ingested; queries answered again {} ms after its return",
            before,
            took.as_millis()
        );
    }

    until_ingested(&env, expected).await;
    let n = uploads.len() as i64;
    assert_eq!(env.count("SELECT count(*) FROM documents").await, n, "one row per upload");
    assert_eq!(env.count("SELECT count(DISTINCT upload_id) FROM documents").await, n);
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE status = 'ingested'").await, n);
    let chunks = env.count("SELECT count(*) FROM chunks").await;
    assert_eq!(env.count("SELECT count(DISTINCT (document_id, ordinal)) FROM chunks").await, chunks);
    assert_eq!(env.count("SELECT COALESCE(sum(chunk_count), 0) FROM documents").await, chunks);
    let stats = worker.services.indexes.stats(collection).await.expect("index open");
    assert_eq!(stats.vectors as i64, chunks, "the index holds exactly the stored chunks");
    let depths = client(&env).await.uploads.depths().await.expect("depths");
    assert_eq!((depths.ingest, depths.dead), (0, 0), "nothing left waiting, nothing dead-lettered");
    shutdown.cancel();
    worker.stop().await;
}
