//! Local model throughput (all-MiniLM-L6-v2), side by side with sentence-transformers
//! (PyTorch CPU) on the same texts in the same run, then end-to-end ingest with the model.
//!
//! 1. **raw model**: `LocalEmbedder::embed` over 256 texts of ~241 tokens and 1,024 of ~37
//!    tokens (cut from `../shared/corpus/text`), in requests of 64 like the embed stage sends;
//! 2. **PyTorch**: `benches/local_embed_vs_torch.py` on the same texts (2 threads, batch 32),
//!    if `BENCH_PEER_PYTHON` (default `/var/tmp/stvenv/bin/python`) exists;
//! 3. **pipeline**: 100 uploads through RabbitMQ → … → embed (local) → PostgreSQL + FAISS, timed
//!    from the first publish to the last `document.ingested`, against the raw model on exactly
//!    the chunk texts the pipeline produced.
//!
//! Needs the model (`bash ops/fetch-model.sh`) and, for 3, the test services. Run:
//! `cargo bench --bench local_embed`. Under `cargo test --all-targets` (no `--bench` argument)
//! it only smoke-tests itself on a few texts.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ragpipe::config::EmbedderKind;
use ragpipe::embed::Embedder;
use ragpipe::embed::local::LocalEmbedder;
use ragpipe::worker::Role;

const MODEL: &str = "all-MiniLM-L6-v2";
const REQUEST: usize = 64;

/// Texts of about `tokens` model tokens each (content tokens + [CLS] + [SEP]), cut from `words`.
fn texts_of(model: &LocalEmbedder, words: &[&str], tokens: usize, count: usize) -> Vec<String> {
    let mut texts = Vec::with_capacity(count);
    let mut at = 0;
    while texts.len() < count {
        let mut n = tokens / 2;
        while model.count_tokens(&words[at..at + n].join(" ")) + 2 < tokens {
            n += 1;
        }
        texts.push(words[at..at + n].join(" "));
        at = (at + n) % (words.len() - 2 * tokens);
    }
    texts
}

async fn raw_rate(model: &LocalEmbedder, texts: &[String]) -> f64 {
    model.embed(&texts[..8.min(texts.len())]).await.expect("warm-up");
    let started = Instant::now();
    for request in texts.chunks(REQUEST) {
        model.embed(request).await.expect("embeds");
    }
    texts.len() as f64 / started.elapsed().as_secs_f64()
}

/// Latency of single-text (query) embeds while `bulk` keeps every inference thread busy.
async fn query_latency_under_load(model: &Arc<LocalEmbedder>, bulk: Vec<String>, queries: &[String]) {
    let bulk_texts = bulk.len();
    let loaded = Arc::clone(model);
    let load = tokio::spawn(async move {
        let requests = bulk.chunks(REQUEST).map(|r| loaded.embed(r));
        futures::future::join_all(requests).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut latencies = Vec::new();
    for query in queries.iter().cycle().take(20) {
        let started = Instant::now();
        model.embed(std::slice::from_ref(query)).await.expect("query embeds");
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let busy = !load.is_finished();
    load.await.expect("bulk task");
    latencies.sort_by(f64::total_cmp);
    let idle = {
        let started = Instant::now();
        model.embed(std::slice::from_ref(&queries[0])).await.expect("query embeds");
        started.elapsed().as_secs_f64() * 1000.0
    };
    println!(
        "query embed   idle {idle:.1} ms; during a bulk ingest of {} long texts: median {:.1} ms, max {:.1} ms{}",
        bulk_texts,
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        if busy { "" } else { " (the bulk load ended before the last query)" }
    );
}

fn peer(model_dir: &Path, sets: &[(&str, &[String])]) -> Option<serde_json::Value> {
    let python = std::env::var("BENCH_PEER_PYTHON").unwrap_or_else(|_| "/var/tmp/stvenv/bin/python".into());
    if !Path::new(&python).exists() {
        println!("PyTorch peer skipped: {python} not found (see benches/local_embed_vs_torch.py)");
        return None;
    }
    let inputs = std::env::temp_dir().join(format!("ragpipe-local-embed-{}.json", std::process::id()));
    let sets: serde_json::Map<String, serde_json::Value> =
        sets.iter().map(|(name, texts)| ((*name).to_owned(), serde_json::json!(texts))).collect();
    std::fs::write(&inputs, serde_json::json!({ "sets": sets }).to_string()).expect("write inputs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/local_embed_vs_torch.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg("--model")
        .arg(model_dir)
        .args(["--threads", "2", "--inputs"])
        .arg(&inputs)
        .output()
        .expect("run the PyTorch peer");
    let _ = std::fs::remove_file(&inputs);
    if !output.status.success() {
        println!("PyTorch peer failed: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

async fn pipeline(model_dir: PathBuf, model: &LocalEmbedder, words: &[&str]) {
    let mut env = common::TestEnv::new().await;
    let e = &mut env.settings.embedder;
    (e.kind, e.model, e.model_dir, e.dimensions) = (EmbedderKind::Local, MODEL.into(), model_dir, 384);
    env.settings.chunk.max_tokens = 200;
    env.settings.broker.prefetch = 40;
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.queue().await;
    // 100 uploads (~1,000 chunks, ~12 s): long enough that the pipeline's start-up (the first
    // documents' fetch, extraction and chunking, before the model has work) weighs what it does in
    // a real bulk ingest rather than a tenth of the run. BENCH_PIPELINE_UPLOADS changes it.
    let uploads_n: usize = std::env::var("BENCH_PIPELINE_UPLOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let paragraphs = texts_of(model, words, 120, uploads_n * 10);
    let uploads: Vec<_> = paragraphs
        .chunks(10)
        .enumerate()
        .map(|(d, ps)| env.upload_file(&env.write(&format!("doc{d:03}.txt"), ps.join("\n\n").as_bytes()), "bench"))
        .collect();
    let started = Instant::now();
    let outcomes = common::ingest(&broker, &uploads).await;
    let wall = started.elapsed().as_secs_f64();
    let chunks: i64 = uploads.iter().map(|u| common::ingested(&outcomes[&u.upload_id]).chunks).sum();
    worker.stop().await;

    let pool = env.pool().await;
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT text FROM chunks ORDER BY id").fetch_all(&pool).await.expect("chunk texts");
    let tokens: usize = texts.iter().map(|t| model.count_tokens(t) + 2).sum();
    let raw = raw_rate(model, &texts).await;
    let rate = chunks as f64 / wall;
    println!(
        "pipeline      {} uploads, {chunks} chunks (~{} tokens each): {wall:.2} s, {rate:.1} chunks/s; raw model on the same chunks {raw:.1} chunks/s → pipeline at {:.0}% of the model",
        uploads.len(),
        tokens / texts.len().max(1),
        100.0 * rate / raw
    );
}

fn main() {
    // As in `main`: the "OPENBLAS_CORETYPE unset" row measures what a ragpipe process gets.
    ragpipe::blas::ensure_best_kernel();
    let dir = std::env::var_os("RAGPIPE_TEST_MODEL_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(MODEL), PathBuf::from);
    let threads = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let full = std::env::args().any(|a| a == "--bench");
    if !full && !dir.join("model.safetensors").is_file() {
        println!("local_embed smoke test skipped: no model in {}", dir.display());
        return;
    }
    let (long_count, short_count) = if full { (256, 1024) } else { (4, 8) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let model = Arc::new(
            LocalEmbedder::load(&dir, MODEL, threads).unwrap_or_else(|e| panic!("{e} (run `bash ops/fetch-model.sh`)")),
        );
        let corpus: String = std::fs::read_dir(common::corpus().join("text"))
            .expect("corpus/text")
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect::<Vec<_>>()
            .join(" ");
        let words: Vec<&str> = corpus.split_whitespace().collect();
        let long = texts_of(&model, &words, 241, long_count);
        let short = texts_of(&model, &words, 37, short_count);

        println!(
            "OPENBLAS_CORETYPE={}: {}",
            std::env::var("OPENBLAS_CORETYPE").unwrap_or_else(|_| "unset".into()),
            ragpipe::blas::Kernels::current().describe()
        );
        let ours_long = raw_rate(&model, &long).await;
        let ours_short = raw_rate(&model, &short).await;
        let torch = if full { peer(&dir, &[("long", &long), ("short", &short)]) } else { None };
        let theirs = |name: &str| torch.as_ref().and_then(|t| t[name].as_f64());
        for (name, tokens, ours) in [("long", 241, ours_long), ("short", 37, ours_short)] {
            let versus =
                theirs(name).map_or(String::new(), |t| format!("   PyTorch {t:6.1} texts/s   ratio {:.2}×", ours / t));
            println!("{name:<6} ~{tokens:>3} tokens   ragpipe {ours:6.1} texts/s{versus}");
        }
        if full {
            query_latency_under_load(&model, long.iter().cycle().take(REQUEST * 8).cloned().collect(), &short).await;
        }
        if full && std::env::var_os("BENCH_SKIP_PIPELINE").is_none() {
            pipeline(dir.clone(), &model, &words).await;
        }
    });
}
