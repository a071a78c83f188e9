//! The nightly rebuild at scale: 1,000,000 stored 384-dimensional vectors in PostgreSQL rebuilt
//! into a new index generation by [`ragpipe::index::Indexes::rebuild`] — the same call the
//! scheduler and `ragpipe reindex` make — with `[index] kind = "auto"` (IVF at this size, nprobe
//! tuned to recall@10 ≥ 0.95). The index side has no embedder at all, so it cannot make an
//! embedding call; the store is the only source. Prints where the time goes (fetch, train, add,
//! replay, tune, write) and the peak memory.
//!
//! Run: `cargo bench --bench index_rebuild` (PostgreSQL at `BENCH_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/ragpipe_bench_rebuild`; the vectors are loaded once and
//! reused by later runs). `BENCH_REBUILD_VECTORS` changes the size. Under `cargo test
//! --all-targets` (no `--bench` argument) it runs on 5,000 vectors in a throw-away database.

use std::sync::Arc;
use std::time::Instant;

use ragpipe::config::{DatabaseSettings, IndexSettings};
use ragpipe::index::Indexes;
use ragpipe::store::postgres::PgStore;
use ragpipe::store::{Claim, NewChunk, NewDocument, Store};
use secrecy::SecretString;

const DIMS: usize = 384;
const PER_DOCUMENT: usize = 1_000;
const CENTRES: usize = 2_000;
const MODEL: &str = "bench-synthetic";

/// Unit vectors around `CENTRES` random centres (clustered like a corpus's embeddings);
/// deterministic per index `i`.
fn vector(i: usize, centres: &[Vec<f32>]) -> Vec<f32> {
    let mut state = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let centre = &centres[i % centres.len()];
    let mut v: Vec<f32> = centre
        .iter()
        .map(|c| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            c + 0.6 * ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        })
        .collect();
    ragpipe::embed::normalize(&mut v);
    v
}

fn centres() -> Vec<Vec<f32>> {
    let mut state = 42u64;
    (0..CENTRES)
        .map(|_| {
            (0..DIMS)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        })
        .collect()
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

async fn load(store: &dyn Store, collection: &ragpipe::store::Collection, target: usize) {
    let (live, _) = store.live_state(collection.id).await.expect("count");
    let have = usize::try_from(live).unwrap_or(0);
    if have >= target {
        println!("store already holds {have} vectors");
        return;
    }
    let centres = centres();
    let started = Instant::now();
    let mut n = have / PER_DOCUMENT;
    while n * PER_DOCUMENT < target {
        let doc = NewDocument {
            collection_id: collection.id,
            sha256: format!("{n:064x}"),
            upload_id: format!("bench-{n}"),
            filename: format!("bench-{n}.txt"),
            content_type: None,
            size_bytes: 1,
            storage_path: String::new(),
            content: None,
            metadata: serde_json::json!({}),
        };
        let Claim::Process { document_id } = store.claim_document(&doc).await.expect("claim") else {
            n += 1;
            continue;
        };
        let chunks: Vec<NewChunk> = (0..PER_DOCUMENT.min(target - n * PER_DOCUMENT))
            .map(|c| NewChunk {
                ordinal: c as i32,
                text: String::new(),
                token_count: 0,
                char_start: 0,
                char_end: 0,
                page_start: None,
                page_end: None,
                heading_path: None,
                embedding: vector(n * PER_DOCUMENT + c, &centres),
            })
            .collect();
        store.persist_chunks(document_id, MODEL, DIMS, &chunks).await.expect("persist");
        n += 1;
    }
    println!(
        "loaded {target} vectors into PostgreSQL in {:.0} s (not part of the rebuild)",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    ragpipe::blas::ensure_best_kernel();
    let full = std::env::args().any(|a| a == "--bench");
    let target: usize = std::env::var("BENCH_REBUILD_VECTORS").ok().and_then(|v| v.parse().ok()).unwrap_or(if full {
        1_000_000
    } else {
        5_000
    });
    let url = if full {
        std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/ragpipe_bench_rebuild".into())
    } else {
        format!("postgres://postgres@127.0.0.1:5432/ragpipe_bench_smoke_{}", uuid::Uuid::new_v4().simple())
    };
    let settings = DatabaseSettings { url: Some(SecretString::from(url)), pool_size: 4, ..DatabaseSettings::default() };
    PgStore::create_database_if_missing(&settings).await.expect("create the bench database");
    let store = PgStore::connect(&settings).await.expect("connect PostgreSQL");
    store.migrate().await.expect("migrate");
    let store: Arc<dyn Store> = Arc::new(store);
    let collection = store.ensure_collection("bench").await.expect("collection");
    load(store.as_ref(), &collection, target).await;

    println!("CPU: {}", cpu_model());
    println!("{}", ragpipe::blas::Kernels::current().describe());
    let dir = tempfile::tempdir().expect("tempdir");
    let indexes = Indexes::new(dir.path().to_path_buf(), store.clone(), DIMS, MODEL, IndexSettings::default());
    let started = Instant::now();
    let report = indexes.rebuild(&collection).await.expect("rebuild");
    let total = started.elapsed().as_secs_f64();
    let t = &report.timings;
    let v = &report.verification;
    println!("rebuild of {} stored vectors: {total:.1} s in all", v.vectors);
    println!(
        "  fetch + decode {:.1} s | train {:.1} s | add {:.1} s | replay {:.1} s | tune {:.1} s | write {:.1} s",
        t.fetch, t.train, t.add, t.replay, t.tune, report.write_secs
    );
    println!(
        "  kind {}, recall@10 {}, count {} of {} live, verification {}",
        report.kind.describe(),
        v.recall.map_or_else(|| "exact".into(), |r| format!("{r:.3}")),
        v.vectors,
        v.expected,
        v.failure.as_deref().unwrap_or("passed")
    );
    println!("  peak memory {:.0} MiB; embedding calls: none possible (no embedder in this process)", peak_rss_mib());
    assert!(v.failure.is_none(), "verification failed: {:?}", v.failure);
    if !full {
        // The smoke run's database is throw-away.
        drop((indexes, store));
        use sqlx::Connection;
        let mut admin =
            sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await.expect("admin");
        let name = settings
            .url
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret)
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await
            .expect("drop the smoke database");
    }
}
