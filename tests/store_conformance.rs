//! The store's conformance suite: every case runs against PostgreSQL and against the embedded
//! SQLite store, and asserts the same behaviour. Later features (change log, deletes, full-text
//! search) add their cases here.

mod common;

use common::TestEnv;
use ragpipe::store::{
    Claim, DocumentChunks, DocumentRef, DocumentStatus, FeedbackEntry, LogOp, NewChunk, NewDocument, QueryLogEntry,
    Store, StoreError,
};

on_both_backends!(
    rebuilds_read_live_vectors_in_pages_and_record_generations,
    a_scheduled_run_is_claimed_once_and_taken_over_only_when_stale,
    claims_are_idempotent_and_the_same_bytes_are_a_duplicate,
    a_batch_of_claims_decides_as_one_claim_after_another,
    a_failed_document_is_resumed_by_the_next_upload_and_never_downgraded,
    persisting_twice_stores_once_and_returns_the_stored_vectors,
    a_batch_commits_together_and_a_refused_document_fails_alone,
    catch_up_replays_the_change_log_of_its_collection_in_order,
    a_delete_logs_its_chunks_hides_them_and_a_reupload_restores_the_document,
    a_collection_keeps_the_model_it_started_with,
    fetched_chunks_follow_the_requested_order_and_carry_citations,
    status_counts_documents_and_queries_are_logged,
    a_query_log_batch_longer_than_one_statement_is_written_whole,
    shared_position_reads_serve_many_queries_and_never_miss_an_earlier_commit,
);

fn document(collection_id: i64, byte: u8, upload: &str) -> NewDocument {
    NewDocument {
        collection_id,
        sha256: format!("{byte:02x}").repeat(32),
        upload_id: upload.into(),
        filename: format!("{upload}.txt"),
        content_type: Some("text/plain".into()),
        size_bytes: 42,
        storage_path: "/blobs/x".into(),
        content: None,
        metadata: serde_json::json!({"team": "ops"}),
    }
}

fn chunks(n: usize, seed: f32) -> Vec<NewChunk> {
    (0..n)
        .map(|i| NewChunk {
            ordinal: i as i32,
            text: format!("chunk {i} of {seed}"),
            token_count: 4,
            char_start: (i * 10) as i32,
            char_end: (i * 10 + 9) as i32,
            page_start: Some(i as i32 + 1),
            page_end: Some(i as i32 + 1),
            heading_path: Some("Intro > Part".into()),
            embedding: vec![seed, i as f32, 0.5],
        })
        .collect()
}

async fn process(store: &dyn Store, doc: &NewDocument) -> i64 {
    match store.claim_document(doc).await.expect("claim") {
        Claim::Process { document_id } => document_id,
        other => panic!("expected Process, got {other:?}"),
    }
}

async fn claims_are_idempotent_and_the_same_bytes_are_a_duplicate(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("claims").await.expect("collection");
    assert_eq!(store.ensure_collection("claims").await.expect("again"), c);
    assert_eq!(store.collection("claims").await.expect("lookup"), Some(c.clone()));
    assert_eq!(store.collection("nope").await.expect("lookup"), None);

    let doc = document(c.id, 1, "u1");
    let id = process(store.as_ref(), &doc).await;
    // Another attempt while it is pending may proceed; persist settles who wins.
    assert_eq!(process(store.as_ref(), &doc).await, id);
    store.persist_chunks(id, "m", 3, &chunks(2, 1.0)).await.expect("persist");
    // The same upload again (a redelivery) is already done; other uploads of the bytes are duplicates.
    assert_eq!(
        store.claim_document(&doc).await.expect("claim"),
        Claim::AlreadyDone { document_id: id, chunks: 2, status: DocumentStatus::Ingested }
    );
    assert_eq!(
        store.claim_document(&document(c.id, 1, "u2")).await.expect("claim"),
        Claim::Duplicate { document_id: id, chunks: 2, status: DocumentStatus::Ingested }
    );
    // The same bytes in another collection are another document.
    let other = store.ensure_collection("claims-2").await.expect("collection");
    assert_ne!(process(store.as_ref(), &document(other.id, 1, "u3")).await, id);
}

/// Claims of several uploads in one call: the same outcomes, in order, as claiming each alone in
/// that order, across every case (new, the same bytes twice in the batch, a redelivery of a
/// finished upload, a duplicate of a finished document, a failed and a deleted document taken
/// over, another collection).
async fn a_batch_of_claims_decides_as_one_claim_after_another(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("claim-batch").await.expect("collection");
    let other = store.ensure_collection("claim-batch-2").await.expect("collection");
    let done = process(store.as_ref(), &document(c.id, 40, "done")).await;
    store.persist_chunks(done, "m", 3, &chunks(2, 4.0)).await.expect("persist");
    let failed = process(store.as_ref(), &document(c.id, 41, "failed")).await;
    store.mark_failed(failed, "corrupt").await.expect("fail");
    let deleted = process(store.as_ref(), &document(c.id, 42, "deleted")).await;
    store.delete_documents(&DocumentRef::Id(deleted), None).await.expect("delete");

    let batch = [
        document(c.id, 43, "new"),
        document(c.id, 43, "new-again"),
        document(c.id, 40, "done"),
        document(c.id, 40, "copy-of-done"),
        document(c.id, 41, "retry"),
        document(c.id, 42, "reupload"),
        document(other.id, 43, "elsewhere"),
    ];
    let claims: Vec<Claim> = store.claim_documents(&batch).await.into_iter().map(|r| r.expect("claim")).collect();
    let Claim::Process { document_id: new } = claims[0] else { panic!("new bytes are processed: {claims:?}") };
    let Claim::Process { document_id: elsewhere } = claims[6] else { panic!("another collection: {claims:?}") };
    assert_ne!(new, elsewhere);
    assert_eq!(
        claims,
        vec![
            Claim::Process { document_id: new },
            // Pending under the first upload of the bytes: both may proceed, persist settles.
            Claim::Process { document_id: new },
            Claim::AlreadyDone { document_id: done, chunks: 2, status: DocumentStatus::Ingested },
            Claim::Duplicate { document_id: done, chunks: 2, status: DocumentStatus::Ingested },
            Claim::Process { document_id: failed },
            Claim::Process { document_id: deleted },
            Claim::Process { document_id: elsewhere },
        ]
    );
    // The new row belongs to the first upload; the ones taken over to their new uploads.
    let owner = |id: i64| {
        let env = &env;
        async move { env.text(&format!("SELECT upload_id FROM documents WHERE id = {id}")).await }
    };
    assert_eq!(owner(new).await, "new");
    assert_eq!(owner(failed).await, "retry");
    assert_eq!(owner(deleted).await, "reupload");
    assert!(store.failed_documents(None).await.expect("failed").is_empty(), "taken over: not failed");
    // One claim of a batch of one is the single claim.
    assert_eq!(store.claim_documents(&batch[2..3]).await.pop().expect("one").expect("claim"), claims[2]);
    assert!(store.claim_documents(&[]).await.is_empty());
}

async fn a_failed_document_is_resumed_by_the_next_upload_and_never_downgraded(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("resume").await.expect("collection");
    let id = process(store.as_ref(), &document(c.id, 2, "first")).await;
    store.mark_failed(id, "corrupt: bad bytes").await.expect("fail");
    assert_eq!(store.status().await.expect("status")[0].status, DocumentStatus::Failed);
    // Listed for a retry with what an upload needs, in its collection only.
    let failed = store.failed_documents(None).await.expect("failed documents");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let f = &failed[0];
    assert_eq!((f.document_id, f.collection.as_str(), f.filename.as_str()), (id, "resume", "first.txt"));
    assert_eq!((f.storage_path.as_str(), f.failure_reason.as_deref()), ("/blobs/x", Some("corrupt: bad bytes")));
    assert_eq!((f.content_type.as_deref(), &f.metadata), (Some("text/plain"), &serde_json::json!({"team": "ops"})));
    assert_eq!(store.failed_documents(Some("resume")).await.expect("by collection").len(), 1);
    assert!(store.failed_documents(Some("elsewhere")).await.expect("other collection").is_empty());
    assert_eq!(f.content, None, "its bytes are in the blob store");
    // A small upload's bytes kept in its row come back with it, byte for byte.
    let bytes: Vec<u8> = (0..=255).chain([0, 255, 0]).collect();
    let small =
        NewDocument { storage_path: String::new(), content: Some(bytes.clone().into()), ..document(c.id, 9, "small") };
    let small_id = process(store.as_ref(), &small).await;
    store.mark_failed(small_id, "timed_out").await.expect("fail small");
    let failed = store.failed_documents(Some("resume")).await.expect("failed documents");
    let f = failed.iter().find(|f| f.document_id == small_id).expect("small listed");
    assert_eq!((f.storage_path.as_str(), f.content.as_deref()), ("", Some(bytes.as_slice())));
    assert_eq!(process(store.as_ref(), &document(c.id, 9, "small-again")).await, small_id);
    // The next upload of the bytes takes the document over.
    assert_eq!(process(store.as_ref(), &document(c.id, 2, "second")).await, id);
    assert!(store.failed_documents(None).await.expect("failed documents").is_empty(), "taken over: not failed");
    store.persist_chunks(id, "m", 3, &chunks(1, 2.0)).await.expect("persist");
    // A late failure of the first attempt must not undo the ingest.
    store.mark_failed(id, "timed_out").await.expect("fail late");
    assert_eq!(
        store.claim_document(&document(c.id, 2, "second")).await.expect("claim"),
        Claim::AlreadyDone { document_id: id, chunks: 1, status: DocumentStatus::Ingested }
    );
    // No text is a settled outcome too.
    let empty = process(store.as_ref(), &document(c.id, 3, "scan")).await;
    store.mark_no_text(empty, "no_text: image-only").await.expect("no text");
    assert_eq!(
        store.claim_document(&document(c.id, 3, "scan-again")).await.expect("claim"),
        Claim::Duplicate { document_id: empty, chunks: 0, status: DocumentStatus::NoText }
    );
}

async fn persisting_twice_stores_once_and_returns_the_stored_vectors(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("persist").await.expect("collection");
    let id = process(store.as_ref(), &document(c.id, 4, "p")).await;
    let first = store.persist_chunks(id, "m", 3, &chunks(3, 4.0)).await.expect("persist");
    assert!(first.inserted);
    assert_eq!(first.stored.ids.len(), 3);
    assert!(first.stored.ids.windows(2).all(|w| w[0] < w[1]), "ids follow ordinals: {:?}", first.stored.ids);
    // A concurrent or repeated attempt writes nothing and gets the stored rows back.
    let second = store.persist_chunks(id, "m", 3, &chunks(3, 9.0)).await.expect("persist again");
    assert!(!second.inserted);
    assert_eq!(second.stored, first.stored);
    assert_eq!(store.document_vectors(id, 3).await.expect("vectors"), first.stored);
    assert_eq!(env.count("SELECT count(*) FROM chunks").await, 3);
}

/// Several documents in one transaction: each gets its own result, in order; a deleted one and
/// one already stored do not keep the others from committing; each logs its own entry.
async fn a_batch_commits_together_and_a_refused_document_fails_alone(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("batch").await.expect("collection");
    let done = process(store.as_ref(), &document(c.id, 30, "done")).await;
    let before = store.persist_chunks(done, "m", 3, &chunks(2, 3.0)).await.expect("persist").stored;
    let gone = process(store.as_ref(), &document(c.id, 31, "gone")).await;
    store.delete_documents(&DocumentRef::Id(gone), None).await.expect("delete");
    let first = process(store.as_ref(), &document(c.id, 32, "first")).await;
    let last = process(store.as_ref(), &document(c.id, 33, "last")).await;
    let seq = store.last_log_seq(c.id).await.expect("seq");

    let (a, b, d, e) = (chunks(3, 1.0), chunks(1, 2.0), chunks(2, 9.0), chunks(1, 4.0));
    let batch = [
        DocumentChunks { document_id: last, chunks: &a },
        DocumentChunks { document_id: gone, chunks: &b },
        DocumentChunks { document_id: done, chunks: &d },
        DocumentChunks { document_id: first, chunks: &e },
    ];
    let results = store.persist_documents("m", 3, &batch).await;
    assert_eq!(results.len(), 4);
    let stored: Vec<_> = results.iter().map(|r| r.as_ref().map(|p| (p.inserted, p.stored.ids.len()))).collect();
    assert!(matches!(results[1], Err(StoreError::Deleted(id)) if id == gone), "{:?}", results[1]);
    assert_eq!(
        (stored[0].as_ref().ok(), stored[2].as_ref().ok(), stored[3].as_ref().ok()),
        (Some(&(true, 3)), Some(&(false, 2)), Some(&(true, 1)))
    );
    assert_eq!(results[2].as_ref().expect("stored before").stored, before, "the stored vectors come back");
    let ids = |i: usize| results[i].as_ref().expect("persisted").stored.ids.clone();
    assert_eq!(store.document_vectors(last, 3).await.expect("vectors").ids, ids(0));
    let log = store.log_after(c.id, seq, 10).await.expect("log");
    let mut logged: Vec<Vec<i64>> = log.iter().map(|e| e.chunk_ids.clone()).collect();
    logged.sort();
    let mut expected = vec![ids(0), ids(3)];
    expected.sort();
    assert_eq!(logged, expected, "one log entry per stored document");
    assert_eq!(env.text(&format!("SELECT status FROM documents WHERE id = {gone}")).await, "deleted");
    assert_eq!(env.count(&format!("SELECT count(*) FROM chunks WHERE document_id = {gone}")).await, 0);

    // A collection of another model refuses its document of a batch, not its neighbour.
    let m2 = store.ensure_collection("batch-m2").await.expect("collection");
    let seeded = process(store.as_ref(), &document(m2.id, 35, "seeded")).await;
    store.persist_chunks(seeded, "m2", 3, &chunks(1, 1.0)).await.expect("persist");
    let refused = process(store.as_ref(), &document(m2.id, 36, "refused")).await;
    let neighbour = process(store.as_ref(), &document(c.id, 37, "neighbour")).await;
    let batch =
        [DocumentChunks { document_id: refused, chunks: &e }, DocumentChunks { document_id: neighbour, chunks: &e }];
    let results = store.persist_documents("m", 3, &batch).await;
    assert!(matches!(results[0], Err(StoreError::ModelMismatch { .. })), "{:?}", results[0]);
    assert!(results[1].as_ref().is_ok_and(|p| p.inserted), "{:?}", results[1]);
}

async fn catch_up_replays_the_change_log_of_its_collection_in_order(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("catchup").await.expect("collection");
    let other = store.ensure_collection("catchup-other").await.expect("collection");
    assert_eq!(store.last_log_seq(c.id).await.expect("empty log"), 0);
    let mut all = Vec::new();
    for byte in 5..8u8 {
        let id = process(store.as_ref(), &document(c.id, byte, &format!("d{byte}"))).await;
        all.push(store.persist_chunks(id, "m", 3, &chunks(4, f32::from(byte))).await.expect("persist").stored.ids);
        // Another collection's entries interleave in the sequence; readers filter them out.
        let o = process(store.as_ref(), &document(other.id, byte, &format!("o{byte}"))).await;
        store.persist_chunks(o, "m", 3, &chunks(1, 0.0)).await.expect("persist other");
    }
    let log = store.log_after(c.id, 0, 100).await.expect("log");
    assert_eq!(
        log.iter().map(|e| (e.op, e.chunk_ids.clone())).collect::<Vec<_>>(),
        all.iter().map(|ids| (LogOp::Add, ids.clone())).collect::<Vec<_>>()
    );
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.last_log_seq(c.id).await.expect("last"), log[2].seq);
    // Paging: after a position, at most `limit`; a repeated persist logs nothing.
    assert_eq!(store.log_after(c.id, log[0].seq, 1).await.expect("page"), vec![log[1].clone()]);
    assert!(store.log_after(c.id, log[2].seq, 10).await.expect("end").is_empty());
    // Vectors by id come back in id order; unknown ids are skipped.
    let wanted = vec![all[1][3], all[0][2], 999_999];
    let got = store.vectors_by_ids(&wanted, 3).await.expect("vectors");
    assert_eq!(got.ids, vec![all[0][2], all[1][3]]);
    assert_eq!(got.vectors, vec![5.0, 2.0, 0.5, 6.0, 3.0, 0.5]);
    assert!(!store.identity().await.expect("identity").is_empty());
}

async fn a_delete_logs_its_chunks_hides_them_and_a_reupload_restores_the_document(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("deletes").await.expect("collection");
    let doc = document(c.id, 20, "keep-me");
    let id = process(store.as_ref(), &doc).await;
    let ids = store.persist_chunks(id, "m", 3, &chunks(2, 1.0)).await.expect("persist").stored.ids;
    let before = store.last_log_seq(c.id).await.expect("seq");

    // By upload id, by SHA-256 or by document id; in another collection it names nothing.
    assert!(store.delete_documents(&DocumentRef::Id(id), Some("elsewhere")).await.expect("delete").is_empty());
    let deleted = store.delete_documents(&DocumentRef::UploadId("keep-me".into()), None).await.expect("delete");
    assert_eq!(deleted.len(), 1);
    assert_eq!((deleted[0].document_id, deleted[0].collection.as_str()), (id, "deletes"));
    assert_eq!(deleted[0].chunk_ids, ids);
    assert!(store.delete_documents(&DocumentRef::Sha256(doc.sha256.clone()), None).await.expect("again").is_empty());
    let log = store.log_after(c.id, before, 10).await.expect("log");
    assert_eq!(log.iter().map(|e| (e.op, e.chunk_ids.clone())).collect::<Vec<_>>(), vec![(LogOp::Remove, ids.clone())]);
    assert!(store.fetch_chunks(&ids).await.expect("fetch").is_empty(), "deleted chunks are never returned");
    assert_eq!(env.text(&format!("SELECT status FROM documents WHERE id = {id}")).await, "deleted");

    // An ingest in flight when the delete committed stores nothing.
    let racing = process(store.as_ref(), &document(c.id, 21, "racing")).await;
    store.delete_documents(&DocumentRef::Id(racing), None).await.expect("delete pending");
    let error = store.persist_chunks(racing, "m", 3, &chunks(1, 1.0)).await.expect_err("deleted meanwhile");
    assert!(matches!(error, StoreError::Deleted(d) if d == racing), "{error}");

    // Uploading the bytes again restores the document, with new chunk ids.
    assert_eq!(process(store.as_ref(), &document(c.id, 20, "back-again")).await, id);
    let restored = store.persist_chunks(id, "m", 3, &chunks(2, 1.0)).await.expect("persist").stored.ids;
    assert!(restored.iter().all(|new| ids.iter().all(|old| new > old)), "ids are never reused");
    assert_eq!(store.fetch_chunks(&restored).await.expect("fetch").len(), 2);
}

async fn a_collection_keeps_the_model_it_started_with(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("models").await.expect("collection");
    let a = process(store.as_ref(), &document(c.id, 8, "a")).await;
    store.persist_chunks(a, "model-a", 3, &chunks(1, 1.0)).await.expect("persist");
    let b = process(store.as_ref(), &document(c.id, 9, "b")).await;
    let error = store.persist_chunks(b, "model-b", 3, &chunks(1, 1.0)).await.expect_err("another model");
    assert!(matches!(error, StoreError::ModelMismatch { .. }), "{error}");
    assert_eq!(ragpipe::error::Failure::from(error).code, "model_mismatch");
    let error = store.persist_chunks(b, "model-a", 4, &chunks(1, 1.0)).await.expect_err("another dimension");
    assert!(error.to_string().contains("dimension 4"), "{error}");
}

async fn fetched_chunks_follow_the_requested_order_and_carry_citations(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("fetch").await.expect("collection");
    let id = process(store.as_ref(), &document(c.id, 10, "f")).await;
    let ids = store.persist_chunks(id, "m", 3, &chunks(3, 1.0)).await.expect("persist").stored.ids;
    // A document still pending contributes nothing to answers.
    let pending = process(store.as_ref(), &document(c.id, 11, "pending")).await;
    assert!(store.document_vectors(pending, 3).await.expect("none").ids.is_empty());

    let hits = store.fetch_chunks(&[ids[2], ids[0], 424_242]).await.expect("fetch");
    assert_eq!(hits.iter().map(|h| h.chunk_id).collect::<Vec<_>>(), vec![ids[2], ids[0]]);
    let hit = &hits[0];
    assert_eq!((hit.document_id, hit.filename.as_str(), hit.text.as_str()), (id, "f.txt", "chunk 2 of 1"));
    assert_eq!((hit.char_start, hit.char_end, hit.page), (20, 29, Some(3)));
    assert_eq!(hit.heading_path.as_deref(), Some("Intro > Part"));
    assert_eq!(hit.metadata, serde_json::json!({"team": "ops"}), "with the document's metadata, for filters");
}

async fn status_counts_documents_and_queries_are_logged(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("status").await.expect("collection");
    for byte in 12..15u8 {
        let id = process(store.as_ref(), &document(c.id, byte, &format!("s{byte}"))).await;
        store.persist_chunks(id, "m", 3, &chunks(2, 1.0)).await.expect("persist");
    }
    let failed = process(store.as_ref(), &document(c.id, 15, "broken")).await;
    store.mark_failed(failed, "corrupt").await.expect("fail");
    let rows = store.status().await.expect("status");
    let summary: Vec<_> =
        rows.iter().map(|r| (r.collection.as_str(), r.status, r.documents, r.chunks, r.tokens)).collect();
    // Ordered by collection, then status name; 6 chunks of 4 tokens each.
    assert_eq!(
        summary,
        vec![("status", DocumentStatus::Failed, 1, 0, 0), ("status", DocumentStatus::Ingested, 3, 6, 24)]
    );

    store
        .log_queries(&[QueryLogEntry {
            query_id: "q-1".into(),
            collection: "status".into(),
            query: "how many?".into(),
            top_k: 2,
            chunk_ids: vec![1, 2],
            scores: vec![0.9, 0.5],
            error_code: None,
            latency_ms: 12,
            mode: Some("hybrid".into()),
            cache_layer: None,
            input_tokens: Some(1200),
            output_tokens: Some(40),
            cost_usd: Some(0.68),
        }])
        .await
        .expect("log");
    assert_eq!(
        env.count("SELECT count(*) FROM query_log WHERE top_k = 2 AND query_id = 'q-1' AND mode = 'hybrid' AND output_tokens = 40").await,
        1
    );
    for rating in ["up", "down", "up"] {
        let feedback = FeedbackEntry { query_id: "q-1".into(), rating: rating.into(), comment: Some("thanks".into()) };
        store.record_feedback(&feedback).await.expect("feedback");
    }
    assert_eq!(env.count("SELECT count(*) FROM query_feedback WHERE query_id = 'q-1' AND rating = 'up'").await, 2);
    let bad = FeedbackEntry { query_id: "q-1".into(), rating: "meh".into(), comment: None };
    assert!(store.record_feedback(&bad).await.is_err(), "ratings are up or down");
    store.ping().await.expect("ping");

    // The summary `ragpipe status` shows: cache layers, failures, latency, cost, ratings.
    let logged = |id: &str, layer: Option<&str>, error: Option<&str>, latency_ms: i32| QueryLogEntry {
        query_id: id.into(),
        collection: "status".into(),
        query: "again?".into(),
        top_k: 2,
        chunk_ids: vec![],
        scores: vec![],
        error_code: error.map(Into::into),
        latency_ms,
        mode: Some("dense".into()),
        cache_layer: layer.map(Into::into),
        input_tokens: None,
        output_tokens: None,
        cost_usd: None,
    };
    let batch = [
        logged("q-2", Some("response"), None, 2),
        logged("q-3", Some("response"), None, 4),
        logged("q-4", Some("retrieval"), None, 6),
        logged("q-5", None, Some("timeout"), 5_000),
    ];
    store.log_queries(&batch).await.expect("log");
    store.log_queries(&[]).await.expect("an empty batch writes nothing");
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let summary = store.query_summary(hour_ago).await.expect("summary");
    assert_eq!((summary.queries, summary.errors), (5, 1), "{summary:?}");
    let layers = vec![("response".to_owned(), 2), ("retrieval".to_owned(), 1), ("none".to_owned(), 1)];
    assert_eq!(summary.by_cache_layer, layers, "{summary:?}");
    // (12 + 2 + 4 + 6) / 4 answered queries; the failed one is left out.
    assert_eq!(summary.mean_latency_ms, Some(6.0), "{summary:?}");
    assert!((summary.llm_cost_usd - 0.68).abs() < 1e-9, "{summary:?}");
    assert_eq!((summary.feedback_up, summary.feedback_down), (2, 1), "{summary:?}");
    let later = store.query_summary(chrono::Utc::now() + chrono::Duration::hours(1)).await.expect("summary");
    assert_eq!((later.queries, later.feedback_up, later.mean_latency_ms), (0, 0, None), "{later:?}");
}

async fn rebuilds_read_live_vectors_in_pages_and_record_generations(env: TestEnv) {
    let store = env.store().await;
    let c = store.ensure_collection("rebuild-pages").await.expect("collection");
    let other = store.ensure_collection("rebuild-other").await.expect("collection");
    let names: Vec<String> = store.collections().await.expect("collections").into_iter().map(|c| c.name).collect();
    assert!(names.contains(&"rebuild-pages".to_owned()) && names.contains(&"rebuild-other".to_owned()), "{names:?}");
    let mut ids = Vec::new();
    for byte in 30..33u8 {
        let id = process(store.as_ref(), &document(c.id, byte, &format!("r{byte}"))).await;
        ids.extend(store.persist_chunks(id, "m", 3, &chunks(3, f32::from(byte))).await.expect("persist").stored.ids);
    }
    let o = process(store.as_ref(), &document(other.id, 30, "other")).await;
    store.persist_chunks(o, "m", 3, &chunks(2, 0.0)).await.expect("persist other");
    store.delete_documents(&DocumentRef::UploadId("r31".into()), None).await.expect("delete");
    let live: Vec<i64> =
        ids.iter().copied().enumerate().filter(|(i, _)| !(3..6).contains(i)).map(|(_, id)| id).collect();

    // Pages by id, only live chunks of this collection, with their vectors.
    let first = store.live_vectors(c.id, 0, 4, 3).await.expect("page");
    assert_eq!(first.ids, live[..4]);
    assert_eq!(first.vectors.len(), 12);
    let rest = store.live_vectors(c.id, first.ids[3], 4, 3).await.expect("page");
    assert_eq!(rest.ids, live[4..]);
    assert_eq!(&rest.vectors[..3], &[32.0, 1.0, 0.5], "the second chunk of the third document");
    let (count, seq) = store.live_state(c.id).await.expect("live state");
    assert_eq!((count, seq), (6, store.last_log_seq(c.id).await.expect("seq")));

    assert_eq!(store.last_generation(c.id).await.expect("none yet"), None);
    let mut record = ragpipe::store::GenerationRecord {
        collection_id: c.id,
        generation: 2,
        ok: true,
        kind: "ivf (nlist 8, nprobe 2)".into(),
        vectors: 6,
        expected: 6,
        recall: Some(0.97),
        log_seq: seq,
        reason: None,
        timings: serde_json::json!({"fetch": 0.5}),
        finished_at: None,
    };
    store.record_generation(&record).await.expect("record");
    record.generation = 3;
    record.ok = false;
    record.reason = Some("recall 0.9 below 0.95".into());
    store.record_generation(&record).await.expect("record failure");
    let last = store.last_generation(c.id).await.expect("read").expect("recorded");
    assert!(last.finished_at.is_some());
    assert_eq!(ragpipe::store::GenerationRecord { finished_at: None, ..last }, record, "the newest, as written");
    assert_eq!(store.last_generation(other.id).await.expect("other"), None);
}

async fn a_scheduled_run_is_claimed_once_and_taken_over_only_when_stale(env: TestEnv) {
    let store = env.store().await;
    let at: chrono::DateTime<chrono::Utc> = "2026-12-07T03:00:00Z".parse().expect("time");
    let lease = std::time::Duration::from_secs(3600);
    assert!(store.claim_run("job", at, "a", lease).await.expect("claim"));
    assert!(!store.claim_run("job", at, "b", lease).await.expect("claim"), "held by a");
    assert!(store.claim_run("other-job", at, "b", lease).await.expect("claim"), "jobs are separate");
    let next = at + chrono::Duration::days(1);
    assert!(store.claim_run("job", next, "b", lease).await.expect("claim"), "each trigger is claimed anew");
    // A holder that died: after the lease, another scheduler takes the run over...
    assert!(store.claim_run("job", at, "c", std::time::Duration::ZERO).await.expect("claim"), "stale claim");
    // ...but a finished run is never run again.
    store.finish_run("job", at).await.expect("finish");
    assert!(!store.claim_run("job", at, "d", std::time::Duration::ZERO).await.expect("claim"), "finished");
}

async fn a_query_log_batch_longer_than_one_statement_is_written_whole(env: TestEnv) {
    let store = env.store().await;
    // Three statements' worth (the last one partial), each entry distinct.
    let n = 2 * ragpipe::store::QUERY_LOG_ROWS_PER_INSERT + 7;
    let entries: Vec<QueryLogEntry> = (0..n)
        .map(|i| QueryLogEntry {
            query_id: format!("batch-{i}"),
            collection: "batched".into(),
            query: format!("question {i}"),
            top_k: 3,
            chunk_ids: vec![i as i64, i as i64 + 1],
            scores: vec![0.5, 0.25],
            error_code: None,
            latency_ms: i as i32,
            mode: Some("dense".into()),
            cache_layer: None,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
        })
        .collect();
    store.log_queries(&entries).await.expect("log");
    assert_eq!(env.count("SELECT count(*) FROM query_log WHERE collection = 'batched'").await, n as i64);
    let last = format!("SELECT count(*) FROM query_log WHERE query_id = 'batch-{}' AND latency_ms = {}", n - 1, n - 1);
    assert_eq!(env.count(&last).await, 1, "the last entry, as written");
}

async fn shared_position_reads_serve_many_queries_and_never_miss_an_earlier_commit(env: TestEnv) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ragpipe::store::log_positions::LogPositions;
    let store = env.store().await;
    let c = store.ensure_collection("positions").await.expect("collection");
    let positions = LogPositions::new(store.clone());
    assert_eq!(positions.last_log_seq(c.id).await.expect("empty log"), 0);

    // Many queries at once share reads, and all get the position.
    let id = process(store.as_ref(), &document(c.id, 30, "p0")).await;
    store.persist_chunks(id, "m", 3, &chunks(2, 1.0)).await.expect("persist");
    let expected = store.last_log_seq(c.id).await.expect("seq");
    let before = positions.reads();
    let got = futures::future::join_all((0..64).map(|_| positions.last_log_seq(c.id))).await;
    assert!(got.iter().all(|p| *p.as_ref().expect("position") == expected), "{got:?} vs {expected}");
    let reads = positions.reads() - before;
    assert!((1..=16).contains(&reads), "64 queries took {reads} reads");

    // With reads always under way (others asking in a loop), a query asked after a commit
    // still sees it: it never joins a read that began before it asked.
    let busy = Arc::new(AtomicBool::new(true));
    let hammer = {
        let (positions, busy, collection) = (positions.clone(), busy.clone(), c.id);
        tokio::spawn(async move {
            while busy.load(Ordering::Relaxed) {
                futures::future::join_all((0..8).map(|_| positions.last_log_seq(collection))).await;
            }
        })
    };
    for byte in 31..51u8 {
        let id = process(store.as_ref(), &document(c.id, byte, &format!("p{byte}"))).await;
        store.persist_chunks(id, "m", 3, &chunks(1, f32::from(byte))).await.expect("persist");
        let committed = store.last_log_seq(c.id).await.expect("seq");
        assert_eq!(positions.last_log_seq(c.id).await.expect("position"), committed, "after document {byte}");
    }
    busy.store(false, Ordering::Relaxed);
    hammer.await.expect("hammer");
}
