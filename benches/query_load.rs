//! Query round trips under load, distributed: RabbitMQ request/reply (direct reply-to) →
//! the query role → PostgreSQL + FAISS (+ BM25 in hybrid mode) → reply, with the hash embedder.
//!
//! A collection of `BENCH_CHUNKS` chunks (100,000; synthetic text, so BM25 has real postings) is
//! ingested, then `BENCH_CLIENTS` clients (1 and 50: a comma-separated list) each send queries one after
//! another for `BENCH_SECS` (10) per row: every query new (cache misses) or all the same (cache
//! hits), in dense and hybrid mode, after the collection's rebuild (`auto`: IVF at this size;
//! `BENCH_NO_REBUILD=1` measures the Flat index the adds built). Then the most clients again,
//! sending at random times at `BENCH_OPEN_SHARE` (0.5; 0 skips) of the rate they reached back to
//! back (an open loop: latency below capacity, counted from when each query was due).
//! Reported: queries/s and round-trip p50 / p99 as the clients see them, and the median of each
//! step the worker timed (`timings_ms` of the replies). Clients and the query role share this
//! process, and the machine's cores with PostgreSQL and RabbitMQ. Last, the transport alone: the
//! same clients asking a responder on a query queue of its own that answers each request at once
//! with a cached answer's bytes, through the same queue ports: the floor any query has on this
//! machine, whatever the query role does.
//!
//! Run: `cargo bench --bench query_load` (needs the test services). Under `cargo test
//! --all-targets` (no `--bench`) it runs small as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ragpipe::messages::{CollectionName, QueryRequest, SearchMode};
use ragpipe::queue::RequestReply;
use ragpipe::worker::Role;

const WORDS: &[&str] = &[
    "river", "harbour", "tide", "granite", "lantern", "orchard", "quince", "heron", "compiler", "register", "kernel",
    "lattice", "protein", "enzyme", "glacier", "meadow", "copper", "signal", "vector", "cipher", "ledger", "falcon",
    "canyon", "spruce", "amber", "basalt", "cobalt", "delta", "ember", "fjord", "gossamer", "hollow", "iris",
    "juniper", "kestrel", "lichen", "marrow", "nimbus", "onyx", "pylon", "quartz", "rosin", "saffron", "thistle",
    "umber", "vellum", "willow", "xylem", "yarrow", "zephyr",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// Deterministic text: `sentences` sentences of 12 words drawn from [`WORDS`] by `seed`. Every
/// chunk holds most of the words, so hash vectors are near-uniform (IVF must probe far) and every
/// BM25 posting list is long: a worst case for both legs.
fn text(seed: u64, sentences: usize) -> String {
    let mut random = Random::new(seed);
    (0..sentences)
        .map(|_| format!("{}.", (0..12).map(|_| WORDS[random.below(WORDS.len())]).collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Xorshift: reproducible across runs and platforms.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Query `n` (one sentence of the same vocabulary) in `mode`, for the 5 best chunks.
fn ask(n: usize, mode: SearchMode, collection: &CollectionName) -> QueryRequest {
    let mut request = QueryRequest::new(text(n as u64 + 7, 1), collection.clone(), 5);
    request.mode = Some(mode);
    request
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")).and_then(|l| l.split(':').nth(1));
    format!("{}, {} cores", model.unwrap_or("?").trim(), std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One row of the table: who asks what, how.
struct Row {
    mode: SearchMode,
    /// The transport alone (the echo responder) instead of the query role.
    echo: bool,
    /// Every query the same (cache hits) or each new (misses).
    repeated: bool,
    clients: usize,
    secs: f64,
    /// `None`: each client asks again as soon as it has its answer (closed loop). `Some(rate)`:
    /// the clients together send `rate` queries per second at exponentially distributed
    /// intervals, each client one at a time (open loop); a query's latency counts from when it
    /// was due, so a client held up by a slow answer does not hide the queueing it causes.
    offered: Option<f64>,
}

/// Measures `row`, prints it, and returns the queries per second answered.
async fn measure(requests: &Arc<dyn RequestReply>, collection: &CollectionName, row: &Row) -> f64 {
    let (mode, repeated, clients) = (row.mode, row.repeated, row.clients);
    // Warm the caches (and BM25) first for the cached row; a fresh seed for the other.
    let seed = 1_000_000 * (mode as usize + 1) + 100_000 * clients + if row.offered.is_some() { 50_000 } else { 0 };
    let sequence = Arc::new(AtomicUsize::new(if repeated { 0 } else { seed }));
    // Warm up: the first lexical query of a process builds the BM25 index, and the cached
    // row's query must be in the cache.
    let warm = ask(if repeated { 0 } else { usize::MAX / 2 }, mode, collection);
    ragpipe::client::query(requests.as_ref(), &warm, Duration::from_secs(120)).await.expect("warm");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(row.secs);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (requests, sequence, collection) = (requests.clone(), sequence.clone(), collection.clone());
            // Each client's share of the offered rate, on its own random schedule.
            let mut arrivals = row.offered.map(|rate| Arrivals::new(rate / clients as f64, client as u64 + 1));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut due = started;
                loop {
                    due = match arrivals.as_mut() {
                        Some(arrivals) => due + arrivals.next_gap(),
                        None => Instant::now(),
                    };
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let n = if repeated { 0 } else { sequence.fetch_add(1, Ordering::Relaxed) };
                    let request = ask(n, mode, &collection);
                    let reply = ragpipe::client::query(requests.as_ref(), &request, Duration::from_secs(30))
                        .await
                        .expect("reply");
                    assert!(reply.get("error").is_none(), "{reply}");
                    latencies.push((due.elapsed(), reply["timings_ms"].clone()));
                }
                latencies
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.extend(task.await.expect("client"));
    }
    let elapsed = started.elapsed().as_secs_f64().max(row.secs);
    let mut latencies: Vec<Duration> = replies.iter().map(|r| r.0).collect();
    latencies.sort();
    // Where a round trip goes, as the worker timed it: the median of each step.
    let mut steps: std::collections::BTreeMap<String, Vec<f64>> = std::collections::BTreeMap::new();
    for (_, timings) in &replies {
        for (step, ms) in timings.as_object().into_iter().flatten() {
            steps.entry(step.clone()).or_default().push(ms.as_f64().unwrap_or(0.0));
        }
    }
    // (The echo's replies carry the timings of the answer it repeats: not its own.)
    let steps: Vec<String> = steps
        .into_iter()
        .filter(|_| !row.echo)
        .map(|(step, mut ms)| {
            ms.sort_by(f64::total_cmp);
            format!("{step} {:.2}", ms[ms.len() / 2])
        })
        .collect();
    let rate = latencies.len() as f64 / elapsed;
    let who = match row.offered {
        None => format!("{clients}"),
        Some(offered) => format!("{clients}, {offered:.0}/s offered at random times"),
    };
    println!(
        "| {} | {} | {who} | {rate:.0} | {:.2} | {:.2} | {} |",
        if row.echo { "transport only" } else { mode.as_str() },
        match (row.echo, repeated) {
            (true, _) => "answered at once (echo)",
            (false, true) => "the same (cache hits)",
            (false, false) => "all different (cache misses)",
        },
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        steps.join(", "),
    );
    rate
}

/// Exponentially distributed gaps between arrivals (a Poisson process), deterministic by seed.
struct Arrivals {
    rate: f64,
    random: Random,
}

impl Arrivals {
    fn new(rate: f64, seed: u64) -> Self {
        Self { rate: rate.max(1e-3), random: Random::new(seed) }
    }

    fn next_gap(&mut self) -> Duration {
        // The inverse of the exponential distribution's CDF.
        Duration::from_secs_f64(-self.random.unit().ln() / self.rate)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let chunks = env_usize("BENCH_CHUNKS", if full { 100_000 } else { 2_000 });
    // A list: each row is measured at each client count (1 shows the round trip without queueing).
    let clients: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| if full { vec![1, 50] } else { vec![4] });
    let secs = env_usize("BENCH_SECS", if full { 10 } else { 1 }) as f64;
    println!("CPU: {}", cpu_model());
    let mut env = common::TestEnv::new().await;
    env.settings.chunk.max_tokens = 256;
    env.settings.query.concurrency = clients.iter().copied().max().unwrap_or(1);
    // Files of ~400 chunks each (documents of 256-token chunks of 12-word sentences).
    let per_file = 400;
    let files: Vec<_> = (0..chunks.div_ceil(per_file))
        .map(|f| env.write(&format!("load-{f}.txt"), text(f as u64 + 1, per_file * 18).as_bytes()))
        .collect();
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let uploads: Vec<_> = files.iter().map(|f| env.upload_file(f, "load")).collect();
    let started = Instant::now();
    let outcomes = common::ingest(&queue, &uploads).await;
    let stored: i64 = uploads.iter().map(|u| common::ingested(&outcomes[&u.upload_id]).chunks).sum();
    println!("{stored} chunks in {} documents ingested in {:.1} s", uploads.len(), started.elapsed().as_secs_f64());
    worker.services.indexes.catch_up("load").await.expect("catch up");
    if std::env::var_os("BENCH_NO_REBUILD").is_none() {
        // A collection that grew past `[index] auto_threshold` by adds stays Flat until its
        // (nightly) rebuild; measure what it serves after one, as `auto` builds it.
        let row = worker.services.store.collection("load").await.expect("store").expect("collection");
        let report = worker.services.indexes.rebuild(&row).await.expect("rebuild");
        let t = &report.timings;
        println!("rebuilt as {} in {:.1} s", report.kind.describe(), t.fetch + t.train + t.add + t.replay + t.tune);
    }

    println!("| mode | queries | clients | queries/s | p50 ms | p99 ms | worker's steps, median ms |");
    println!("|---|---|---:|---:|---:|---:|---|");
    let collection = CollectionName::new("load").expect("name");
    let requests: Arc<dyn RequestReply> = queue.requests.clone();
    let open_share = std::env::var("BENCH_OPEN_SHARE").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.5);
    for mode in [SearchMode::Dense, SearchMode::Hybrid] {
        for repeated in [false, true] {
            let mut closed_rate = 0.0;
            for &clients in &clients {
                let row = Row { mode, echo: false, repeated, clients, secs, offered: None };
                closed_rate = measure(&requests, &collection, &row).await;
            }
            // The same clients, each sending at random (Poisson) times at `BENCH_OPEN_SHARE` of
            // the rate they reached back to back: the latency a service running below its
            // capacity gives, which back-to-back clients (always queueing) cannot show.
            let most = clients.iter().copied().max().unwrap_or(1);
            if full && open_share > 0.0 && most > 1 {
                let row =
                    Row { mode, echo: false, repeated, clients: most, secs, offered: Some(closed_rate * open_share) };
                measure(&requests, &collection, &row).await;
            }
        }
    }

    // The floor: the same clients and broker, and a responder that does nothing but answer.
    let answer =
        ragpipe::client::query(requests.as_ref(), &ask(0, SearchMode::Dense, &collection), Duration::from_secs(30))
            .await
            .expect("a cached answer");
    let echo_env = common::TestEnv::new().await;
    let echo = ragpipe::queue::connect(&echo_env.settings.broker, &echo_env.embedded_database()).await.expect("queue");
    let concurrency = env.settings.query.concurrency;
    let responder =
        tokio::spawn(echo_responder(echo.requests.clone(), serde_json::to_vec(&answer).expect("json"), concurrency));
    let mut closed_rate = 0.0;
    for &clients in &clients {
        let row = Row { mode: SearchMode::Dense, echo: true, repeated: true, clients, secs, offered: None };
        closed_rate = measure(&echo.requests, &collection, &row).await;
    }
    let most = clients.iter().copied().max().unwrap_or(1);
    if full && open_share > 0.0 && most > 1 {
        let row = Row {
            mode: SearchMode::Dense,
            echo: true,
            repeated: true,
            clients: most,
            secs,
            offered: Some(closed_rate * open_share),
        };
        measure(&echo.requests, &collection, &row).await;
    }
    responder.abort();
    echo.close().await;
    worker.stop().await;
}

/// Answers every request on `requests`' queue with `body` at once, `concurrency` at a time, as
/// the query role takes them (`query::run`).
async fn echo_responder(requests: Arc<dyn RequestReply>, body: Vec<u8>, concurrency: usize) {
    use futures::StreamExt;
    let served = requests.serve().await.expect("serve");
    served
        .for_each_concurrent(concurrency, |request| {
            let body = &body;
            async move {
                if let Some(reply) = request.expect("request").reply {
                    reply.send(body).await.expect("reply");
                }
            }
        })
        .await;
}
