//! `/ready` over real HTTP: every check named in a JSON body, 503 while the store is down and
//! 200 again once it is back, and a query process's indexes open and caught up.
//!
//! "Down" is a TCP proxy between the worker and PostgreSQL that the test cuts: the worker
//! sees exactly what a database restart looks like (connections reset, new ones refused) while
//! the other tests keep using the server.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Proxy, TestEnv, http_get, serve_ops};
use ragpipe::http::Readiness;
use ragpipe::worker::Role;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Asks `/ready` until `want` holds for its status and body (each answer is awaited, not slept
/// on: the endpoint answers within its 2 s check timeout).
async fn ready_until(port: u16, what: &str, want: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(port, "/ready").await;
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        if want(status, &json) {
            return json;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what}; last answer {status}: {json}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing between probes, not a sync point
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_goes_503_while_postgres_is_down_and_200_after() {
    let mut env = TestEnv::new().await;
    // A collection with a document, so the index check has something to open.
    let path = env.write("note.txt", b"Readiness is checked against every dependency.");
    let upload = env.upload_file(&path, "docs");
    {
        let worker = env.start_worker(&[Role::Ingest]).await;
        let outcomes = common::ingest(&worker.queue().await, std::slice::from_ref(&upload)).await;
        common::ingested(&outcomes[&upload.upload_id]);
        worker.stop().await;
    }

    let mut url = url::Url::parse(env.settings.database.url.as_ref().expect("url").expose_secret()).expect("url");
    let target = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432));
    let proxy = Proxy::start(target).await;
    url.set_port(Some(proxy.port)).expect("port");
    env.settings.database.url = Some(SecretString::from(url.to_string()));
    let worker = env.start_worker(&[Role::Query]).await;
    let shutdown = CancellationToken::new();
    let port = serve_ops(worker.services.clone(), &shutdown).await;
    assert_eq!(http_get(port, "/health").await, (200, "ok\n".to_owned()));

    let ready = ready_until(port, "ready", |status, _| status == 200).await;
    assert_eq!(ready["ready"], true);
    for check in ["store", "queue", "cache", "indexes"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    assert_eq!(ready["checks"]["indexes"]["collections"]["docs"]["vectors"], 1, "{ready}");
    assert_eq!(ready["checks"]["indexes"]["collections"]["docs"]["lag"], 0, "{ready}");
    assert_eq!(ready["checks"]["cache"]["required"], false, "{ready}");

    proxy.set_up(false);
    let down = ready_until(port, "not ready", |status, _| status == 503).await;
    assert_eq!(down["ready"], false);
    assert_eq!(down["checks"]["store"]["ok"], false, "{down}");
    assert!(down["checks"]["store"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{down}");
    assert_eq!(down["checks"]["queue"]["ok"], true, "only the store is down: {down}");

    proxy.set_up(true);
    let back = ready_until(port, "ready again", |status, _| status == 200).await;
    assert_eq!(back["checks"]["store"]["ok"], true, "{back}");

    shutdown.cancel();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_process_is_ready_once_its_indexes_are_open_and_caught_up() {
    let mut env = TestEnv::embedded().await;
    env.settings.http.ready_max_lag = 0;
    let ingest = env.start_worker(&[Role::Ingest]).await;
    let queue = ingest.queue().await;
    let first = env.upload_file(&env.write("first.txt", b"The first document of the collection."), "docs");
    common::ingested(&common::ingest(&queue, std::slice::from_ref(&first)).await[&first.upload_id]);

    // A query process's services, with no follower running: the test moves its index by hand.
    let services = Arc::new(env.services().await);
    let readiness = Readiness::new(services.clone(), true);
    let (ready, body) = readiness.check().await;
    assert!(!ready, "not ready before the indexes are open: {body}");
    assert!(body["checks"]["indexes"]["error"].as_str().is_some_and(|e| e.starts_with("loading")), "{body}");
    assert_eq!(body["checks"]["store"]["ok"], true, "{body}");

    assert_eq!(services.indexes.open_all().await.expect("open"), 1);
    let (ready, body) = readiness.check().await;
    assert!(ready, "{body}");
    assert!(body["checks"]["store"]["backend"].as_str().is_some_and(|b| b.contains("sqlite")), "{body}");
    assert_eq!(body["checks"]["cache"]["backend"], "memory", "{body}");
    assert_eq!(body["checks"]["indexes"]["collections"]["docs"]["lag"], 0, "{body}");

    // Another process ingests; until this one applies the change log, its index trails the store.
    let second = env.upload_file(&env.write("second.txt", b"A document this process has not applied yet."), "docs");
    common::ingested(&common::ingest(&queue, std::slice::from_ref(&second)).await[&second.upload_id]);
    let (ready, body) = readiness.check().await;
    assert!(!ready, "a lagging index is not ready: {body}");
    assert!(body["checks"]["indexes"]["collections"]["docs"]["lag"].as_i64().is_some_and(|lag| lag > 0), "{body}");
    assert!(body["checks"]["indexes"]["error"].as_str().is_some_and(|e| e.contains("docs")), "{body}");

    services.indexes.catch_up("docs").await.expect("catch up");
    let (ready, body) = readiness.check().await;
    assert!(ready, "{body}");
    assert_eq!(body["checks"]["indexes"]["collections"]["docs"]["vectors"], 2, "{body}");
    ingest.stop().await;
}
