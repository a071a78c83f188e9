//! A distributed `ragpipe worker` process (PostgreSQL, RabbitMQ, Redis) stopped with SIGTERM in
//! the middle of a few hundred uploads: it exits 0 without logging an error, and after a restart
//! every document is ingested exactly once.
#![allow(clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestEnv;
use futures::StreamExt;
use ragpipe::messages::{self, DOCUMENT_FAILED, DOCUMENT_INGESTED};
use ragpipe::queue::Events;
use secrecy::ExposeSecret;

/// A config file for the worker processes of `env` (its database, queue names, key prefix).
fn config_file(env: &TestEnv) -> PathBuf {
    let s = &env.settings;
    let b = &s.broker;
    let secret = |url: &Option<secrecy::SecretString>| url.as_ref().expect("url").expose_secret().to_owned();
    let roots: Vec<String> = s.storage.allowed_roots.iter().map(|r| format!("{:?}", r.display().to_string())).collect();
    let text = format!(
        "[database]\nurl = {:?}\npool_size = 5\n\
         [broker]\nurl = {:?}\ningest_exchange = {:?}\ningest_queue = {:?}\ndead_letter_exchange = {:?}\n\
         dead_letter_queue = {:?}\nquery_queue = {:?}\nevents_exchange = {:?}\ndelivery_limit = {}\n\
         [cache]\nurl = {:?}\nkey_prefix = {:?}\n\
         [storage]\ndata_dir = {:?}\nallowed_roots = [{}]\n\
         [embedder]\nkind = \"hash\"\nmodel = \"hash-v1\"\nmax_wait_ms = 5\n\
         [index]\nsnapshot_interval_secs = 3600\n[http]\nenabled = false\n",
        secret(&s.database.url),
        secret(&b.url),
        b.ingest_exchange,
        b.ingest_queue,
        b.dead_letter_exchange,
        b.dead_letter_queue,
        b.query_queue,
        b.events_exchange,
        b.delivery_limit,
        secret(&s.cache.url),
        s.cache.key_prefix,
        s.storage.data_dir.display().to_string(),
        roots.join(", "),
    );
    let path = env.dir.path().join("workers.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn spawn_worker(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["worker", "--role", "ingest", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ragpipe worker")
}

/// SIGTERM, then wait: the worker must exit 0.
fn terminate(mut child: Child, log: &Path) {
    // SAFETY: signals a child process we started and still own.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait for the worker");
    assert!(status.success(), "the worker exits 0 on SIGTERM: {status}; see {}", log.display());
}

/// Collects outcomes into `done` until it holds `target` uploads.
async fn outcomes_until(events: &mut Events, done: &mut HashSet<String>, target: usize, log: &Path) {
    while done.len() < target {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .unwrap_or_else(|_| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                panic!("stuck at {} of {target} outcomes; the worker's log ends:\n{}", done.len(), tail.join("\n"))
            })
            .expect("stream")
            .expect("event");
        assert_eq!(
            event.routing_key,
            DOCUMENT_INGESTED,
            "no upload may fail here: {:?}",
            String::from_utf8_lossy(&event.body)
        );
        let body: serde_json::Value = serde_json::from_slice(&event.body).expect("json");
        done.insert(body["upload_id"].as_str().expect("upload_id").to_owned());
    }
}

/// Lines of the (JSON) log at level ERROR.
fn errors_in(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter(|line| line.contains("\"level\":\"ERROR\"")).map(str::to_owned).collect()
}

/// Every "upload done" line (JSON) names its upload, collection, document and stage through its
/// spans, and at least `uploads` such lines were written.
fn assert_upload_lines_carry_their_context(log: &Path, uploads: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut seen = 0;
    for line in text.lines().filter(|l| l.contains("\"upload done\"")) {
        let json: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let spans = json["spans"].as_array().unwrap_or_else(|| panic!("no spans: {line}"));
        let field = |name: &str| spans.iter().find_map(|s| s.get(name).cloned()).unwrap_or_default();
        assert_eq!(field("upload_id"), json["upload_id"], "{line}");
        assert_eq!(field("collection"), "stopped", "{line}");
        assert!(field("document_id").is_i64(), "{line}");
        // Persisted now, or found done already (a redelivery after the SIGTERM).
        assert!(field("stage") == "persist" || field("stage") == "dedup", "{line}");
        seen += 1;
    }
    assert!(seen >= uploads, "{seen} upload lines for {uploads} uploads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_ingest_loses_and_duplicates_nothing_and_logs_no_error() {
    let env = TestEnv::new().await;
    let config = config_file(&env);
    let log = env.dir.path().join("worker.log");
    let queue = env.queue().await;
    let uploads = env.shakespeare_uploads("stopped", 300, 3_000);
    let mut events = queue.events.subscribe(&[DOCUMENT_INGESTED, DOCUMENT_FAILED]).await.expect("subscribe");
    for upload in &uploads {
        queue.uploads.publish(&messages::encode(upload)).await.expect("publish");
    }

    // Stop the first worker with work in flight: a quarter done, the rest waiting or in the pipeline.
    let mut done = HashSet::new();
    let worker = spawn_worker(&config, &log);
    outcomes_until(&mut events, &mut done, 75, &log).await;
    terminate(worker, &log);
    assert!(done.len() < uploads.len(), "the worker was stopped mid-ingest");

    // A second worker finishes the rest (the first one's unfinished messages came back).
    let worker = spawn_worker(&config, &log);
    outcomes_until(&mut events, &mut done, uploads.len(), &log).await;
    terminate(worker, &log);
    let errors = errors_in(&log);
    assert!(errors.is_empty(), "a clean shutdown logs no error:\n{}", errors.join("\n"));
    assert_upload_lines_carry_their_context(&log, uploads.len());

    let n = uploads.len() as i64;
    assert_eq!(env.count("SELECT count(*) FROM documents").await, n);
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE status = 'ingested'").await, n);
    let chunks = env.count("SELECT count(*) FROM chunks").await;
    assert_eq!(env.count("SELECT sum(chunk_count) FROM documents").await, chunks);
    assert_eq!(env.count("SELECT count(DISTINCT (document_id, ordinal)) FROM chunks").await, chunks);
    let depths = queue.uploads.depths().await.expect("depths");
    assert_eq!((depths.ingest, depths.dead), (0, 0), "nothing left waiting, nothing dead-lettered");
    let manifest = env.settings.index_dir().join("stopped/manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("the stopped worker wrote a snapshot")).expect("json");
    assert_eq!(manifest["count"].as_i64(), Some(chunks), "index count = store count: {manifest}");
}
