//! Embedding throughput against a fake OpenAI server that takes 100 ms per request.
//!
//! Two measurements, both with a cold cache:
//! 1. **embed stage**: the `EmbeddingService` alone over 5,000 chunk texts (batching, the
//!    concurrency limit, the real HTTP client path, JSON both ways);
//! 2. **pipeline**: 100 uploads of 50 chunks each through the whole worker: RabbitMQ → dedup →
//!    extract (child process) → chunk → embed (batched across documents) → PostgreSQL + FAISS →
//!    `document.ingested`, timed from the first publish to the last event.
//!
//! Needs the test services (PostgreSQL, RabbitMQ, Redis). Run:
//! `cargo bench --bench embed_throughput` (env: `BENCH_BATCH` = 128, `BENCH_CONCURRENCY` = 8,
//! `BENCH_DIMS` = 1536, `BENCH_LATENCY_MS` = 100).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/embed_common/mod.rs"]
mod embed_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_common::{FakeOpenAi, RedisPrefix};
use ragpipe::cache;
use ragpipe::config::{CacheSettings, EmbedderSettings};
use ragpipe::embed::service::EmbeddingService;
use ragpipe::worker::Role;
use secrecy::SecretString;

const DOCUMENTS: usize = 100;
const CHUNKS_PER_DOCUMENT: usize = 50;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Config {
    batch: usize,
    concurrency: usize,
    dims: usize,
    latency: Duration,
}

fn configure(fake: &FakeOpenAi, embedder: &mut EmbedderSettings, cfg: &Config) {
    fake.configure(embedder);
    embedder.batch_size = cfg.batch;
    embedder.max_concurrent_requests = cfg.concurrency;
}

/// A paragraph of about 50 tokens, unique to its document and position.
fn paragraph(doc: usize, i: usize) -> String {
    format!(
        "Document {doc} section {i}: the harbour master records the tide at {}:{:02}, the ferry to pier {} \
         leaves after the lamp is trimmed, and the keeper notes wind, swell and visibility in the log.",
        i % 24,
        (doc * 7 + i) % 60,
        doc + i
    )
}

fn report(what: &str, chunks: usize, requests: usize, wall: Duration) {
    println!(
        "{what:<12} chunks {chunks:>5}  requests {requests:>4}  wall {:>6.2} s  {:>7.0} chunks/s",
        wall.as_secs_f64(),
        chunks as f64 / wall.as_secs_f64()
    );
}

async fn embed_stage(cfg: &Config) {
    let fake = FakeOpenAi::start(cfg.dims, cfg.latency, Arc::new(|_| None)).await;
    let prefix = RedisPrefix::new();
    let cache_settings = CacheSettings {
        url: Some(SecretString::from(common::redis_url())),
        key_prefix: prefix.0.clone(),
        ..CacheSettings::default()
    };
    let mut settings = EmbedderSettings::default();
    configure(&fake, &mut settings, cfg);
    let service = EmbeddingService::from_settings(&settings, &cache_settings, cache::connect(&cache_settings).1)
        .expect("service");
    let texts: Vec<String> =
        (0..DOCUMENTS).flat_map(|d| (0..CHUNKS_PER_DOCUMENT).map(move |i| paragraph(d, i))).collect();
    let started = Instant::now();
    let results = service.embed(&texts).await;
    let wall = started.elapsed();
    assert!(results.iter().all(Result::is_ok));
    report("embed stage", texts.len(), fake.requests().len(), wall);
}

async fn pipeline(cfg: &Config) {
    let fake = FakeOpenAi::start(cfg.dims, cfg.latency, Arc::new(|_| None)).await;
    let mut env = common::TestEnv::new().await;
    configure(&fake, &mut env.settings.embedder, cfg);
    // One paragraph per chunk; every upload in flight at once so the embed stage sees them all.
    env.settings.chunk.max_tokens = 64;
    env.settings.broker.prefetch = DOCUMENTS as u16;
    env.settings.ingest.channel_capacity = DOCUMENTS;
    env.settings.database.pool_size = 10;
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.queue().await;
    let uploads: Vec<_> = (0..DOCUMENTS)
        .map(|d| {
            let text = (0..CHUNKS_PER_DOCUMENT).map(|i| paragraph(d, i)).collect::<Vec<_>>().join("\n\n");
            env.upload_file(&env.write(&format!("doc{d:03}.txt"), text.as_bytes()), "bench")
        })
        .collect();
    let started = Instant::now();
    let outcomes = common::ingest(&broker, &uploads).await;
    let wall = started.elapsed();
    let chunks: i64 = uploads.iter().map(|u| common::ingested(&outcomes[&u.upload_id]).chunks).sum();
    report("pipeline", chunks as usize, fake.requests().len(), wall);
    worker.stop().await;
}

fn main() {
    let cfg = Config {
        batch: env_usize("BENCH_BATCH", 128),
        concurrency: env_usize("BENCH_CONCURRENCY", 8),
        dims: env_usize("BENCH_DIMS", 1536),
        latency: Duration::from_millis(env_usize("BENCH_LATENCY_MS", 100) as u64),
    };
    println!(
        "fake OpenAI server: {} ms per request; batch_size {}, max_concurrent_requests {}, {} dimensions",
        cfg.latency.as_millis(),
        cfg.batch,
        cfg.concurrency,
        cfg.dims
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        embed_stage(&cfg).await;
        pipeline(&cfg).await;
    });
}
