//! Index builds and rebuilds on both backends: `auto` turns IVF past its threshold with measured
//! recall, a rebuild under queries swaps every replica to a new generation without one embedding
//! of a chunk and without returning deleted chunks, one scheduler wins each trigger, and a
//! corrupt, truncated or mismatched snapshot is rebuilt.

mod common;
mod embed_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::TestEnv;
use embed_common::FakeOpenAi;
use ragpipe::config::IndexKindSetting;
use ragpipe::index::IndexKind;
use ragpipe::messages::{self, DOCUMENT_DELETED, DocumentDeleted, VERSION};
use ragpipe::scheduler;
use ragpipe::store::{Claim, Collection, DocumentRef, NewChunk, NewDocument, Store};
use ragpipe::worker::Role;

on_both_backends!(
    auto_switches_to_ivf_past_its_threshold_with_measured_recall,
    a_rebuild_under_queries_swaps_replicas_without_embedding_a_chunk,
    one_scheduler_wins_each_trigger,
    a_corrupt_truncated_or_mismatched_snapshot_is_rebuilt,
    re_embedding_switches_the_model_only_when_every_chunk_has_its_new_vector,
    an_index_is_snapshotted_after_n_changes_without_waiting_for_the_interval,
);

const DIMS: usize = 32;

/// Unit vectors around 40 centres: clustered like the embeddings of a corpus.
fn clustered(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut centres_state = 7u64;
    let mut centre_next = move || {
        centres_state ^= centres_state << 13;
        centres_state ^= centres_state >> 7;
        centres_state ^= centres_state << 17;
        (centres_state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..40).map(|_| (0..DIMS).map(|_| centre_next()).collect()).collect();
    let mut out = Vec::with_capacity(n * DIMS);
    for i in 0..n {
        let start = out.len();
        out.extend(centres[i % centres.len()].iter().map(|c| c + 0.25 * next()));
        ragpipe::embed::normalize(&mut out[start..]);
    }
    out
}

/// Stores `docs` documents of `per_doc` chunks with synthetic vectors (as ingest would have),
/// returning their upload ids.
async fn store_vectors(
    store: &dyn Store,
    collection: &Collection,
    model: &str,
    docs: usize,
    per_doc: usize,
) -> Vec<String> {
    let vectors = clustered(docs * per_doc, collection.id as u64 * 1_000 + 1);
    let mut uploads = Vec::new();
    for d in 0..docs {
        let upload_id = format!("upload-{}-{d}", collection.name);
        let doc = NewDocument {
            collection_id: collection.id,
            sha256: format!("{:064x}", d + 1),
            upload_id: upload_id.clone(),
            filename: format!("doc-{d}.txt"),
            content_type: Some("text/plain".into()),
            size_bytes: 100,
            storage_path: String::new(),
            content: None,
            metadata: serde_json::json!({}),
        };
        let Claim::Process { document_id } = store.claim_document(&doc).await.expect("claim") else {
            panic!("a new document is processed")
        };
        let chunks: Vec<NewChunk> = (0..per_doc)
            .map(|c| {
                let row = d * per_doc + c;
                NewChunk {
                    ordinal: c as i32,
                    text: format!("chunk text {d}-{c}"),
                    token_count: 4,
                    char_start: 0,
                    char_end: 10,
                    page_start: None,
                    page_end: None,
                    heading_path: None,
                    embedding: vectors[row * DIMS..(row + 1) * DIMS].to_vec(),
                }
            })
            .collect();
        store.persist_chunks(document_id, model, DIMS, &chunks).await.expect("persist");
        uploads.push(upload_id);
    }
    uploads
}

fn use_fake_embedder(env: &mut TestEnv, fake: &FakeOpenAi) {
    fake.configure(&mut env.settings.embedder);
    env.settings.embedder.dimensions = DIMS;
}

async fn auto_switches_to_ivf_past_its_threshold_with_measured_recall(mut env: TestEnv) {
    let fake = FakeOpenAi::healthy(DIMS).await;
    use_fake_embedder(&mut env, &fake);
    env.settings.index.kind = IndexKindSetting::Auto;
    env.settings.index.auto_threshold = 4_000;
    let services = env.services().await;
    let model = services.embedding.embedder().model_id().to_owned();
    let small = services.store.ensure_collection("small").await.expect("collection");
    let large = services.store.ensure_collection("large").await.expect("collection");
    store_vectors(services.store.as_ref(), &small, &model, 10, 100).await;
    store_vectors(services.store.as_ref(), &large, &model, 60, 100).await;

    let report = services.indexes.rebuild(&small).await.expect("rebuild small");
    assert_eq!(report.kind, IndexKind::Flat, "below the threshold: exact");
    let report = services.indexes.rebuild(&large).await.expect("rebuild large");
    let IndexKind::Ivf { nlist, nprobe } = report.kind else {
        panic!("past the threshold: IVF, got {:?}", report.kind)
    };
    // About 4·√N cells, but no more than 39 training vectors per cell allow.
    assert_eq!(nlist, ((4.0 * 6_000f64.sqrt()).round() as usize).min(6_000 / 39), "nlist");
    let recall = report.verification.recall.expect("recall measured");
    assert!(recall >= 0.95, "recall@10 {recall} at nprobe {nprobe}");
    assert!(nprobe < nlist, "tuning stopped before searching every cell (nprobe {nprobe} of {nlist})");
    assert_eq!(report.verification.failure, None);
    assert_eq!(report.verification.vectors, 6_000);
    let recorded = services.store.last_generation(large.id).await.expect("store").expect("recorded");
    assert!(recorded.ok && recorded.vectors == 6_000 && recorded.recall == Some(recall), "{recorded:?}");
    // A query worker opening the collection now loads that snapshot, of that kind.
    let stats = {
        let services = env.services().await;
        services.indexes.search(&large, clustered(1, 99), 10).await.expect("search");
        services.indexes.stats("large").await.expect("open")
    };
    assert!(stats.from_snapshot && stats.kind == report.kind && stats.generation == report.generation, "{stats:?}");
    assert!(fake.requests().is_empty(), "no embedding call: {} requests", fake.requests().len());
}

async fn a_rebuild_under_queries_swaps_replicas_without_embedding_a_chunk(mut env: TestEnv) {
    let fake = FakeOpenAi::healthy(DIMS).await;
    use_fake_embedder(&mut env, &fake);
    env.settings.index.kind = IndexKindSetting::Ivf;
    // Followers also adopt recorded generations on this tick (the event is the fast path).
    env.settings.index.snapshot_interval_secs = 1;
    let replica = env.start_worker(&[Role::Query]).await;
    let store = replica.services.store.clone();
    let model = replica.services.embedding.embedder().model_id().to_owned();
    let collection = store.ensure_collection("rebuilt").await.expect("collection");
    let uploads = store_vectors(store.as_ref(), &collection, &model, 40, 100).await;
    let probe = clustered(40 * 100, collection.id as u64 * 1_000 + 1);
    let indexes = replica.services.indexes.clone();
    indexes.search(&collection, probe[..DIMS].to_vec(), 5).await.expect("open the replica's index");
    // The replica may have opened the collection at start, before the vectors were stored (they
    // bypass the pipeline, so no event announces them): bring it up to date as its follower would.
    indexes.catch_up("rebuilt").await.expect("catch up");
    let before = indexes.stats("rebuilt").await.expect("open");
    assert_eq!(before.vectors, 4_000);

    // A steady stream of searches on the replica, checking every result against the deletes
    // committed before the search began.
    let deleted_chunks: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (indexes, collection, deleted, stop, searches) =
            (indexes.clone(), collection.clone(), deleted_chunks.clone(), stop.clone(), searches.clone());
        async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let gone: Vec<i64> = deleted.lock().expect("lock").clone();
                let row = (i * 37) % 4_000;
                let (hits, _) = indexes
                    .search(&collection, probe[row * DIMS..(row + 1) * DIMS].to_vec(), 10)
                    .await
                    .expect("search");
                assert!(!hits.is_empty());
                assert!(hits.iter().all(|h| !gone.contains(&h.0)), "a deleted chunk was returned: {hits:?}");
                searches.fetch_add(1, Ordering::SeqCst);
                i += 1;
                tokio::task::yield_now().await;
            }
        }
    });

    // Delete a document as `ragpipe delete` does; the replica follows the event.
    let deleted = store.delete_documents(&DocumentRef::UploadId(uploads[3].clone()), None).await.expect("delete");
    let queue = env.queue().await;
    let event = DocumentDeleted {
        v: VERSION,
        collection: "rebuilt".into(),
        document_id: deleted[0].document_id,
        sha256: deleted[0].sha256.clone(),
        chunks: deleted[0].chunk_ids.len() as i64,
    };
    queue.events.publish(DOCUMENT_DELETED, &messages::encode(&event)).await.expect("event");
    wait_until(|| async { indexes.stats("rebuilt").await.is_some_and(|s| s.vectors == 3_900) }).await;
    deleted_chunks.lock().expect("lock").extend(&deleted[0].chunk_ids);

    // The rebuild runs in another "process" (its own services), as the scheduler would.
    let scheduler_services = env.services().await;
    let reports = scheduler::rebuild_collections(
        scheduler_services.indexes.as_ref(),
        scheduler_services.queue.events.as_ref(),
        std::slice::from_ref(&collection),
    )
    .await;
    let report = reports[0].1.as_ref().expect("rebuild");
    assert_eq!(report.verification.failure, None, "{report:?}");
    assert_eq!(report.verification.vectors, 3_900, "deleted chunks are dropped");
    assert!(matches!(report.kind, IndexKind::Ivf { .. }));
    wait_until(|| async { indexes.stats("rebuilt").await.is_some_and(|s| s.generation == report.generation) }).await;
    let searched_before = searches.load(Ordering::SeqCst);
    wait_until(|| async { searches.load(Ordering::SeqCst) > searched_before + 20 }).await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("no search failed or returned a deleted chunk");
    let after = indexes.stats("rebuilt").await.expect("open");
    assert!(after.generation > before.generation && after.vectors == 3_900, "{after:?}");
    assert_eq!(after.kind, report.kind, "the replica serves the rebuilt generation");
    assert!(fake.requests().is_empty(), "no embedding request: {:?}", fake.inputs());
    replica.stop().await;
}

async fn one_scheduler_wins_each_trigger(mut env: TestEnv) {
    env.settings.embedder.dimensions = DIMS;
    let (one, two) = (env.services().await, env.services().await);
    let model = one.embedding.embedder().model_id().to_owned();
    let collection = one.store.ensure_collection("nightly").await.expect("collection");
    store_vectors(one.store.as_ref(), &collection, &model, 5, 20).await;
    // Two schedulers (in one test process: told apart by their holder names).
    let a = one.scheduler();
    let mut b = two.scheduler();
    b.holder = format!("{}-second", b.holder);
    let mut generations = Vec::new();
    for trigger in ["2026-12-07T03:00:00Z", "2026-12-08T03:00:00Z"] {
        let at: chrono::DateTime<chrono::Utc> = trigger.parse().expect("time");
        let (ra, rb) = tokio::join!(scheduler::run_trigger(&a, at), scheduler::run_trigger(&b, at));
        let (ra, rb) = (ra.expect("claim"), rb.expect("claim"));
        assert!(ra.is_some() != rb.is_some(), "exactly one scheduler runs the {trigger} rebuild");
        let reports = ra.or(rb).expect("one ran");
        assert_eq!(reports.len(), 1);
        generations.push(reports[0].1.as_ref().expect("rebuilt").generation);
        // Asking again for the same trigger (a restarted scheduler) runs nothing.
        assert!(scheduler::run_trigger(&a, at).await.expect("claim").is_none());
    }
    assert!(generations[1] > generations[0], "{generations:?}");
}

async fn a_corrupt_truncated_or_mismatched_snapshot_is_rebuilt(mut env: TestEnv) {
    env.settings.index.kind = IndexKindSetting::Flat;
    env.settings.embedder.dimensions = DIMS;
    let services = env.services().await;
    let model = services.embedding.embedder().model_id().to_owned();
    let collection = services.store.ensure_collection("damaged").await.expect("collection");
    store_vectors(services.store.as_ref(), &collection, &model, 10, 50).await;
    services.indexes.rebuild(&collection).await.expect("snapshot");
    let dir = env.settings.index_dir().join("damaged");
    let index_file = || {
        std::fs::read_dir(&dir)
            .expect("snapshot dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "faiss"))
            .expect("an index file")
    };
    let open = |env: &TestEnv| {
        let settings = env.settings.clone();
        let db = env.embedded_database();
        let collection = collection.clone();
        async move {
            let program = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ragpipe"));
            let services = ragpipe::worker::connect_with(settings, program, &db).await.expect("services");
            services.indexes.search(&collection, clustered(1, 5), 3).await.expect("search");
            services.indexes.stats("damaged").await.expect("open")
        }
    };
    let intact = open(&env).await;
    assert!(intact.from_snapshot && intact.vectors == 500, "{intact:?}");

    // Truncated.
    let file = index_file();
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    let truncated = open(&env).await;
    assert!(!truncated.from_snapshot && truncated.vectors == 500, "{truncated:?}");

    // Corrupt (same length, flipped bytes).
    let mut flipped = bytes.clone();
    for b in flipped.iter_mut().skip(bytes.len() / 2).take(64) {
        *b ^= 0xff;
    }
    std::fs::write(&file, &flipped).expect("corrupt");
    let corrupt = open(&env).await;
    assert!(!corrupt.from_snapshot && corrupt.vectors == 500, "{corrupt:?}");

    // Mismatched kind: the settings now ask for HNSW.
    std::fs::write(&file, &bytes).expect("restore");
    env.settings.index.kind = IndexKindSetting::Hnsw;
    let other_kind = open(&env).await;
    assert!(!other_kind.from_snapshot && other_kind.vectors == 500, "{other_kind:?}");
    assert!(matches!(other_kind.kind, IndexKind::Hnsw { m: 32, .. }), "{other_kind:?}");
}

/// Waits (boundedly) for `condition`, re-checking as the worker works.
async fn wait_until<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn re_embedding_switches_the_model_only_when_every_chunk_has_its_new_vector(mut env: TestEnv) {
    // Ingested with the hash embedder (dimension 32)...
    env.settings.embedder.dimensions = DIMS;
    let old = env.services().await;
    let old_model = old.embedding.embedder().model_id().to_owned();
    let collection = old.store.ensure_collection("remodel").await.expect("collection");
    store_vectors(old.store.as_ref(), &collection, &old_model, 6, 50).await;
    old.indexes.rebuild(&collection).await.expect("index of the old model");

    // ...then the configuration names another model of another dimension, whose server fails
    // after 100 inputs: the run stops, the collection keeps its old model and vectors.
    let served = Arc::new(AtomicUsize::new(0));
    let script: embed_common::Script = Arc::new({
        let served = served.clone();
        move |seen: &embed_common::Seen| {
            let total = served.fetch_add(seen.inputs.len(), Ordering::SeqCst) + seen.inputs.len();
            (total > 100 && total < 1_000_000).then(embed_common::bad_key)
        }
    });
    let failing = FakeOpenAi::start(48, Duration::ZERO, script).await;
    failing.configure(&mut env.settings.embedder);
    env.settings.embedder.dimensions = 48;
    let services = env.services().await;
    let error = ragpipe::reembed::reembed(services.store.as_ref(), &services.embedding, &collection)
        .await
        .expect_err("the provider failed");
    assert!(error.to_string().contains("run it again to resume"), "{error}");
    assert_eq!(
        services.store.collection_model(collection.id).await.expect("model"),
        Some((old_model.clone(), DIMS as i64)),
        "still the old model"
    );
    let error = services.indexes.rebuild(&collection).await.expect_err("dimension mismatch");
    assert!(error.to_string().contains("--re-embed"), "{error}");

    // The server recovers: the run resumes (only what was not staged) and switches.
    served.store(1_000_000, Ordering::SeqCst);
    let done =
        ragpipe::reembed::reembed(services.store.as_ref(), &services.embedding, &collection).await.expect("re-embed");
    assert!(!done.unchanged && done.from.as_deref() == Some(old_model.as_str()), "{done:?}");
    assert!(done.embedded < 300, "resumed, not restarted: {} embedded", done.embedded);
    let texts = failing.inputs();
    assert!(texts.iter().all(|t| t.starts_with("chunk text ")), "only chunk texts are embedded");
    let distinct: std::collections::HashSet<&String> = texts.iter().collect();
    assert_eq!(distinct.len(), 300, "every chunk's text was embedded");
    assert_eq!(
        services.store.collection_model(collection.id).await.expect("model"),
        Some((embed_common::MODEL.to_owned(), 48))
    );
    let report = services.indexes.rebuild(&collection).await.expect("rebuild on the new vectors");
    assert_eq!(report.verification.vectors, 300);
    assert_eq!(report.verification.failure, None);
    // Running it again finds nothing to do.
    let again =
        ragpipe::reembed::reembed(services.store.as_ref(), &services.embedding, &collection).await.expect("again");
    assert!(again.unchanged);
}

async fn an_index_is_snapshotted_after_n_changes_without_waiting_for_the_interval(mut env: TestEnv) {
    env.settings.embedder.dimensions = DIMS;
    env.settings.index.snapshot_after_changes = 100;
    let services = env.services().await;
    let collection = services.store.ensure_collection("eager").await.expect("collection");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let snapshots = tokio::spawn(services.indexes.clone().run_snapshots(Duration::from_secs(3600), shutdown.clone()));
    let manifest = env.settings.index_dir().join("eager/manifest.json");
    services.indexes.add(&collection, (1..=60).collect(), clustered(60, 3)).await.expect("add");
    assert!(!manifest.exists(), "60 changes: not yet");
    services.indexes.add(&collection, (61..=120).collect(), clustered(60, 4)).await.expect("add");
    wait_until(|| async { manifest.exists() }).await;
    let written: ragpipe::index::snapshot::Manifest =
        serde_json::from_slice(&std::fs::read(&manifest).expect("read")).expect("manifest");
    assert_eq!(written.count, 120);
    shutdown.cancel();
    snapshots.await.expect("snapshot task");
}
