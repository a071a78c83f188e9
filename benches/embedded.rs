//! Embedded mode (SQLite store and job queue, in-process cache, no server), measured:
//!
//! 1. **local model**: `../shared/corpus/text` and `markdown` ingested embedded with
//!    all-MiniLM-L6-v2, from the first publish to the last outcome; then the raw model on exactly
//!    the chunk texts the pipeline stored, in the same run (goal: the pipeline at ≥ 90% of it);
//! 2. **small documents**: 2,000 files of ~2 KB (consecutive slices of the corpus's text) with the
//!    hash embedder, embedded and then distributed (RabbitMQ → PostgreSQL + FAISS) on the same
//!    files: documents/s side by side (report only; issue #13 is the small-document push);
//! 3. **the README's first command** (`ops/quickstart.sh`, binary built, model present) from
//!    start to its printed answer, and **`ragpipe query`** from process start to printed
//!    answer, each a fresh process.
//!
//! Run: `cargo bench --bench embedded` (2 needs the test services; `BENCH_SKIP_DISTRIBUTED=1`
//! skips that row, `BENCH_SKIP_LOCAL=1` the local model's). Under `cargo test --all-targets` (no `--bench`) it runs on a few files only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ragpipe::config::EmbedderKind;
use ragpipe::embed::Embedder;
use ragpipe::embed::local::LocalEmbedder;
use ragpipe::worker::Role;

const MODEL: &str = "all-MiniLM-L6-v2";

fn model_dir() -> PathBuf {
    std::env::var_os("RAGPIPE_TEST_MODEL_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(MODEL), PathBuf::from)
}

/// Ingests `files` into collection `bench` through a worker of `env`; returns (seconds, chunks).
async fn ingest_files(env: &common::TestEnv, files: &[PathBuf]) -> (f64, i64) {
    let worker = env.start_worker(&[Role::Ingest]).await;
    let queue = worker.queue().await;
    let uploads: Vec<_> = files.iter().map(|f| env.upload_file(f, "bench")).collect();
    let mut events = ragpipe::client::subscribe_outcomes(queue.events.as_ref()).await.expect("subscribe");
    let started = Instant::now();
    for upload in &uploads {
        queue.uploads.publish(&ragpipe::messages::encode(upload)).await.expect("publish");
    }
    let ids: Vec<String> = uploads.iter().map(|u| u.upload_id.clone()).collect();
    let outcomes =
        ragpipe::client::wait_for_outcomes(&mut events, &ids, std::time::Duration::from_secs(3600), |_| {}).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(outcomes.len(), ids.len(), "every upload reaches an outcome");
    let chunks = uploads.iter().map(|u| common::ingested(&outcomes[&u.upload_id]).chunks).sum();
    worker.stop().await;
    (secs, chunks)
}

async fn local_model_corpus(full: bool) {
    let dir = model_dir();
    if !dir.join("model.safetensors").is_file() {
        println!("local model row skipped: no model in {} (bash ops/fetch-model.sh)", dir.display());
        return;
    }
    let mut env = common::TestEnv::embedded().await;
    let e = &mut env.settings.embedder;
    (e.kind, e.model, e.model_dir, e.dimensions) = (EmbedderKind::Local, MODEL.into(), dir.clone(), 384);
    env.settings.chunk.max_tokens = 192;
    let mut files: Vec<PathBuf> = ["text", "markdown"]
        .iter()
        .flat_map(|d| std::fs::read_dir(common::corpus().join(d)).expect("corpus").map(|e| e.expect("entry").path()))
        .collect();
    files.sort();
    if !full {
        files.retain(|f| f.metadata().is_ok_and(|m| m.len() < 20_000));
    }
    let (secs, chunks) = ingest_files(&env, &files).await;
    let db = ragpipe::embedded::Database::open(&env.settings.storage.database_file()).await.expect("database");
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT text FROM chunks ORDER BY id").fetch_all(db.reader()).await.expect("chunk texts");
    let model = LocalEmbedder::load(&dir, MODEL, 0).expect("model");
    model.embed(&texts[..8.min(texts.len())]).await.expect("warm-up");
    let started = Instant::now();
    for request in texts.chunks(64) {
        model.embed(request).await.expect("embeds");
    }
    let raw = texts.len() as f64 / started.elapsed().as_secs_f64();
    let rate = chunks as f64 / secs;
    println!(
        "local model   {} files ({chunks} chunks) embedded: {secs:.2} s, {:.2} documents/s, {rate:.1} chunks/s; \
         raw model on the same chunks {raw:.1} chunks/s → pipeline at {:.0}% of the model",
        files.len(),
        files.len() as f64 / secs,
        100.0 * rate / raw
    );
}

/// `count` files of ~2 KB: consecutive 2,000-character slices of the corpus's English text.
fn small_files(dir: &Path, count: usize) -> Vec<PathBuf> {
    let mut text = String::new();
    for name in ["alice29.txt", "tinyshakespeare.txt", "rfc2616.txt"] {
        text.push_str(&std::fs::read_to_string(common::corpus().join("text").join(name)).expect("corpus text"));
    }
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(2000)
        .take(count)
        .enumerate()
        .map(|(i, slice)| {
            let path = dir.join(format!("small-{i:05}.txt"));
            std::fs::write(&path, slice.iter().collect::<String>()).expect("write");
            path
        })
        .collect()
}

async fn small_documents(full: bool) {
    let count = if full { 2000 } else { 50 };
    let embedded = common::TestEnv::embedded().await;
    let files = small_files(&embedded.inbox(), count);
    let (secs, chunks) = ingest_files(&embedded, &files).await;
    println!(
        "small docs    {count} × ~2 KB, hash embedder, embedded:    {secs:6.2} s, {:7.1} documents/s ({chunks} chunks)",
        count as f64 / secs
    );
    if std::env::var_os("BENCH_SKIP_DISTRIBUTED").is_some() {
        return;
    }
    let distributed = common::TestEnv::new().await;
    let files = small_files(&distributed.inbox(), count);
    let (secs, chunks) = ingest_files(&distributed, &files).await;
    println!(
        "small docs    {count} × ~2 KB, hash embedder, distributed: {secs:6.2} s, {:7.1} documents/s ({chunks} chunks)",
        count as f64 / secs
    );
}

/// Wall time of a command, from spawn to exit.
fn timed(command: &mut Command) -> (f64, String) {
    let started = Instant::now();
    let output = command.output().expect("run");
    let secs = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (secs, String::from_utf8_lossy(&output.stdout).into_owned())
}

fn first_command(full: bool) {
    if !full || !model_dir().join("model.safetensors").is_file() {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_ragpipe");
    let (secs, out) = timed(
        Command::new("bash")
            .arg(repo.join("ops/quickstart.sh"))
            .current_dir(repo)
            .env("RAGPIPE_BIN", bin)
            .env("QUICKSTART_DATA", data.path()),
    );
    let cited = out.lines().find(|l| l.starts_with("[1]")).unwrap_or("(no answer)");
    println!("first command ops/quickstart.sh (built, model present), start to answer: {secs:.2} s; {cited}");
    let mut runs: Vec<f64> = (0..10)
        .map(|_| {
            timed(
                Command::new(bin)
                    .args(["query", "Who was late and kept looking at his pocket watch?", "-c", "quickstart"])
                    .current_dir(repo)
                    .env("RAGPIPE__STORAGE__DATA_DIR", data.path())
                    .env("RUST_LOG", "warn"),
            )
            .0
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "ragpipe query  process start to printed answer (embedded, 10 runs): median {:.0} ms, max {:.0} ms",
        runs[5] * 1000.0,
        runs[9] * 1000.0
    );
}

fn main() {
    ragpipe::blas::ensure_best_kernel();
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        if std::env::var_os("BENCH_SKIP_LOCAL").is_none() {
            local_model_corpus(full).await;
        }
        small_documents(full).await;
    });
    first_command(full);
}
