//! Searches while ingest adds to the same collection: what an add costs the searches.
//!
//! One thread adds documents (10 vectors each) to an HNSW collection at a steady rate (an
//! ingest worker's pace) while another searches it (one query at a time, k = 10), for a fixed time, in two designs:
//!
//! - **in place** (the design `index::serving` replaced): the collection's `RwLock` guards the
//!   HNSW index itself; an add holds the write lock while HNSW inserts the vectors, and every
//!   search that arrives meanwhile waits.
//! - **delta** (the product's design, `index::serving::Serving`): an add copies its vectors into
//!   a small Flat delta under the lock; searches take their view under the lock and search
//!   outside it; a third thread folds the delta into a copy of the index whenever it is due, as
//!   the maintenance task does, and swaps the copy in.
//!
//! Reported per design: search latency p50 / p99 / max, how long adds held the write lock (p50 /
//! max), and adds per second.
//!
//! Run: `cargo bench --bench index_adds`. Environment: `BENCH_VECTORS` (50,000 in the collection
//! at the start), `BENCH_SECS` (10 per design), `BENCH_ADD_RATE` (documents per second, 50). Under `cargo test --all-targets` (no `--bench`
//! argument) it runs on small sizes as a smoke test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use ragpipe::index::serving::Serving;
use ragpipe::index::vectors::{IndexKind, VectorIndex};

const DIMS: usize = 384;
const K: usize = 10;
const PER_DOCUMENT: usize = 10;
const KIND: IndexKind = IndexKind::Hnsw { m: 32, ef_search: 64 };

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// `n` random unit vectors from `seed` (xorshift64).
fn vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    let mut out: Vec<f32> = (0..n * DIMS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    out.chunks_exact_mut(DIMS).for_each(ragpipe::embed::normalize);
    out
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")).and_then(|l| l.split(':').nth(1));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{}, {cores} cores", model.unwrap_or("?").trim())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

/// What one design measured.
struct Row {
    searches: Vec<Duration>,
    holds: Vec<Duration>,
    secs: f64,
}

impl Row {
    fn print(mut self, name: &str) {
        self.searches.sort();
        self.holds.sort();
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.0} |",
            self.searches.len(),
            ms(percentile(&self.searches, 0.5)),
            ms(percentile(&self.searches, 0.99)),
            ms(self.searches.last().copied().unwrap_or_default()),
            ms(percentile(&self.holds, 0.5)),
            ms(self.holds.last().copied().unwrap_or_default()),
            self.holds.len() as f64 / self.secs,
        );
    }
}

/// Runs `search` on one thread and `add` (returning how long it held the lock) on another for
/// `secs`, with `background` looping on a third until they stop.
fn run(
    secs: f64,
    rate: f64,
    queries: &[f32],
    search: impl Fn(&[f32]) + Sync,
    add: impl Fn(usize) -> Duration + Sync,
    background: impl Fn() + Sync,
) -> Row {
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        let adder = s.spawn(|| {
            let mut holds = Vec::new();
            let started = Instant::now();
            for doc in 0.. {
                let due = started + Duration::from_secs_f64(doc as f64 / rate);
                while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                holds.push(add(doc));
            }
            holds
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                background();
            }
        });
        let mut searches = Vec::new();
        for query in queries.chunks_exact(DIMS).cycle() {
            if Instant::now() >= deadline {
                break;
            }
            let started = Instant::now();
            search(query);
            searches.push(started.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        Row { searches, holds: adder.join().expect("adder"), secs }
    })
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = env_usize("BENCH_VECTORS", if full { 50_000 } else { 2_000 });
    let secs = env_usize("BENCH_SECS", if full { 10 } else { 1 }) as f64;
    let rate = env_usize("BENCH_ADD_RATE", 50) as f64;
    println!("CPU: {}", cpu_model());
    let base = vectors(n, 1);
    let queries = vectors(1_000, 2);
    // Documents to add: enough for the longer run, ids after the base's.
    let docs = vectors(PER_DOCUMENT * 20_000, 3);
    let doc = |d: usize| {
        let d = d % 20_000;
        let ids: Vec<i64> = (0..PER_DOCUMENT).map(|i| (n + d * PER_DOCUMENT + i) as i64).collect();
        (ids, &docs[d * PER_DOCUMENT * DIMS..(d + 1) * PER_DOCUMENT * DIMS])
    };
    let started = Instant::now();
    let mut index = VectorIndex::with_kind(DIMS, KIND).expect("index");
    let ids: Vec<i64> = (0..n as i64).collect();
    index.add(&ids, &base).expect("add");
    println!(
        "{} with {n} vectors built in {:.1} s; {secs} s per design, {rate} documents of {PER_DOCUMENT} vectors added per second",
        KIND.describe(),
        started.elapsed().as_secs_f64()
    );
    let copy = index.try_clone().expect("clone");

    println!("| design | searches | search p50 ms | p99 ms | max ms | add holds lock p50 ms | max ms | adds/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let in_place = RwLock::new(index);
    let row = run(
        secs,
        rate,
        &queries,
        |q| {
            let index = in_place.read().unwrap_or_else(PoisonError::into_inner);
            std::hint::black_box(index.search(q, K).expect("search"));
        },
        |d| {
            let (ids, vectors) = doc(d);
            let mut index = in_place.write().unwrap_or_else(PoisonError::into_inner);
            let started = Instant::now();
            index.add(&ids, vectors).expect("add");
            started.elapsed()
        },
        || std::thread::sleep(Duration::from_millis(5)),
    );
    row.print("in place (HNSW add under the lock)");
    drop(in_place);

    let delta = RwLock::new(Serving::new(copy).expect("serving"));
    let row = run(
        secs,
        rate,
        &queries,
        |q| {
            let view = delta.read().unwrap_or_else(PoisonError::into_inner).begin_search(q, K).expect("view");
            std::hint::black_box(view.run(q, K).expect("search"));
        },
        |d| {
            let (ids, vectors) = doc(d);
            let mut serving = delta.write().unwrap_or_else(PoisonError::into_inner);
            let started = Instant::now();
            serving.add(&ids, vectors).expect("add");
            started.elapsed()
        },
        || {
            // The maintenance task's fold: copy and insert outside the lock, swap under it.
            if !delta.read().unwrap_or_else(PoisonError::into_inner).fold_due() {
                std::thread::sleep(Duration::from_millis(5));
                return;
            }
            let fold = delta.write().unwrap_or_else(PoisonError::into_inner).begin_fold().expect("begin");
            let next = fold.run().expect("fold");
            delta.write().unwrap_or_else(PoisonError::into_inner).finish_fold(&fold, next);
        },
    );
    row.print("delta (product: copy into a Flat delta, fold in the background)");
    let serving = delta.into_inner().unwrap_or_else(PoisonError::into_inner);
    println!("after the run: {} vectors, {} not yet folded", serving.len(), serving.unfolded());
}
