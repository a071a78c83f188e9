//! What observability costs ingest (issue 12: "all metrics and JSON logging on vs off ≤ 3 %").
//!
//! 1. **Logs**: `ragpipe ingest` of the same small documents (embedded, hash embedder, a fresh
//!    data directory each time) with JSON logs on (`RUST_LOG=info`, stderr to a file, as a
//!    worker off a terminal logs) and off (`RUST_LOG=off`), alternating in one run; the median
//!    wall time of each.
//! 2. **Metrics**: every metric update one upload makes (its delivery, six stage timers, chunk and
//!    token counters, cache lookups, its outcome), timed in isolation over many simulated uploads,
//!    against the per-document time of the logs-off ingest. Metrics cannot be switched off, so
//!    this measures them directly rather than by difference.
//!
//! Run: `cargo bench --bench telemetry_overhead` (`BENCH_DOCS`, default 2000; `BENCH_ROUNDS`,
//! default 3). Under `cargo test --all-targets` (no `--bench`) it runs 40 documents once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ragpipe::telemetry::metrics;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

/// `count` files of ~2 KB, consecutive slices of the corpus's text and Markdown.
fn write_documents(dir: &Path, count: usize) {
    let mut text = String::new();
    for folder in ["text", "markdown"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(corpus().join(folder)).expect("corpus").flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(file).expect("read")));
        }
    }
    let chars: Vec<char> = text.chars().collect();
    std::fs::create_dir_all(dir).expect("dir");
    for (i, slice) in chars.chunks(2_000).take(count).enumerate() {
        std::fs::write(dir.join(format!("doc-{i:05}.txt")), slice.iter().collect::<String>()).expect("write");
    }
}

/// One `ragpipe ingest` of `docs` into a fresh data directory; its wall time.
fn ingest(docs: &Path, work: &Path, log_level: &str) -> Duration {
    let data = work.join(format!("data-{}", uuid::Uuid::new_v4().simple()));
    let log = std::fs::File::create(work.join("ingest.log")).expect("log");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ragpipe"))
        .args(["ingest", "-c", "bench"])
        .arg(docs)
        .env("RUST_LOG", log_level)
        .env("RAGPIPE__STORAGE__DATA_DIR", &data)
        .env("RAGPIPE__EMBEDDER__KIND", "hash")
        .env("RAGPIPE__EMBEDDER__MODEL", "hash-v1")
        .env("RAGPIPE__HTTP__ENABLED", "false")
        .stderr(log)
        .output()
        .expect("run ragpipe ingest");
    let elapsed = started.elapsed();
    assert!(output.status.success(), "ingest failed: {}", String::from_utf8_lossy(&output.stdout));
    let _ = std::fs::remove_dir_all(&data);
    elapsed
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The metric updates of one upload of one chunk, as the pipeline makes them.
fn one_upload() {
    metrics::DELIVERIES.with_label_values(&["uploads", "false"]).inc();
    for stage in ["dedup", "extract", "chunk", "embed", "persist", "index"] {
        drop(metrics::stage(stage));
    }
    metrics::CACHE_LOOKUPS.with_label_values(&["embedding", "hit"]).inc_by(0);
    metrics::CACHE_LOOKUPS.with_label_values(&["embedding", "miss"]).inc_by(1);
    metrics::EMBED_BATCH.observe(1.0);
    metrics::EMBED_REQUESTS.with_label_values(&["ok"]).inc();
    metrics::EMBED_INPUTS.inc_by(1);
    metrics::EMBED_TOKENS.inc_by(400);
    metrics::EMBED_COST.inc_by(0.0);
    metrics::CHUNKS.inc_by(1);
    metrics::CHUNK_TOKENS.inc_by(400);
    metrics::DOCUMENTS.with_label_values(&["ingested"]).inc();
    metrics::GARBLED_PAGES.inc_by(0);
    metrics::STAGE_SECONDS.with_label_values(&["total"]).observe(0.002);
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env_usize = |key: &str, default: usize| std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (docs, rounds) = if full { (env_usize("BENCH_DOCS", 2_000), env_usize("BENCH_ROUNDS", 3)) } else { (40, 1) };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!("CPU: {cpu}; {docs} documents of ~2 KB, hash embedder, embedded, {rounds} round(s) each");

    let work = tempfile::tempdir().expect("tempdir");
    let documents = work.path().join("docs");
    write_documents(&documents, docs);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        off.push(ingest(&documents, work.path(), "off"));
        on.push(ingest(&documents, work.path(), "info"));
    }
    let seconds =
        |runs: &[Duration]| runs.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(" ");
    println!("runs (s), alternating: off {} | on {}", seconds(&off), seconds(&on));
    let (on, off) = (median(on), median(off));
    let lines = std::fs::read_to_string(work.path().join("ingest.log")).map(|l| l.lines().count()).unwrap_or(0);
    println!(
        "logs off: {:.2} s ({:.0} documents/s); JSON logs on: {:.2} s ({:.0} documents/s, {lines} lines): {:+.1} %",
        off.as_secs_f64(),
        docs as f64 / off.as_secs_f64(),
        on.as_secs_f64(),
        docs as f64 / on.as_secs_f64(),
        (on.as_secs_f64() / off.as_secs_f64() - 1.0) * 100.0
    );

    metrics::register_defaults();
    let uploads = if full { 1_000_000 } else { 10_000 };
    let started = Instant::now();
    for _ in 0..uploads {
        one_upload();
    }
    let per_upload = started.elapsed().as_secs_f64() / f64::from(uploads);
    let per_document = off.as_secs_f64() / docs as f64;
    println!(
        "metrics: {:.2} µs per upload's updates, {:.3} % of the {:.0} µs a document takes (one thread; \
         the worker spreads them over its stages)",
        per_upload * 1e6,
        per_upload / per_document * 100.0,
        per_document * 1e6
    );
}
