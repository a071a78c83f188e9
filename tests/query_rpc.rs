//! Queries over request/reply (a plain AMQP client over RabbitMQ's direct reply-to; in-process
//! with the embedded queue), and index snapshots across a worker restart, on both backends.

mod common;

use std::time::Duration;

use common::{TestEnv, ingest, ingested, name};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ragpipe::client;
use ragpipe::messages::QueryRequest;
use ragpipe::worker::Role;

on_both_backends!(
    bad_requests_get_error_replies_and_every_query_is_logged,
    a_restarted_worker_answers_from_its_snapshot_without_reingesting,
    a_query_worker_in_another_process_role_sees_new_documents_through_events,
);

/// Sends `body` to the query queue from a plain lapin client using direct reply-to and returns
/// the reply's correlation id and body.
async fn raw_request(queue: &str, body: &[u8], correlation_id: &str) -> (Option<String>, serde_json::Value) {
    let conn = Connection::connect(&common::amqp_url(), ConnectionProperties::default()).await.expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let mut replies = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume direct reply-to");
    let properties = BasicProperties::default()
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_correlation_id(correlation_id.into())
        .with_content_type("application/json".into());
    channel
        .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties)
        .await
        .expect("publish");
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .expect("a reply within 30 s")
        .expect("stream open")
        .expect("delivery");
    let correlation = reply.properties.correlation_id().as_ref().map(|c| c.as_str().to_owned());
    let body = serde_json::from_slice(&reply.data).expect("reply is JSON");
    let _ = conn.close(200, "done".into()).await;
    (correlation, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_amqp_client_gets_a_correlated_reply_over_direct_reply_to() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let path = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.\n\nNeap tides stay under two.");
    let upload = env.upload_file(&path, "rpc");
    let outcomes = ingest(&worker.queue().await, std::slice::from_ref(&upload)).await;
    ingested(&outcomes[&upload.upload_id]);

    let queue = env.settings.broker.query_queue.clone();
    let request = br#"{"v":1,"query":"How high do spring tides reach at Hollow Point?","collection":"rpc","top_k":2}"#;
    let (correlation, reply) = raw_request(&queue, request, "corr-42").await;
    assert_eq!(correlation.as_deref(), Some("corr-42"));
    assert_eq!(reply["v"], 1);
    let first = &reply["chunks"][0];
    assert_eq!(first["filename"], "tides.txt");
    assert!(first["text"].as_str().expect("text").contains("four metres"));
    assert!(first["score"].as_f64().expect("score") > 0.3);
    assert!(reply["timings_ms"]["search"].is_number());

    worker.stop().await;
}

/// Sends `body` as a request and decodes the reply.
async fn request_raw(queue: &ragpipe::queue::Queue, body: &[u8]) -> serde_json::Value {
    let reply = queue.requests.request(body, Duration::from_secs(30)).await.expect("a reply");
    serde_json::from_slice(&reply).expect("reply is JSON")
}

async fn bad_requests_get_error_replies_and_every_query_is_logged(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let path = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&path, "rpc");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    let reply = request_raw(&queue, br#"{"v":1,"query":"spring tides","collection":"rpc","top_k":2}"#).await;
    assert_eq!(reply["chunks"][0]["filename"], "tides.txt", "{reply}");

    // Bad requests get an error reply, never silence.
    for (body, code) in [
        (&b"{not json"[..], "malformed"),
        (br#"{"v":7,"query":"x"}"#, "unsupported_version"),
        (br#"{"v":1,"query":"x","collection":"a/b"}"#, "invalid_collection"),
        (br#"{"v":1,"query":"x","collection":"nope"}"#, "unknown_collection"),
        (br#"{"v":1,"query":"   ","collection":"rpc"}"#, "invalid_request"),
        (br#"{"v":1,"query":"tides","collection":"rpc","top_k":100000}"#, "invalid_request"),
    ] {
        let reply = request_raw(&queue, body).await;
        assert_eq!(reply["error"]["code"], code, "{}: {reply}", String::from_utf8_lossy(body));
    }

    // Every query is logged (after the reply, off the reply path).
    let logged = wait_for_count(&env, "SELECT count(*) FROM query_log", 7).await;
    assert_eq!(logged, 7);
    worker.stop().await;
}

/// Waits (on the store, up to 5 s) until `sql` counts `want`; returns the last count.
async fn wait_for_count(env: &TestEnv, sql: &str, want: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = env.count(sql).await;
        if n >= want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::task::yield_now().await;
    }
}

async fn a_restarted_worker_answers_from_its_snapshot_without_reingesting(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let path = env.write("orchard.md", b"# Orchard\n\nThe quince trees behind the mill flower in late April.\n");
    let upload = env.upload_file(&path, "orchard");
    let outcomes = ingest(&worker.queue().await, std::slice::from_ref(&upload)).await;
    let chunks = ingested(&outcomes[&upload.upload_id]).chunks as usize;
    worker.stop().await;

    let manifest = env.settings.index_dir().join("orchard").join("manifest.json");
    assert!(manifest.exists(), "the stopping worker writes a snapshot");

    let worker = env.start_worker(&[Role::Query]).await;
    let queue = worker.queue().await;
    let request = QueryRequest::new("When do the quince trees flower?", name("orchard"), 1);
    let reply = client::query(queue.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("reply");
    assert_eq!(reply["chunks"][0]["filename"], "orchard.md", "{reply}");
    let stats = worker.services.indexes.stats("orchard").await.expect("index open");
    assert!(stats.from_snapshot, "loaded from the snapshot: {stats:?}");
    assert_eq!(stats.caught_up, 0, "nothing re-read from the store: {stats:?}");
    assert_eq!(stats.vectors, chunks);
    let depths = queue.uploads.depths().await.expect("depths");
    assert_eq!(depths.ingest, 0, "nothing was re-ingested");
    worker.stop().await;
}

async fn a_query_worker_in_another_process_role_sees_new_documents_through_events(env: TestEnv) {
    // Two separate workers: one ingests, the other only answers queries and follows events.
    let ingester = env.start_worker(&[Role::Ingest]).await;
    let querier = env.start_worker(&[Role::Query]).await;
    let (uploads, queries) = (ingester.queue().await, querier.queue().await);
    let first = env.upload_file(&env.write("one.txt", b"Copper kettles hang above the forge."), "follow");
    ingest(&uploads, std::slice::from_ref(&first)).await;
    // Open the index in the query worker before the second document exists.
    let request = |q: &str| QueryRequest::new(q, name("follow"), 1);
    let ask = |q: &'static str| {
        let queries = queries.clone();
        async move { client::query(queries.requests.as_ref(), &request(q), Duration::from_secs(30)).await.expect("reply") }
    };
    assert_eq!(ask("copper kettles").await["chunks"][0]["filename"], "one.txt");

    let second = env.upload_file(&env.write("two.txt", b"Silver bells ring in the chapel tower."), "follow");
    ingest(&uploads, std::slice::from_ref(&second)).await;
    // The follower catches up when the event reaches it; wait for that, boundedly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let found = loop {
        if ask("silver bells chapel tower").await["chunks"][0]["filename"] == "two.txt" {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(found, "the query worker caught up with the new document");
    ingester.stop().await;
    querier.stop().await;
}
