//! Queries over RabbitMQ request/reply, and index snapshots across a worker restart.

mod common;

use std::time::Duration;

use common::{TestEnv, ingest, ingested};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ragpipe::client;
use ragpipe::messages::QueryRequest;
use ragpipe::worker::Role;

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
    let broker = env.broker().await;
    let path = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.\n\nNeap tides stay under two.");
    let upload = env.upload_file(&path, "rpc");
    let outcomes = ingest(&broker, std::slice::from_ref(&upload)).await;
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

    // Bad requests get an error reply, never silence.
    let (correlation, reply) = raw_request(&queue, b"{not json", "corr-bad").await;
    assert_eq!(correlation.as_deref(), Some("corr-bad"));
    assert_eq!(reply["error"]["code"], "malformed");
    let (_, reply) = raw_request(&queue, br#"{"v":7,"query":"x"}"#, "corr-v7").await;
    assert_eq!(reply["error"]["code"], "unsupported_version");
    let (_, reply) = raw_request(&queue, br#"{"v":1,"query":"x","collection":"nope"}"#, "c").await;
    assert_eq!(reply["error"]["code"], "unknown_collection");
    let (_, reply) = raw_request(&queue, br#"{"v":1,"query":"   ","collection":"rpc"}"#, "c").await;
    assert_eq!(reply["error"]["code"], "invalid_request");
    let (_, reply) = raw_request(&queue, br#"{"v":1,"query":"tides","collection":"rpc","top_k":100000}"#, "c").await;
    assert_eq!(reply["error"]["code"], "invalid_request");

    // Every query is logged.
    let pool = env.pool().await;
    let logged = wait_for_count(&pool, "SELECT count(*) FROM query_log", 6).await;
    assert_eq!(logged, 6);
    worker.stop().await;
}

async fn wait_for_count(pool: &sqlx::PgPool, sql: &'static str, want: i64) -> i64 {
    // The query log is written after the reply, off the reply path: poll briefly.
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.expect("count");
        if n >= want {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query_scalar(sql).fetch_one(pool).await.expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_answers_from_its_snapshot_without_reingesting() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let broker = env.broker().await;
    let path = env.write("orchard.md", b"# Orchard\n\nThe quince trees behind the mill flower in late April.\n");
    let upload = env.upload_file(&path, "orchard");
    let outcomes = ingest(&broker, std::slice::from_ref(&upload)).await;
    let chunks = ingested(&outcomes[&upload.upload_id]).chunks as usize;
    worker.stop().await;

    let manifest = env.settings.index.dir.join("orchard").join("manifest.json");
    assert!(manifest.exists(), "the stopping worker writes a snapshot");

    let worker = env.start_worker(&[Role::Query]).await;
    let request = QueryRequest::new("When do the quince trees flower?", "orchard", 1);
    let reply = client::query(&broker, &request, Duration::from_secs(30)).await.expect("reply");
    assert_eq!(reply["chunks"][0]["filename"], "orchard.md", "{reply}");
    let stats = worker.services.indexes.stats("orchard").await.expect("index open");
    assert!(stats.from_snapshot, "loaded from the snapshot: {stats:?}");
    assert_eq!(stats.caught_up, 0, "nothing re-read from the store: {stats:?}");
    assert_eq!(stats.vectors, chunks);
    let depths = ragpipe::queue::Broker::depths(&broker).await.expect("depths");
    assert_eq!(depths.ingest, 0, "nothing was re-ingested");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_worker_in_another_process_role_sees_new_documents_through_events() {
    let env = TestEnv::new().await;
    // Two separate workers: one ingests, the other only answers queries and follows events.
    let ingester = env.start_worker(&[Role::Ingest]).await;
    let querier = env.start_worker(&[Role::Query]).await;
    let broker = env.broker().await;
    let first = env.upload_file(&env.write("one.txt", b"Copper kettles hang above the forge."), "follow");
    ingest(&broker, std::slice::from_ref(&first)).await;
    // Open the index in the query worker before the second document exists.
    let request = |q: &str| QueryRequest::new(q, "follow", 1);
    let reply = client::query(&broker, &request("copper kettles"), Duration::from_secs(30)).await.expect("reply");
    assert_eq!(reply["chunks"][0]["filename"], "one.txt");

    let second = env.upload_file(&env.write("two.txt", b"Silver bells ring in the chapel tower."), "follow");
    ingest(&broker, std::slice::from_ref(&second)).await;
    let mut found = false;
    for _ in 0..50 {
        let reply = client::query(&broker, &request("silver bells chapel tower"), Duration::from_secs(30))
            .await
            .expect("reply");
        if reply["chunks"][0]["filename"] == "two.txt" {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the query worker caught up with the new document");
    ingester.stop().await;
    querier.stop().await;
}
