//! Embedded mode across real processes: the README's first command with no network at all, a
//! `ragpipe worker` killed with SIGKILL mid-ingest again and again, and the CLI handing its
//! uploads to a worker that runs in another process.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestEnv, corpus};
use futures::StreamExt;
use ragpipe::messages::{self, DOCUMENT_INGESTED};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ragpipe")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A config file for the `ragpipe` processes of `env` (embedded, hash embedder).
fn config_file(env: &TestEnv) -> PathBuf {
    let s = &env.settings;
    let roots: Vec<String> = s.storage.allowed_roots.iter().map(|r| format!("{:?}", r.display().to_string())).collect();
    let text = format!(
        "[storage]\ndata_dir = {:?}\nallowed_roots = [{}]\n\
         [broker]\nlease_secs = {}\npoll_ms = {}\ndelivery_limit = {}\n\
         [embedder]\nkind = \"hash\"\nmodel = \"hash-v1\"\nmax_wait_ms = 5\n\
         [index]\nsnapshot_interval_secs = 3600\n[http]\nenabled = false\n",
        s.storage.data_dir.display().to_string(),
        roots.join(", "),
        s.broker.lease_secs,
        s.broker.poll_ms,
        s.broker.delivery_limit,
    );
    let path = env.dir.path().join("workers.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn spawn_worker(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    Command::new(bin())
        .args(["worker", "--role", "ingest", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ragpipe worker")
}

/// SIGTERM, then wait: the worker drains and writes its index snapshots.
fn stop(mut child: Child) {
    // SAFETY: signals a child process we started and still own.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait for the worker");
    assert!(status.success(), "the worker exits 0 on SIGTERM: {status}");
}

#[test]
fn the_first_readme_command_answers_with_citations_with_no_network_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = std::env::var_os("RAGPIPE_TEST_MODEL_DIR")
        .map_or_else(|| repo().join("models/all-MiniLM-L6-v2"), PathBuf::from);
    let local = model.join("model.safetensors").is_file();
    if !local && std::env::var_os("RAGPIPE_REQUIRE_MODEL").is_some() {
        panic!("the local model is required (RAGPIPE_REQUIRE_MODEL) but {} has none", model.display());
    }
    // No network namespace where that is not allowed; embedded mode needs no network either way.
    let isolated = Command::new("unshare").args(["-n", "true"]).status().is_ok_and(|s| s.success());
    let mut command = if isolated { Command::new("unshare") } else { Command::new("bash") };
    if isolated {
        command.args(["-n", "bash"]);
    }
    command
        .arg(repo().join("ops/quickstart.sh"))
        .current_dir(repo())
        .env("RAGPIPE_BIN", bin())
        .env("QUICKSTART_DATA", dir.path().join("data"))
        .env("QUICKSTART_EMBEDDER", if local { "local" } else { "hash" })
        .env("RAGPIPE__EMBEDDER__MODEL_DIR", &model);
    let output = command.output().expect("run ops/quickstart.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "quickstart failed (network namespace: {isolated}):\n{stdout}\n{stderr}");
    assert!(stdout.contains("5 ingested"), "{stdout}");
    assert!(stdout.contains("[1] alice29.txt"), "the pocket-watch question is answered from Alice:\n{stdout}");
    assert!(stdout.contains("chars "), "with a character range to cite:\n{stdout}");
    assert!(stdout.contains("Answer (quoted") && stdout.contains("Sources:"), "answered with sources:\n{stdout}");
    let answer = stdout.split("Answer").nth(1).and_then(|a| a.split("Sources:").next()).unwrap_or_default();
    assert!(answer.contains("watch") && answer.contains("[1]"), "the answer quotes the pocket watch, cited:\n{stdout}");

    // The same question, its answer streamed as it is written.
    let mut query = Command::new(bin());
    query
        .args(["query", "Who was late and kept looking at his pocket watch?", "--top-k", "3", "--answer", "--stream"])
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .env("RAGPIPE__STORAGE__DATA_DIR", dir.path().join("data"))
        .env("RAGPIPE__EMBEDDER__MODEL_DIR", &model);
    if local {
        query.args(["--collection", "quickstart"]);
    } else {
        query.args(["--collection", "quickstart-hash"]);
        query.env("RAGPIPE__EMBEDDER__KIND", "hash").env("RAGPIPE__EMBEDDER__MODEL", "hash-v1");
    }
    let output = query.output().expect("run ragpipe query --stream");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let streamed = stdout.split("Answer (as it is written):").nth(1).and_then(|a| a.split("Sources:").next());
    assert!(streamed.is_some_and(|a| a.contains("watch") && a.contains("[1]")), "streamed and cited:\n{stdout}");
    if !isolated {
        println!("note: `unshare -n` is not permitted here; ran without a network namespace");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_ingest_again_and_again_loses_and_duplicates_nothing() {
    let mut env = TestEnv::embedded().await;
    env.settings.broker.lease_secs = 2;
    // Killed jobs come back; none may be dead-lettered for it here.
    env.settings.broker.delivery_limit = 50;
    let config = config_file(&env);
    let log = env.dir.path().join("worker.log");
    let queue = env.queue().await;
    let uploads = env.shakespeare_uploads("killed", 81, 12_000);
    // The last upload is held back for the last worker: the killed ones may have finished
    // everything else (their events wait in the stream), and only its event proves the last
    // worker is up — a SIGTERM before a process has installed its handler kills it outright.
    let (held_back, first) = uploads.split_last().expect("uploads");
    let mut events = queue.events.subscribe(&[DOCUMENT_INGESTED]).await.expect("subscribe");
    for upload in first {
        queue.uploads.publish(&messages::encode(upload)).await.expect("publish");
    }
    let mut done = std::collections::HashSet::new();
    for round in 0..4 {
        let worker = spawn_worker(&config, &log);
        // Let some documents finish, then kill while others are in flight.
        let target = (done.len() + 12).min(first.len());
        while done.len() < target {
            let event = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: no progress within 60 s; see {}", log.display()))
                .expect("stream")
                .expect("event");
            let body: serde_json::Value = serde_json::from_slice(&event.body).expect("json");
            done.insert(body["upload_id"].as_str().expect("upload_id").to_owned());
        }
        let mut worker = worker;
        worker.kill().expect("SIGKILL");
        worker.wait().expect("reap");
    }
    // A last worker finishes the rest (leases of the killed ones expire) and stops cleanly.
    let worker = spawn_worker(&config, &log);
    queue.uploads.publish(&messages::encode(held_back)).await.expect("publish");
    while done.len() < uploads.len() {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .unwrap_or_else(|_| panic!("stuck at {}/{}; see {}", done.len(), uploads.len(), log.display()))
            .expect("stream")
            .expect("event");
        let body: serde_json::Value = serde_json::from_slice(&event.body).expect("json");
        done.insert(body["upload_id"].as_str().expect("upload_id").to_owned());
    }
    // A killed worker may have announced a document and died before settling its job: the last
    // worker settles it once the lease expires (its event then comes again). Wait for that.
    let settled = async {
        while env.count("SELECT count(*) FROM jobs").await > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settled).await.expect("every job is settled within 60 s");
    stop(worker);

    // Every document exactly once, ingested; chunk rows unique; the index holds each chunk once.
    let n = uploads.len() as i64;
    assert_eq!(env.count("SELECT count(*) FROM documents").await, n);
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE status = 'ingested'").await, n);
    let chunks = env.count("SELECT count(*) FROM chunks").await;
    assert_eq!(env.count("SELECT sum(chunk_count) FROM documents").await, chunks);
    assert_eq!(env.count("SELECT count(DISTINCT document_id * 100000 + ordinal) FROM chunks").await, chunks);
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0, "every job settled");
    assert_eq!(env.count("SELECT count(*) FROM dead_letters").await, 0);
    let manifest = env.settings.index_dir().join("killed/manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("the last worker wrote a snapshot")).expect("json");
    assert_eq!(manifest["count"].as_i64(), Some(chunks), "index count = store count: {manifest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_hands_its_uploads_to_a_worker_in_another_process_and_reports_their_outcomes() {
    let env = TestEnv::embedded().await;
    let config = config_file(&env);
    let log = env.dir.path().join("worker.log");
    let worker = spawn_worker(&config, &log);
    // Wait for the worker's consumer to register, so the CLI does not process the files itself.
    let queue = env.queue().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !queue.uploads.has_consumers().await.expect("consumers") {
        assert!(tokio::time::Instant::now() < deadline, "the worker never started consuming; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = Command::new(bin())
        .arg("ingest")
        .arg(corpus().join("markdown"))
        .args(["--collection", "handed", "--wait", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ragpipe ingest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("5 ingested"), "{stdout}");
    // Two queries, answered in their own processes: the query log (not a process's counters)
    // is what `status` summarises.
    for _ in 0..2 {
        let out = ragpipe(&config, &["query", "how do I install it?", "-c", "handed"]);
        assert!(out.contains("[1]"), "{out}");
    }
    let status = Command::new(bin()).args(["status", "--config"]).arg(&config).output().expect("status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("a worker is consuming uploads"), "{status}");
    assert!(status.contains("2 queries, 0 failed"), "{status}");
    assert!(status.contains("retrieval cache hit rate 0.0% (0 of 2 lookups)"), "{status}");
    assert!(status.contains("store  sqlite"), "{status}");
    let json = Command::new(bin()).args(["status", "--json", "--config"]).arg(&config).output().expect("status");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json prints JSON");
    assert_eq!(json["queues"]["worker_consuming"], true, "{json}");
    let handed = json["documents"].as_array().expect("documents").iter().find(|d| d["collection"] == "handed");
    assert!(handed.is_some_and(|d| d["status"] == "ingested" && d["documents"] == 5), "{json}");
    assert!(json["indexes"].as_array().expect("indexes").iter().any(|i| i["collection"] == "handed"), "{json}");
    let queries = &json["queries"];
    assert_eq!((queries["queries"].as_i64(), queries["errors"].as_i64()), (Some(2), Some(0)), "{json}");
    assert_eq!(queries["response_cache"]["lookups"], 2, "{json}");
    assert!(queries["mean_latency_ms"].as_f64().is_some(), "{json}");
    stop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_scores_a_beir_dataset_through_the_pipeline_and_reruns_on_the_same_collection() {
    let env = TestEnv::embedded().await;
    let config = config_file(&env);
    let dataset = env.dir.path().join("beir");
    std::fs::create_dir_all(dataset.join("qrels")).expect("dataset dir");
    let documents = [
        ("d1", "Heron nesting", "Grey herons build large nests of sticks high in lakeside trees."),
        ("d2", "Sourdough", "A sourdough starter ferments flour and water with wild yeast."),
        ("d3", "Tides", "Spring tides follow the new and full moon, when sun and moon align."),
        ("d4", "Compilers", "A register allocator assigns program variables to machine registers."),
    ];
    let corpus: String = documents
        .iter()
        .map(|(id, title, text)| format!("{}\n", serde_json::json!({"_id": id, "title": title, "text": text})))
        .collect();
    std::fs::write(dataset.join("corpus.jsonl"), corpus).expect("corpus");
    let queries = [
        ("q1", "where do grey herons build their nests?"),
        ("q2", "what does a sourdough starter ferment?"),
        ("q3", "when are spring tides?"),
        ("q4", "sourdough starter"),
        ("q9", "unjudged query"),
    ];
    let queries: String =
        queries.iter().map(|(id, text)| format!("{}\n", serde_json::json!({"_id": id, "text": text}))).collect();
    std::fs::write(dataset.join("queries.jsonl"), queries).expect("queries");
    // q4's second relevant document (d4) shares no word with it: BM25 cannot find it.
    std::fs::write(
        dataset.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\t1\r\nq3\td3\t1\r\nq4\td2\t1\r\nq4\td4\t1\r\n",
    )
    .expect("qrels");
    // By hand: q1–q3 are perfect; q4 ranks [d2] alone: nDCG@10 = 1 / (1 + 1/log2 3), recall 1/2.
    let q4_ndcg = 1.0 / (1.0 + 1.0 / 3f64.log2());
    let want =
        [("ndcg@10", (3.0 + q4_ndcg) / 4.0), ("recall@10", 3.5 / 4.0), ("recall@100", 3.5 / 4.0), ("mrr@10", 1.0)];
    for run in 0..2 {
        let mut command = Command::new(bin());
        command.args(["eval", "--mode", "lexical", "--collection", "evaltest", "--json"]);
        if run == 0 {
            command.arg("--split").arg("test").arg("--dataset").arg(&dataset);
        } else {
            // The files named one by one, the way other BEIR sets are laid out.
            command.arg("--corpus").arg(dataset.join("corpus.jsonl"));
            command.arg("--queries").arg(dataset.join("queries.jsonl"));
            command.arg("--qrels").arg(dataset.join("qrels/test.tsv"));
        }
        let output = command.arg("--config").arg(&config).env("RUST_LOG", "warn").output().expect("run ragpipe eval");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "run {run}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
        assert_eq!(report["documents"], 4, "{report}");
        assert_eq!(report["queries"], 4, "only judged queries: {report}");
        assert_eq!(report["mode"], "lexical");
        for (metric, value) in want {
            let got = report["metrics"][metric].as_f64().unwrap_or(f64::NAN);
            assert!((got - value).abs() < 1e-9, "run {run}, {metric}: {got} vs {value}: {report}");
        }
    }
}

/// Runs `ragpipe <args> --config <config>` and returns its stdout; fails on a non-zero exit.
fn ragpipe(config: &Path, args: &[&str]) -> String {
    let output =
        Command::new(bin()).args(args).arg("--config").arg(config).env("RUST_LOG", "warn").output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "ragpipe {args:?}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_walks_with_globs_skips_hidden_files_and_escaping_links_and_takes_a_manifest_with_metadata() {
    let env = TestEnv::embedded().await;
    let config = config_file(&env);
    let tree = env.inbox().join("tree");
    for (path, text) in [
        ("a.txt", "Alpha notes about the ferry timetable."),
        ("b.md", "# Bravo\n\nA markdown page about lighthouses."),
        ("notes/c.txt", "Charlie notes about tide tables."),
        ("skip/d.txt", "Delta, in a directory that is excluded."),
        (".hidden/e.txt", "Echo, in a hidden directory."),
        (".f.txt", "Foxtrot, a hidden file."),
    ] {
        let file = tree.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(&file, text).expect("write");
    }
    // A link out of the tree must not pull the outside file in.
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret.txt"), "Golf, outside the walked directory.").expect("write");
    std::os::unix::fs::symlink(&outside, tree.join("escape")).expect("symlink");

    let tree_arg = tree.to_string_lossy().into_owned();
    let out = ragpipe(&config, &["ingest", &tree_arg, "--include", "*.txt", "--exclude", "skip", "-c", "walk"]);
    assert!(out.contains("2 ingested"), "a.txt and notes/c.txt only:\n{out}");
    let out = ragpipe(&config, &["ingest", &tree_arg, "--hidden", "--include", "**/e.txt", "-c", "hidden"]);
    assert!(out.contains("1 ingested"), "--hidden takes hidden directories:\n{out}");

    let manifest = env.inbox().join("manifest.jsonl");
    let uri = url::Url::from_file_path(tree.join("b.md")).expect("uri");
    std::fs::write(
        &manifest,
        format!(
            "{{\"path\": \"tree/a.txt\", \"metadata\": {{\"team\": \"ops\"}}}}\n\n{{\"uri\": \"{uri}\", \"metadata\": {{\"team\": \"web\"}}}}\n"
        ),
    )
    .expect("manifest");
    let manifest_arg = manifest.to_string_lossy().into_owned();
    let out = ragpipe(&config, &["ingest", "--from-jsonl", &manifest_arg, "-c", "manifest"]);
    assert!(out.contains("2 ingested"), "{out}");
    let reply = ragpipe(&config, &["query", "notes", "-c", "manifest", "--filter", "team=web", "--json"]);
    let reply: serde_json::Value = serde_json::from_str(&reply).expect("json reply");
    let files: Vec<&str> =
        reply["chunks"].as_array().expect("chunks").iter().filter_map(|c| c["filename"].as_str()).collect();
    assert_eq!(files, ["b.md"], "metadata from the manifest is stored and filters: {reply}");

    // A malformed manifest line stops the run before anything is published, naming the line.
    std::fs::write(&manifest, "{\"path\": \"tree/a.txt\"}\n{\"path\": \"x\", \"uri\": \"file:///x\"}\n")
        .expect("write");
    let output = Command::new(bin())
        .args(["ingest", "--from-jsonl", &manifest_arg, "-c", "bad", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("manifest.jsonl:2"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_documents_are_sent_again_from_their_stored_bytes_once_the_cause_is_fixed() {
    let env = TestEnv::embedded().await;
    let config = config_file(&env);
    let dir = env.inbox().join("strict");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("one.txt"), "A first document, longer than the strict limit allows.").expect("write");
    // Large enough for the blob store; the first is small enough to be kept in its row.
    let two = "A second document, also longer than the strict limit.\n".repeat(1400);
    std::fs::write(dir.join("two.txt"), two).expect("write");

    // Too strict a limit: both fail for good.
    let output = Command::new(bin())
        .arg("ingest")
        .arg(&dir)
        .args(["-c", "retry", "--config"])
        .arg(&config)
        .env("RAGPIPE__EXTRACT__MAX_CHARS", "20")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success() && stdout.contains("2 failed"), "{stdout}");
    // `status` says why, from the dead letters, without taking them off the queue.
    for _ in 0..2 {
        let status: serde_json::Value =
            serde_json::from_str(&ragpipe(&config, &["status", "--json"])).expect("status --json");
        let dead = &status["queues"]["dead_letter_reasons"];
        assert_eq!(dead["by_code"], serde_json::json!([{"code": "limit_exceeded", "count": 2}]), "{status}");
        let latest: Vec<&str> =
            dead["latest"].as_array().expect("latest").iter().filter_map(|l| l["filename"].as_str()).collect();
        assert_eq!(latest.len(), 2, "{status}");
    }
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE content IS NOT NULL").await, 1, "one.txt in its row");
    // The files are gone from where they were: the stored bytes are what is sent again.
    std::fs::remove_dir_all(&dir).expect("remove");

    let out = ragpipe(&config, &["ingest", "--retry-failed"]);
    assert!(out.contains("2 ingested"), "{out}");
    assert_eq!(env.count("SELECT count(*) FROM documents WHERE status = 'ingested'").await, 2);
    let names =
        env.text("SELECT group_concat(filename, ',') FROM (SELECT filename FROM documents ORDER BY filename)").await;
    assert_eq!(names, "one.txt,two.txt", "original names kept");
    let out = ragpipe(&config, &["ingest", "--retry-failed"]);
    assert!(out.contains("no failed documents"), "{out}");
}
