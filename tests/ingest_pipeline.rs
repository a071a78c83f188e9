//! End-to-end ingest, uploads in, events and rows out: through real RabbitMQ, PostgreSQL and
//! Redis, and again on the embedded backends (SQLite file, embedded queue, in-process cache)
//! with the same assertions.

mod common;

use std::time::Duration;

use common::{TestEnv, corpus, failed, ingest, ingested, name};
use futures::StreamExt;
use ragpipe::client;
use ragpipe::messages::{self, DocumentStatus, QueryRequest};
use ragpipe::queue::Queue;
use ragpipe::worker::Role;

on_both_backends!(
    twenty_text_and_markdown_files_are_ingested_and_unique_facts_are_found,
    duplicate_upload_is_acknowledged_without_new_chunks,
    the_same_message_delivered_twice_stores_one_copy,
    bad_messages_are_dead_lettered_with_reasons_and_the_worker_carries_on,
    a_crash_between_commit_and_ack_is_recovered_without_duplicates,
);

fn query(text: &str, collection: &str) -> QueryRequest {
    QueryRequest::new(text, name(collection), 3)
}

async fn top_filenames(queue: &Queue, text: &str, collection: &str) -> Vec<String> {
    let reply = client::query(queue.requests.as_ref(), &query(text, collection), Duration::from_secs(30))
        .await
        .expect("query reply");
    assert!(reply.get("error").is_none(), "query failed: {reply}");
    reply["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| c["filename"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn twenty_text_and_markdown_files_are_ingested_and_unique_facts_are_found(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;

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
    let outcomes = ingest(&queue, &uploads).await;
    for upload in &uploads {
        let event = ingested(&outcomes[&upload.upload_id]);
        assert!(
            !event.duplicate && event.chunks > 0 && event.status == DocumentStatus::Ingested,
            "{}: {event:?}",
            upload.filename
        );
    }

    let hits = top_filenames(&queue, "When does the zebra-striped kettle of Quillon Bay whistle?", "harbour").await;
    assert!(hits.iter().any(|f| f == "note-00.md"), "kettle note not in top 3: {hits:?}");
    let hits = top_filenames(&queue, "How doth the little crocodile improve his shining tail", "harbour").await;
    assert!(hits.iter().any(|f| f == "alice29.txt"), "alice not in top 3: {hits:?}");

    assert_eq!(env.count("SELECT count(*) FROM documents WHERE status = 'ingested'").await, 20);
    let chunks = env.count("SELECT sum(chunk_count) FROM documents WHERE status = 'ingested'").await;
    assert_eq!(env.count("SELECT count(*) FROM chunks").await, chunks);
    // Each distinct file's bytes are kept once: a file in the blob store when large, in its
    // document's row when small.
    let limit = env.settings.storage.in_database_max_bytes as u64;
    let large = files.iter().filter(|f| std::fs::metadata(f).expect("size").len() > limit).count();
    assert!(large > 0 && large < 20, "the corpus has both sizes: {large} large");
    assert_eq!(walk_count(&env.settings.storage.blob_root()), large, "one blob per large file");
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE content IS NOT NULL").await, (20 - large) as i64);
    worker.stop().await;
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

async fn duplicate_upload_is_acknowledged_without_new_chunks(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest]).await;
    let queue = worker.queue().await;
    let a = env.write("a.txt", b"Lighthouse keepers log the weather at dawn.\n\nThe lamp is trimmed at dusk.");
    let b = env.write("copy-of-a.txt", b"Lighthouse keepers log the weather at dawn.\n\nThe lamp is trimmed at dusk.");

    let first = env.upload_file(&a, "dups");
    let outcomes = ingest(&queue, std::slice::from_ref(&first)).await;
    let original = ingested(&outcomes[&first.upload_id]).clone();
    assert!(!original.duplicate);

    let second = env.upload_file(&b, "dups");
    let outcomes = ingest(&queue, std::slice::from_ref(&second)).await;
    let dup = ingested(&outcomes[&second.upload_id]);
    assert!(dup.duplicate, "same bytes must be a duplicate: {dup:?}");
    assert_eq!(dup.document_id, original.document_id);
    assert_eq!(dup.sha256, original.sha256);

    assert_eq!(env.count("SELECT count(*) FROM documents").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM chunks").await, original.chunks);
    worker.stop().await;
}

async fn the_same_message_delivered_twice_stores_one_copy(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let path = env.write("twice.txt", "The ferry to Ardmore leaves at noon.\n\n".repeat(40).as_bytes());
    let upload = env.upload_file(&path, "twice");

    // Publish the identical message twice, as a broker does after a crash between commit and ack.
    let mut events = client::subscribe_outcomes(queue.events.as_ref()).await.expect("subscribe");
    queue.uploads.publish(&messages::encode(&upload)).await.expect("publish");
    queue.uploads.publish(&messages::encode(&upload)).await.expect("publish again");
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

    assert_eq!(env.count("SELECT count(*) FROM documents").await, 1);
    let chunks = env.count("SELECT count(*) FROM chunks").await;
    assert_eq!(chunks, seen[0]["chunks"].as_i64().expect("chunks"));
    let stats = worker.services.indexes.stats("twice").await.expect("index open");
    assert_eq!(stats.vectors as i64, chunks, "no duplicate vectors in FAISS");
    worker.stop().await;
}

async fn bad_messages_are_dead_lettered_with_reasons_and_the_worker_carries_on(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest]).await;
    let queue = worker.queue().await;
    let mut events = client::subscribe_outcomes(queue.events.as_ref()).await.expect("subscribe");

    let empty = env.write("empty.txt", b"");
    let mut outside = env.upload_file(&empty, "bad");
    outside.uri = Some("file:///etc/hostname".into());
    let mut missing = env.upload_file(&empty, "bad");
    missing.uri = Some(format!("file://{}/nope.txt", env.inbox().display()));
    let empty_upload = env.upload_file(&empty, "bad");
    let binary = env.write("image.png", &[0x89, b'P', b'N', b'G', 0, 0, 0, 13, 0xff, 0xfe, 0, 1]);
    let unsupported = env.upload_file(&binary, "bad");
    let good = env.upload_file(&env.write("good.txt", b"Still serving after bad input."), "bad");

    queue.uploads.publish(b"this is not json").await.expect("publish malformed");
    queue.uploads.publish(br#"{"v":99,"upload_id":"from-the-future","collection":"bad"}"#).await.expect("publish v99");
    for upload in [&outside, &missing, &empty_upload, &unsupported, &good] {
        queue.uploads.publish(&messages::encode(upload)).await.expect("publish");
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
    let id = empty_event.document_id.expect("empty file has a document row");
    assert_eq!(env.text(&format!("SELECT status FROM documents WHERE id = {id}")).await, "failed");
    let reason = env.text(&format!("SELECT failure_reason FROM documents WHERE id = {id}")).await;
    assert!(reason.starts_with("empty"), "{reason:?}");

    // Six dead letters, each with its reason.
    let dead = queue.uploads.dead_letters(10).await.expect("dead letters");
    assert!(dead.iter().all(|d| !d.reason.reason.is_empty()), "{dead:?}");
    let mut codes: Vec<&str> = dead.iter().map(|d| d.reason.code.as_str()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["empty", "forbidden_path", "malformed", "not_found", "unsupported_type", "unsupported_version"]);
    worker.stop().await;
}

/// A crash at each commit point (after the PostgreSQL commit; after the index add) leaves the
/// message unacknowledged; the next worker gets it again and settles it without duplicates.
async fn a_crash_between_commit_and_ack_is_recovered_without_duplicates(env: TestEnv) {
    use ragpipe::app::FaultPoint;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    for (point, collection) in [(FaultPoint::AfterPersist, "crash-persist"), (FaultPoint::AfterIndex, "crash-index")] {
        let crashed = Arc::new((AtomicBool::new(false), tokio::sync::Notify::new()));
        let hook = {
            let crashed = crashed.clone();
            Arc::new(move |at: FaultPoint| {
                let crash = at == point && !crashed.0.swap(true, Ordering::SeqCst);
                if crash {
                    crashed.1.notify_one();
                }
                crash
            })
        };
        let worker = env.start_worker_with(&[Role::Ingest, Role::Query], Some(hook)).await;
        let client = env.queue().await;
        let path = env.write("crash.txt", "Granite quarries supplied the harbour wall.\n\n".repeat(30).as_bytes());
        let upload = env.upload_file(&path, collection);
        let mut events = client::subscribe_outcomes(client.events.as_ref()).await.expect("subscribe");
        client.uploads.publish(&messages::encode(&upload)).await.expect("publish");
        // Wait until the job reached the crash point, then "restart" the worker.
        tokio::time::timeout(Duration::from_secs(60), crashed.1.notified()).await.expect("the crash point is reached");
        worker.stop().await;

        let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
        let outcomes = common::wait(&mut events, std::slice::from_ref(&upload.upload_id)).await;
        let event = ingested(&outcomes[&upload.upload_id]);
        let of_collection = format!("(SELECT id FROM collections WHERE name = '{collection}')");
        let docs = env.count(&format!("SELECT count(*) FROM documents WHERE collection_id = {of_collection}")).await;
        let chunks = env.count(&format!("SELECT count(*) FROM chunks WHERE collection_id = {of_collection}")).await;
        assert_eq!((docs, chunks), (1, event.chunks), "{point:?}: one document, no duplicate chunks");
        let hits = top_filenames(&worker.queue().await, "granite quarries harbour wall", collection).await;
        assert_eq!(hits.first().map(String::as_str), Some("crash.txt"), "{point:?}");
        let stats = worker.services.indexes.stats(collection).await.expect("index open");
        assert_eq!(stats.vectors as i64, chunks, "{point:?}: no duplicate vectors");
        worker.stop().await;
    }
}
