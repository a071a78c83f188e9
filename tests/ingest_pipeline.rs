//! End-to-end ingest through real RabbitMQ, PostgreSQL and Redis: uploads in, events and rows out.

mod common;

use std::time::Duration;

use common::{TestEnv, corpus, failed, ingest, ingested};
use futures::StreamExt;
use lapin::options::BasicGetOptions;
use ragpipe::client;
use ragpipe::messages::{self, QueryRequest};
use ragpipe::queue::Broker;
use ragpipe::worker::Role;
use sqlx::Row;

fn query(text: &str, collection: &str) -> QueryRequest {
    QueryRequest::new(text, collection, 3)
}

async fn top_filenames(broker: &dyn Broker, text: &str, collection: &str) -> Vec<String> {
    let reply = client::query(broker, &query(text, collection), Duration::from_secs(30)).await.expect("query reply");
    assert!(reply.get("error").is_none(), "query failed: {reply}");
    reply["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| c["filename"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_text_and_markdown_files_are_ingested_and_unique_facts_are_found() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let broker = env.broker().await;

    let mut files: Vec<_> = ["text", "markdown"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(corpus().join(dir)).expect("corpus dir"))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let written = 20 - files.len();
    for i in 0..written {
        let body = if i == 0 {
            "# Harbour notes\n\nThe zebra-striped kettle of Quillon Bay whistles at 7:42 every Thursday.\n".to_owned()
        } else {
            format!("Note {i}\n\nThe tide tables for pier {i} are posted by the harbour master each morning.\n")
        };
        files.push(env.write(&format!("note-{i:02}.md"), body.as_bytes()));
    }
    assert_eq!(files.len(), 20);
    let uploads: Vec<_> = files.iter().map(|f| env.upload_file(f, "harbour")).collect();
    let outcomes = ingest(&broker, &uploads).await;
    for upload in &uploads {
        let event = ingested(&outcomes[&upload.upload_id]);
        assert!(!event.duplicate && event.chunks > 0 && event.status == "ingested", "{}: {event:?}", upload.filename);
    }

    let hits = top_filenames(&broker, "When does the zebra-striped kettle of Quillon Bay whistle?", "harbour").await;
    assert!(hits.iter().any(|f| f == "note-00.md"), "kettle note not in top 3: {hits:?}");
    let hits = top_filenames(&broker, "How doth the little crocodile improve his shining tail", "harbour").await;
    assert!(hits.iter().any(|f| f == "alice29.txt"), "alice not in top 3: {hits:?}");

    let pool = env.pool().await;
    let row = sqlx::query(
        "SELECT count(*) AS docs, sum(chunk_count)::bigint AS chunks FROM documents WHERE status = 'ingested'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(row.get::<i64, _>("docs"), 20);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks").fetch_one(&pool).await.expect("chunks");
    assert_eq!(stored, row.get::<i64, _>("chunks"));
    let blobs = walk_count(&env.settings.storage.root);
    assert_eq!(blobs, 20, "one content-addressed blob per distinct file");
    worker.stop().await;
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_upload_is_acknowledged_without_new_chunks() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.broker().await;
    let a = env.write("a.txt", b"Lighthouse keepers log the weather at dawn.\n\nThe lamp is trimmed at dusk.");
    let b = env.write("copy-of-a.txt", b"Lighthouse keepers log the weather at dawn.\n\nThe lamp is trimmed at dusk.");

    let first = env.upload_file(&a, "dups");
    let outcomes = ingest(&broker, std::slice::from_ref(&first)).await;
    let original = ingested(&outcomes[&first.upload_id]).clone();
    assert!(!original.duplicate);

    let second = env.upload_file(&b, "dups");
    let outcomes = ingest(&broker, std::slice::from_ref(&second)).await;
    let dup = ingested(&outcomes[&second.upload_id]);
    assert!(dup.duplicate, "same bytes must be a duplicate: {dup:?}");
    assert_eq!(dup.document_id, original.document_id);
    assert_eq!(dup.sha256, original.sha256);

    let pool = env.pool().await;
    let docs: i64 = sqlx::query_scalar("SELECT count(*) FROM documents").fetch_one(&pool).await.expect("docs");
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks").fetch_one(&pool).await.expect("chunks");
    assert_eq!(docs, 1);
    assert_eq!(chunks, original.chunks);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_stores_one_copy() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let broker = env.broker().await;
    let path = env.write("twice.txt", "The ferry to Ardmore leaves at noon.\n\n".repeat(40).as_bytes());
    let upload = env.upload_file(&path, "twice");

    // Publish the identical message twice, as a broker does after a crash between commit and ack.
    let mut events = client::subscribe_outcomes(&broker).await.expect("subscribe");
    broker.publish_upload(&messages::encode(&upload)).await.expect("publish");
    broker.publish_upload(&messages::encode(&upload)).await.expect("publish again");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next()).await.expect("event").expect("stream");
        let event = event.expect("event ok");
        let body: serde_json::Value = serde_json::from_slice(&event.body).expect("json");
        assert_eq!(event.routing_key, "document.ingested", "{body}");
        seen.push(body);
    }
    assert_eq!(seen[0]["document_id"], seen[1]["document_id"]);
    assert_eq!(seen[0]["chunks"], seen[1]["chunks"]);

    let pool = env.pool().await;
    let docs: i64 = sqlx::query_scalar("SELECT count(*) FROM documents").fetch_one(&pool).await.expect("docs");
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks").fetch_one(&pool).await.expect("chunks");
    assert_eq!(docs, 1);
    assert_eq!(chunks, seen[0]["chunks"].as_i64().expect("chunks"));
    let stats = worker.services.indexes.stats("twice").await.expect("index open");
    assert_eq!(stats.vectors as i64, chunks, "no duplicate vectors in FAISS");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_with_reasons_and_the_worker_carries_on() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.broker().await;
    let mut events = client::subscribe_outcomes(&broker).await.expect("subscribe");

    let empty = env.write("empty.txt", b"");
    let mut outside = env.upload_file(&empty, "bad");
    outside.uri = Some("file:///etc/hostname".into());
    let mut missing = env.upload_file(&empty, "bad");
    missing.uri = Some(format!("file://{}/nope.txt", env.inbox().display()));
    let empty_upload = env.upload_file(&empty, "bad");
    let binary = env.write("image.png", &[0x89, b'P', b'N', b'G', 0, 0, 0, 13, 0xff, 0xfe, 0, 1]);
    let unsupported = env.upload_file(&binary, "bad");
    let good = env.upload_file(&env.write("good.txt", b"Still serving after bad input."), "bad");

    broker.publish_upload(b"this is not json").await.expect("publish malformed");
    broker.publish_upload(br#"{"v":99,"upload_id":"from-the-future","collection":"bad"}"#).await.expect("publish v99");
    for upload in [&outside, &missing, &empty_upload, &unsupported, &good] {
        broker.publish_upload(&messages::encode(upload)).await.expect("publish");
    }
    let ids: Vec<String> = [&outside, &missing, &empty_upload, &unsupported, &good]
        .iter()
        .map(|u| u.upload_id.clone())
        .chain(["from-the-future".to_owned(), String::new()])
        .collect();
    let outcomes = common::wait(&mut events, &ids).await;

    assert_eq!(failed(&outcomes[""]).code, "malformed");
    assert_eq!(failed(&outcomes["from-the-future"]).code, "unsupported_version");
    assert_eq!(failed(&outcomes[&outside.upload_id]).code, "forbidden_path");
    assert_eq!(failed(&outcomes[&missing.upload_id]).code, "not_found");
    let empty_event = failed(&outcomes[&empty_upload.upload_id]);
    assert_eq!(empty_event.code, "empty");
    assert_eq!(failed(&outcomes[&unsupported.upload_id]).code, "unsupported_type");
    assert!(!ingested(&outcomes[&good.upload_id]).duplicate, "the worker keeps serving after bad input");

    // The document that existed (the empty file) is marked failed with the reason.
    let pool = env.pool().await;
    let row = sqlx::query("SELECT status, failure_reason FROM documents WHERE id = $1")
        .bind(empty_event.document_id.expect("empty file has a document row"))
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(row.get::<String, _>("status"), "failed");
    assert!(
        row.get::<String, _>("failure_reason").starts_with("empty"),
        "{:?}",
        row.get::<String, _>("failure_reason")
    );

    // Six dead letters, each with the reason in its headers.
    let conn = lapin::Connection::connect(&common::amqp_url(), Default::default()).await.expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    let mut codes = Vec::new();
    for _ in 0..6 {
        let message = channel
            .basic_get(env.settings.broker.dead_letter_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
            .expect("a dead letter");
        let headers = message.delivery.properties.headers().clone().expect("headers");
        let code =
            headers.inner().get("x-ragpipe-code").and_then(|v| v.as_long_string()).expect("code header").to_string();
        let reason = headers.inner().get("x-ragpipe-reason").and_then(|v| v.as_long_string()).expect("reason header");
        assert!(!reason.to_string().is_empty());
        codes.push(code);
    }
    codes.sort();
    assert_eq!(codes, ["empty", "forbidden_path", "malformed", "not_found", "unsupported_type", "unsupported_version"]);
    worker.stop().await;
}

/// A crash at each commit point (after the PostgreSQL commit; after the index add) leaves the
/// message unacknowledged; the next worker gets it again and settles it without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_ack_is_recovered_without_duplicates() {
    use ragpipe::worker::FaultPoint;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    for point in [FaultPoint::AfterPersist, FaultPoint::AfterIndex] {
        let env = TestEnv::new().await;
        let crashed = Arc::new(AtomicBool::new(false));
        let hook = {
            let crashed = crashed.clone();
            Arc::new(move |at: FaultPoint| at == point && !crashed.swap(true, Ordering::SeqCst))
        };
        let worker = env.start_worker_with(&[Role::Ingest, Role::Query], Some(hook)).await;
        let broker = env.broker().await;
        let path = env.write("crash.txt", "Granite quarries supplied the harbour wall.\n\n".repeat(30).as_bytes());
        let upload = env.upload_file(&path, "crash");
        let mut events = client::subscribe_outcomes(&broker).await.expect("subscribe");
        broker.publish_upload(&messages::encode(&upload)).await.expect("publish");
        // Wait until the job reached the crash point, then "restart" the worker.
        for _ in 0..600 {
            if crashed.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(crashed.load(Ordering::SeqCst), "{point:?} was reached");
        worker.stop().await;

        let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
        let outcomes = common::wait(&mut events, std::slice::from_ref(&upload.upload_id)).await;
        let event = ingested(&outcomes[&upload.upload_id]);
        let pool = env.pool().await;
        let docs: i64 = sqlx::query_scalar("SELECT count(*) FROM documents").fetch_one(&pool).await.expect("docs");
        let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks").fetch_one(&pool).await.expect("chunks");
        assert_eq!((docs, chunks), (1, event.chunks), "{point:?}: one document, no duplicate chunks");
        let hits = top_filenames(&broker, "granite quarries harbour wall", "crash").await;
        assert_eq!(hits.first().map(String::as_str), Some("crash.txt"), "{point:?}");
        let stats = worker.services.indexes.stats("crash").await.expect("index open");
        assert_eq!(stats.vectors as i64, chunks, "{point:?}: no duplicate vectors");
        worker.stop().await;
    }
}
