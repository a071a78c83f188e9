//! The worker's RabbitMQ connection breaks in the middle of an ingest and comes back: the worker
//! reconnects by itself, its consumers resume, every upload is ingested exactly once, and queries
//! are answered again.
//!
//! The break is a TCP proxy between the worker and RabbitMQ that the test cuts: the worker sees
//! what a broker restart looks like (its connection reset, new ones refused until the broker is
//! back; the broker requeues what was unacknowledged), while the other tests keep using the
//! server.
#![allow(clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Proxy, TestEnv, amqp_url};
use futures::StreamExt;
use ragpipe::client;
use ragpipe::messages::{self, DOCUMENT_FAILED, DOCUMENT_INGESTED, QueryRequest};
use ragpipe::queue::Queue;
use ragpipe::queue::amqp::AmqpBroker;
use ragpipe::worker::Role;
use secrecy::SecretString;

/// Waits (polling the worker's connection state) until `connected` holds.
async fn until_connected(queue: &Queue, connected: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while queue.is_connected() != connected {
        assert!(tokio::time::Instant::now() < deadline, "the worker's connection never became connected={connected}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a state, not a sync point
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_broker_connection_is_recovered_and_nothing_is_lost_or_duplicated() {
    let mut env = TestEnv::new().await;
    // The client talks to RabbitMQ directly; the worker through the proxy.
    let client = Queue::new(
        ragpipe::queue::QueueKind::Amqp("client".into()),
        Arc::new(AmqpBroker::connect(&env.settings.broker).await.expect("client connection")),
    );
    let mut url = url::Url::parse(&amqp_url()).expect("amqp url");
    let target = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5672));
    let proxy = Proxy::start(target).await;
    url.set_port(Some(proxy.port)).expect("port");
    env.settings.broker.url = Some(SecretString::from(url.to_string()));
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;

    let uploads = env.shakespeare_uploads("recovered", 60, 4_000);
    let mut events = client.events.subscribe(&[DOCUMENT_INGESTED, DOCUMENT_FAILED]).await.expect("subscribe");
    for upload in &uploads {
        client.uploads.publish(&messages::encode(upload)).await.expect("publish");
    }
    let mut done = HashSet::new();
    let mut next_outcome = async |done: &mut HashSet<String>| {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .unwrap_or_else(|_| panic!("no outcome within 60 s ({} of {})", done.len(), uploads.len()))
            .expect("stream")
            .expect("event");
        assert_eq!(event.routing_key, DOCUMENT_INGESTED, "{}", String::from_utf8_lossy(&event.body));
        let body: serde_json::Value = serde_json::from_slice(&event.body).expect("json");
        done.insert(body["upload_id"].as_str().expect("upload_id").to_owned());
    };
    while done.len() < 15 {
        next_outcome(&mut done).await;
    }

    // The break, mid-ingest.
    proxy.set_up(false);
    until_connected(&worker.services.queue, false).await;
    proxy.set_up(true);
    until_connected(&worker.services.queue, true).await;

    while done.len() < uploads.len() {
        next_outcome(&mut done).await;
    }
    let request = QueryRequest::new("What does the king say?", common::name("recovered"), 3);
    let reply = client::query(client.requests.as_ref(), &request, Duration::from_secs(30)).await;
    assert!(reply.is_ok_and(|r| r["chunks"].as_array().is_some_and(|c| !c.is_empty())), "queries answered again");

    let n = uploads.len() as i64;
    assert_eq!(env.count("SELECT count(*) FROM documents").await, n);
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE status = 'ingested'").await, n);
    let chunks = env.count("SELECT count(*) FROM chunks").await;
    assert_eq!(env.count("SELECT count(DISTINCT (document_id, ordinal)) FROM chunks").await, chunks);
    // Messages whose acks the break lost are delivered again (their outcomes are already in):
    // the worker settles them as done, so the queue drains, with nothing dead-lettered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let depths = client.uploads.depths().await.expect("depths");
        assert_eq!(depths.dead, 0, "nothing dead-lettered");
        if depths.ingest == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} uploads still waiting after 60 s", depths.ingest);
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a state, not a sync point
    }
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE status = 'ingested'").await, n, "still exactly once");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_answer_through_a_redis_outage_and_are_cached_again_after_it() {
    let mut env = TestEnv::new().await;
    let mut url = url::Url::parse(&common::redis_url()).expect("redis url");
    let target = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(6379));
    let proxy = Proxy::start(target).await;
    url.set_port(Some(proxy.port)).expect("port");
    env.settings.cache.url = Some(SecretString::from(url.to_string()));
    env.settings.cache.timeout_ms = 200;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let client = worker.queue().await;
    let upload = env.upload_file(&env.write("heron.txt", b"The grey heron nests in tall trees near water."), "cached");
    common::ingested(&common::ingest(&client, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    let ask = async |query: &str| {
        let request = QueryRequest::new(query, common::name("cached"), 3);
        client::query(client.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("a reply")
    };
    ask("where does the heron nest?").await;
    assert_eq!(ask("where does the heron nest?").await["cached"], true, "cached while Redis is up");

    // Redis gone: every query still answers, from the store and the index.
    proxy.set_up(false);
    for question in ["where do herons nest?", "which bird nests near water?"] {
        let reply = ask(question).await;
        assert_eq!(reply["chunks"][0]["filename"], "heron.txt", "answered during the outage: {reply}");
        assert_eq!(reply["cached"], false, "{reply}");
    }

    // Back: caching resumes (the connection is remade by itself) within seconds.
    proxy.set_up(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let question = "does the heron nest in trees?";
        ask(question).await;
        if ask(question).await["cached"] == true {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "caching never resumed after Redis came back");
        tokio::time::sleep(Duration::from_millis(250)).await; // pacing retries, not a sync point
    }
    worker.stop().await;
}
