//! A `ragpipe reindex` process SIGKILLed at random moments, 60 times, against PostgreSQL, while
//! documents keep arriving: every restart finds a valid snapshot (the old generation or the new,
//! never a torn one) and catches up to exactly the store's live count.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::TestEnv;
use ragpipe::index::snapshot;
use ragpipe::store::{Claim, Collection, NewChunk, NewDocument, Store};
use secrecy::ExposeSecret;

const DIMS: usize = 32;
const KILLS: usize = 60;

/// A config file for `ragpipe` processes of `env` (its PostgreSQL database, queue names and
/// data directory; hash embedder of `DIMS`).
fn config_file(env: &TestEnv) -> PathBuf {
    let s = &env.settings;
    let secret = |url: &Option<secrecy::SecretString>| url.as_ref().expect("url").expose_secret().to_owned();
    let text = format!(
        "[database]\nurl = {:?}\npool_size = 3\n\
         [broker]\nurl = {:?}\nevents_exchange = {:?}\ningest_exchange = {:?}\ningest_queue = {:?}\n\
         dead_letter_exchange = {:?}\ndead_letter_queue = {:?}\nquery_queue = {:?}\ndelivery_limit = {}\n\
         [cache]\nurl = {:?}\nkey_prefix = {:?}\n\
         [storage]\ndata_dir = {:?}\n\
         [embedder]\nkind = \"hash\"\nmodel = {:?}\ndimensions = {DIMS}\n\
         [index]\nkind = \"flat\"\n[http]\nenabled = false\n",
        secret(&s.database.url),
        secret(&s.broker.url),
        s.broker.events_exchange,
        s.broker.ingest_exchange,
        s.broker.ingest_queue,
        s.broker.dead_letter_exchange,
        s.broker.dead_letter_queue,
        s.broker.query_queue,
        s.broker.delivery_limit,
        secret(&s.cache.url),
        s.cache.key_prefix,
        s.storage.data_dir.display().to_string(),
        s.embedder.model,
    );
    let path = env.dir.path().join("workers.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn reindex(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragpipe"));
    command
        .args(["reindex", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Adds one document of `chunks` random unit vectors.
async fn add_document(store: &dyn Store, collection: &Collection, model: &str, n: usize, chunks: usize) {
    let doc = NewDocument {
        collection_id: collection.id,
        sha256: format!("{:064x}", n + 1),
        upload_id: format!("upload-{n}"),
        filename: format!("doc-{n}.txt"),
        content_type: None,
        size_bytes: 1,
        storage_path: String::new(),
        content: None,
        metadata: serde_json::json!({}),
    };
    let Claim::Process { document_id } = store.claim_document(&doc).await.expect("claim") else { panic!("new") };
    let mut state = (n as u64 + 1) * 0x9e37_79b9;
    let chunks: Vec<NewChunk> = (0..chunks)
        .map(|c| {
            let mut v: Vec<f32> = (0..DIMS)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            ragpipe::embed::normalize(&mut v);
            NewChunk {
                ordinal: c as i32,
                text: format!("{n}-{c}"),
                token_count: 1,
                char_start: 0,
                char_end: 1,
                page_start: None,
                page_end: None,
                heading_path: None,
                embedding: v,
            }
        })
        .collect();
    store.persist_chunks(document_id, model, DIMS, &chunks).await.expect("persist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_sigkill_at_any_moment_and_restarts_catch_up() {
    let mut env = TestEnv::new().await;
    env.settings.embedder.dimensions = DIMS;
    env.settings.embedder.model = "hash-crash".into();
    env.settings.index.kind = ragpipe::config::IndexKindSetting::Flat;
    let config = config_file(&env);
    let services = env.services().await;
    let store = services.store.clone();
    let model = services.embedding.embedder().model_id().to_owned();
    let collection = store.ensure_collection("crashy").await.expect("collection");
    // Enough vectors that writing the index file takes a while (13 MB).
    for n in 0..40 {
        add_document(store.as_ref(), &collection, &model, n, 2_500).await;
    }
    // One complete run first, timed: later kills land anywhere within such a run.
    let started = Instant::now();
    let first = reindex(&config).stderr(Stdio::piped()).stdout(Stdio::piped()).output().expect("run reindex");
    assert!(
        first.status.success(),
        "a first, complete reindex:\n{}\n{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    let full_run = started.elapsed();
    let store_id = store.identity().await.expect("identity");
    let index_dir = env.settings.index_dir();

    let dir = snapshot::collection_dir(&index_dir, "crashy");
    // Half-written files (index or manifest temp files) present in the snapshot directory.
    let temp_files = || -> std::collections::HashSet<String> {
        std::fs::read_dir(&dir)
            .expect("snapshot dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with('.'))
            .collect()
    };
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut killed_mid_write = 0;
    for round in 0..KILLS {
        add_document(store.as_ref(), &collection, &model, 100 + round, 50).await;
        let before = temp_files();
        let mut child = reindex(&config).spawn().expect("start reindex");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = if round % 2 == 0 {
            // A moment spread over the whole run (startup, fetch, build, write, record).
            let at = full_run.mul_f64((rng % 1_000) as f64 / 1_000.0);
            tokio::time::sleep(at).await;
            at
        } else {
            // The moment a snapshot file is being written: watch for its temp file.
            let started = Instant::now();
            while temp_files().is_subset(&before)
                && child.try_wait().expect("poll child").is_none()
                && started.elapsed() < full_run * 5
            {
                tokio::task::yield_now().await;
            }
            started.elapsed()
        };
        // SAFETY: signals a child process this test started and still owns.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        child.wait().expect("reap");
        if !temp_files().is_subset(&before) {
            killed_mid_write += 1;
        }

        // A restart: the snapshot on disk is valid (old or new) and catch-up reaches the store.
        let (last_seq, (live, _)) = (
            store.last_log_seq(collection.id).await.expect("seq"),
            store.live_state(collection.id).await.expect("live"),
        );
        let expected = snapshot::Expected {
            collection: "crashy",
            dimensions: DIMS,
            model: &model,
            store_id: &store_id,
            collection_id: collection.id,
            last_seq,
        };
        let loaded = snapshot::load(&index_dir, &expected).expect("readable directory");
        assert!(loaded.is_some(), "round {round}: no valid snapshot after a SIGKILL at {at:?}");
        let restarted = env.services().await;
        restarted.indexes.search(&collection, vec![1.0 / (DIMS as f32).sqrt(); DIMS], 1).await.expect("search");
        let stats = restarted.indexes.stats("crashy").await.expect("open");
        assert!(stats.from_snapshot, "round {round}: the snapshot was loaded, not rebuilt: {stats:?}");
        assert_eq!(stats.vectors as i64, live, "round {round}: caught up to the store");
    }
    println!("{KILLS} SIGKILLs, {killed_mid_write} of them while a snapshot file was half-written");
    assert!(killed_mid_write >= KILLS / 4, "only {killed_mid_write} kills landed mid-write");
}
