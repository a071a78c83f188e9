//! The vector index's lifecycle on both backends: deletes reach every replica (also one that was
//! down), a snapshot never outlives its store (a recreated database, a restored backup), and
//! catch-up replays the change log.

mod common;

use std::time::Duration;

use common::{TestEnv, ingest, ingested, name};
use ragpipe::client;
use ragpipe::messages::{self, DOCUMENT_DELETED, DocumentDeleted, QueryRequest, VERSION};
use ragpipe::queue::Queue;
use ragpipe::store::DocumentRef;
use ragpipe::worker::Role;

on_both_backends!(
    a_delete_message_on_the_upload_queue_deletes_like_the_cli,
    a_deleted_document_leaves_every_replica_and_returns_when_uploaded_again,
    a_snapshot_from_a_recreated_database_is_rebuilt_not_loaded,
    a_snapshot_ahead_of_a_restored_backup_is_rebuilt,
);

const SNAPPY: &str = "# Snappy\n\nSnappy is a compression/decompression library. It does not aim for maximum \
                      compression, or compatibility with any other compression library; instead, it aims for \
                      very high speeds and reasonable compression.\n";
const PDFJS: &str = "# Contributing\n\nPDF.js is an open source project and welcomes contributions: read the \
                     contribution guidelines, open an issue before large changes, and run the linter and the \
                     unit tests before sending a pull request.\n";

async fn top_file(queue: &Queue, collection: &str, text: &str) -> Option<String> {
    let request = QueryRequest::new(text, name(collection), 1);
    let reply = client::query(queue.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("reply");
    assert!(reply.get("error").is_none(), "{reply}");
    reply["chunks"][0]["filename"].as_str().map(str::to_owned)
}

/// The best file of `worker`'s own index (RabbitMQ may route a query to any replica; this asks
/// one): its embedding, its FAISS index, then the store as the query role does.
async fn replica_top(worker: &common::TestWorker, collection: &str, text: &str) -> Option<String> {
    let s = &worker.services;
    let collection = s.store.collection(collection).await.expect("store").expect("collection");
    let vector = s.embedding.embed_one(text).await.expect("embed");
    let (hits, _) = s.indexes.search(&collection, vector, 4).await.expect("search");
    let ids: Vec<i64> = hits.iter().map(|h| h.0).collect();
    s.store.fetch_chunks(&ids).await.expect("fetch").first().map(|c| c.filename.clone())
}

/// Deletes like `ragpipe delete` does: commit, then publish the event.
async fn delete(env: &TestEnv, queue: &Queue, upload_id: &str) {
    let store = env.store().await;
    let target = DocumentRef::UploadId(upload_id.into());
    let deleted = ragpipe::ingest::delete::delete_and_announce(store.as_ref(), queue.events.as_ref(), &target, None)
        .await
        .expect("delete");
    assert_eq!(deleted.len(), 1);
}

/// Waits (boundedly) until `worker`'s index of `collection` holds `vectors`.
async fn wait_for_vectors(worker: &common::TestWorker, collection: &str, vectors: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = worker.services.indexes.stats(collection).await.expect("index open");
        if stats.vectors == vectors {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "index holds {stats:?}, want {vectors} vectors");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_deleted_document_leaves_every_replica_and_returns_when_uploaded_again(env: TestEnv) {
    let ingester = env.start_worker(&[Role::Ingest]).await;
    let (one, two) = (env.start_worker(&[Role::Query]).await, env.start_worker(&[Role::Query]).await);
    let uploads = ingester.queue().await;
    let snappy = env.upload_file(&env.write("snappy.md", SNAPPY.as_bytes()), "replicas");
    let pdfjs = env.upload_file(&env.write("pdfjs.md", PDFJS.as_bytes()), "replicas");
    let outcomes = ingest(&uploads, &[snappy.clone(), pdfjs.clone()]).await;
    let total = (ingested(&outcomes[&snappy.upload_id]).chunks + ingested(&outcomes[&pdfjs.upload_id]).chunks) as usize;
    let question = "Snappy is a compression/decompression library";
    let q1 = one.queue().await;
    assert_eq!(top_file(&q1, "replicas", question).await.as_deref(), Some("snappy.md"));
    assert_eq!(replica_top(&one, "replicas", question).await.as_deref(), Some("snappy.md"));
    assert_eq!(replica_top(&two, "replicas", question).await.as_deref(), Some("snappy.md"));
    wait_for_vectors(&two, "replicas", total).await;
    // The second replica goes down (writing its snapshot) and misses the delete.
    two.stop().await;

    delete(&env, &uploads, &snappy.upload_id).await;
    // From the commit on, no answer contains it, before any replica caught up.
    assert_ne!(top_file(&q1, "replicas", question).await.as_deref(), Some("snappy.md"));
    let left = ingested(&outcomes[&pdfjs.upload_id]).chunks as usize;
    wait_for_vectors(&one, "replicas", left).await;
    assert_eq!(replica_top(&one, "replicas", question).await.as_deref(), Some("pdfjs.md"));
    // The replica that was down comes back: snapshot, then the log's removal.
    let back = env.start_worker(&[Role::Query]).await;
    assert_eq!(replica_top(&back, "replicas", question).await.as_deref(), Some("pdfjs.md"));
    let stats = back.services.indexes.stats("replicas").await.expect("open");
    assert!(stats.from_snapshot && stats.vectors == left, "{stats:?}");
    assert_eq!(
        replica_top(&one, "replicas", question).await,
        replica_top(&back, "replicas", question).await,
        "replicas answer alike"
    );

    // Uploading the bytes again restores the document everywhere.
    let again = env.upload_file(&env.write("snappy-again.md", SNAPPY.as_bytes()), "replicas");
    ingested(&ingest(&uploads, std::slice::from_ref(&again)).await[&again.upload_id]);
    wait_for_vectors(&one, "replicas", total).await;
    wait_for_vectors(&back, "replicas", total).await;
    assert_eq!(replica_top(&one, "replicas", question).await.as_deref(), Some("snappy-again.md"));
    assert_eq!(replica_top(&back, "replicas", question).await.as_deref(), Some("snappy-again.md"));
    assert_eq!(top_file(&q1, "replicas", question).await.as_deref(), Some("snappy-again.md"));
    for worker in [ingester, one, back] {
        worker.stop().await;
    }
}

async fn a_snapshot_from_a_recreated_database_is_rebuilt_not_loaded(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let files = [env.write("snappy.md", SNAPPY.as_bytes()), env.write("pdfjs.md", PDFJS.as_bytes())];
    let uploads: Vec<_> = files.iter().map(|f| env.upload_file(f, "recreated")).collect();
    for upload in &uploads {
        ingest(&worker.queue().await, std::slice::from_ref(upload)).await;
    }
    worker.stop().await;
    assert!(env.settings.index_dir().join("recreated/manifest.json").exists());

    // The database is recreated (a new environment, an operator's mistake); the index folder stays.
    env.replace_store(false).await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    for upload in uploads.iter().rev() {
        let again = env.upload_file(std::path::Path::new(&env.inbox().join(&upload.filename)), "recreated");
        ingest(&queue, std::slice::from_ref(&again)).await;
    }
    let top = top_file(&queue, "recreated", "Snappy is a compression/decompression library").await;
    assert_eq!(top.as_deref(), Some("snappy.md"), "the old snapshot's vectors must not answer for the new chunks");
    let stats = worker.services.indexes.stats("recreated").await.expect("open");
    assert!(!stats.from_snapshot, "rebuilt from the store: {stats:?}");
    worker.stop().await;
}

async fn a_snapshot_ahead_of_a_restored_backup_is_rebuilt(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let first = env.upload_file(&env.write("pdfjs.md", PDFJS.as_bytes()), "restored");
    let chunks = ingested(&ingest(&worker.queue().await, std::slice::from_ref(&first)).await[&first.upload_id]).chunks;
    worker.stop().await;
    env.backup_store().await;

    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let second = env.upload_file(&env.write("snappy.md", SNAPPY.as_bytes()), "restored");
    ingest(&worker.queue().await, std::slice::from_ref(&second)).await;
    worker.stop().await;

    // The backup from before the second document comes back; the snapshot knows more than it.
    env.replace_store(true).await;
    let worker = env.start_worker(&[Role::Query]).await;
    let queue = worker.queue().await;
    let top = top_file(&queue, "restored", "Snappy is a compression/decompression library").await;
    assert_eq!(top.as_deref(), Some("pdfjs.md"), "only what the store holds answers");
    let stats = worker.services.indexes.stats("restored").await.expect("open");
    assert!(!stats.from_snapshot && stats.vectors as i64 == chunks, "rebuilt from the restored store: {stats:?}");
    worker.stop().await;
}

async fn a_delete_message_on_the_upload_queue_deletes_like_the_cli(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let snappy = env.upload_file(&env.write("snappy.md", SNAPPY.as_bytes()), "upstream");
    let pdfjs = env.upload_file(&env.write("pdfjs.md", PDFJS.as_bytes()), "upstream");
    let outcomes = ingest(&queue, &[snappy.clone(), pdfjs.clone()]).await;
    let question = "Snappy is a compression/decompression library";
    assert_eq!(top_file(&queue, "upstream", question).await.as_deref(), Some("snappy.md"));

    // An upstream system sends the delete the way it sends uploads.
    let mut events = queue.events.subscribe(&[DOCUMENT_DELETED]).await.expect("subscribe");
    let message = messages::DeleteMessage {
        v: VERSION,
        delete: ingested(&outcomes[&snappy.upload_id]).sha256.clone(),
        collection: Some(name("upstream")),
    };
    queue.uploads.publish(&messages::encode(&message)).await.expect("publish delete");
    let event = tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(&mut events))
        .await
        .expect("document.deleted within 30 s")
        .expect("event")
        .expect("event");
    let deleted: DocumentDeleted = serde_json::from_slice(&event.body).expect("event body");
    assert_eq!(deleted.document_id, ingested(&outcomes[&snappy.upload_id]).document_id);
    assert_eq!(top_file(&queue, "upstream", question).await.as_deref(), Some("pdfjs.md"));

    // A malformed delete is dead-lettered with its reason, not retried forever.
    let bad = serde_json::json!({"v": VERSION, "delete": "x", "collection": "no spaces allowed"});
    let mut failures = queue.events.subscribe(&[messages::DOCUMENT_FAILED]).await.expect("subscribe");
    queue.uploads.publish(bad.to_string().as_bytes()).await.expect("publish bad delete");
    let failed = tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(&mut failures))
        .await
        .expect("document.failed within 30 s")
        .expect("event")
        .expect("event");
    let failed: messages::DocumentFailed = serde_json::from_slice(&failed.body).expect("body");
    assert_eq!(failed.code, "invalid_collection");
    worker.stop().await;
}
