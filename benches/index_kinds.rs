//! The three index kinds of a collection (`IndexKind::Flat`, `Ivf`, `Hnsw`) on the same
//! synthetic 384-dimensional embeddings, to choose between them with numbers: build time (IVF's
//! training apart from its adds), memory, and — at the smallest `nprobe` / `ef_search` that
//! reaches recall@10 ≥ 0.95 against exact search — single-query latency (p50, p99), batched
//! throughput and the single-query speed-up over Flat. The sweeps behind each choice are printed
//! too, so the recall/latency trade-off is visible.
//!
//! A second section measures 50 concurrent single-query searches on a 100,000-vector
//! collection, with the index shared through `std::sync::RwLock` read locks (the product's
//! design, `index::CollectionIndex`) against the same searches through a `std::sync::Mutex` (one
//! search at a time, the design it replaced), plus the 50 queries as one batched call.
//!
//! Data: unit vectors around 2,000 random centres, with Gaussian-like noise whose variance
//! decays as a power law over the dimensions (effective dimension ≈ 26, like real sentence
//! embeddings, whose spectrum is far from flat), so that a query's nearest neighbours are
//! neither trivially its cluster nor random points of it. Queries are held-out draws of the same
//! distribution. Everything is deterministic (own xorshift generator, no extra dependencies).
//!
//! Run: `cargo bench --bench index_kinds` (1,000,000 vectors: about an hour on 2 cores, most of
//! it the HNSW build). Environment: `BENCH_VECTORS` (1,000,000), `BENCH_QUERIES` (500),
//! `BENCH_HNSW_VECTORS` (= `BENCH_VECTORS`; HNSW on the first that many vectors, with its own
//! exact reference), `BENCH_CONCURRENT_VECTORS` (100,000). Under `cargo test --all-targets` (no
//! `--bench` argument) it runs on small sizes as a smoke test.

use std::sync::{Barrier, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ragpipe::index::vectors::{IndexKind, VectorIndex};

const DIMS: usize = 384;
/// Neighbours asked for and compared (recall@10).
const K: usize = 10;
const CENTRES: usize = 2_000;
/// Norm of a vector's noise relative to its (unit) centre: a vector's cosine to its centre is
/// about 0.6, two members of a cluster ≈ 0.37 on average. Chosen by trial at 1,000,000 vectors
/// (the main run) for figures like those of real sentence embeddings: at 1.0 the clusters (500
/// vectors, two IVF cells each) held every query's neighbours and IVF reached recall 0.97 at
/// nprobe 2; at 1.6 it needed nprobe 128; at 1.3 it needs about 24 of 4,000 cells and the exact
/// 1st and 10th neighbours sit at cosines of about 0.64 and 0.58. With the centres fixed, smaller
/// collections are sparser clusters and so harder (at 50,000, IVF stays under 0.95 at nprobe 128).
const NOISE: f32 = 1.3;
/// The noise variance of dimension `d` is ∝ (d + 1)^-NOISE_DECAY. At 1 the noise's effective
/// dimension (participation ratio) is about 26; near 0.5 (almost isotropic) every query's
/// neighbours were its cluster's members and every kind was exact at its cheapest setting.
const NOISE_DECAY: f32 = 1.0;
/// Queries are drawn from this index on, so they are never in a collection.
const QUERY_OFFSET: u64 = 1 << 40;
const TARGET_RECALL: f64 = 0.95;
const NPROBES: [usize; 12] = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128];
const EF_SEARCHES: [usize; 9] = [16, 24, 32, 48, 64, 96, 128, 192, 256];
/// HNSW links per node (FAISS's default efConstruction, 40, is kept).
const HNSW_M: usize = 32;
/// IVF training sample: 64 vectors per cell, at most this many.
const TRAIN_PER_CELL: usize = 64;
const MAX_TRAIN: usize = 256_000;
/// Vectors per `add` call: bounds the transient copy `VectorIndex::add` makes, and gives
/// progress lines on long builds.
const ADD_CHUNK: usize = 100_000;
/// Concurrent searchers in the second section.
const THREADS: usize = 50;

/// Sizes of one run.
struct Sizes {
    vectors: usize,
    queries: usize,
    hnsw_vectors: usize,
    concurrent_vectors: usize,
}

impl Sizes {
    fn from_env() -> Self {
        // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
        let full = std::env::args().any(|a| a == "--bench");
        let vectors = env_usize("BENCH_VECTORS", if full { 1_000_000 } else { 4_000 });
        Self {
            vectors,
            queries: env_usize("BENCH_QUERIES", if full { 500 } else { 20 }),
            hnsw_vectors: env_usize("BENCH_HNSW_VECTORS", vectors).min(vectors),
            concurrent_vectors: env_usize("BENCH_CONCURRENT_VECTORS", if full { 100_000 } else { 2_000 }),
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={value} is not a count")),
        Err(_) => default,
    }
}

/// xorshift64, seeded through splitmix64 so that consecutive seeds give unrelated streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Mean 0, variance 1, near-Gaussian (Irwin–Hall: the sum of four uniforms).
    fn gaussian(&mut self) -> f32 {
        let sum: f32 = (0..4).map(|_| self.uniform()).sum();
        (sum - 2.0) * 3f32.sqrt()
    }
}

/// The distribution the vectors are drawn from. Vector `i` depends only on `i`, so a collection
/// of n vectors is the prefix of a larger one and generation splits across threads.
struct Corpus {
    centres: Vec<f32>,
    /// Per-dimension noise scale.
    scale: Vec<f32>,
}

impl Corpus {
    fn new() -> Self {
        // Vectors seed their generators with their index: this seed is beyond any of them.
        let mut rng = Rng::new(u64::MAX);
        let mut centres: Vec<f32> = (0..CENTRES * DIMS).map(|_| rng.gaussian()).collect();
        centres.chunks_exact_mut(DIMS).for_each(ragpipe::embed::normalize);
        let weights: Vec<f32> = (0..DIMS).map(|d| (d as f32 + 1.0).powf(-NOISE_DECAY)).collect();
        let total: f32 = weights.iter().sum();
        // Scaled so that the expected squared norm of the noise is NOISE².
        let scale = weights.iter().map(|w| NOISE * (w / total).sqrt()).collect();
        Self { centres, scale }
    }

    fn vector(&self, i: u64, out: &mut [f32]) {
        let mut rng = Rng::new(i);
        let centre = (rng.next_u64() % CENTRES as u64) as usize;
        let centre = &self.centres[centre * DIMS..][..DIMS];
        for ((x, c), s) in out.iter_mut().zip(centre).zip(&self.scale) {
            *x = c + s * rng.gaussian();
        }
        ragpipe::embed::normalize(out);
    }

    /// Vectors `first..first + count`, concatenated.
    fn vectors(&self, first: u64, count: usize) -> Vec<f32> {
        let mut out = vec![0f32; count * DIMS];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = count.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (t, block) in out.chunks_mut(per_thread * DIMS).enumerate() {
                s.spawn(move || {
                    for (j, v) in block.chunks_exact_mut(DIMS).enumerate() {
                        self.vector(first + (t * per_thread + j) as u64, v);
                    }
                });
            }
        });
        out
    }
}

fn count(vectors: &[f32]) -> usize {
    vectors.len() / DIMS
}

/// The process's resident memory, from /proc/self/status.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib / 1024.0
}

/// Hands memory freed into malloc's arenas back to the OS, so that RSS before and after a build
/// measures what the index holds, not what an earlier index left in the free lists.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{} (family {}, model {}), {cores} cores", field("model name"), field("cpu family"), field("model"))
}

/// The 1, 5 and 15-minute load averages.
fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An index with what it took to build.
struct Built {
    index: VectorIndex,
    train: Option<Duration>,
    add: Duration,
    rss_mib: f64,
}

/// Builds an index of `kind` over `base` (ids are positions), trained on `sample` if the kind
/// needs it. Earlier indexes must be dropped, so the RSS growth is this one's.
fn build(kind: IndexKind, base: &[f32], sample: Option<&[f32]>) -> Built {
    release_freed_memory();
    let before = rss_mib();
    let mut index = VectorIndex::with_kind(DIMS, kind).expect("index");
    let train = sample.map(|sample| {
        let started = Instant::now();
        index.train(sample).expect("training");
        let took = started.elapsed();
        eprintln!("  {}: trained on {} vectors in {:.1} s", kind.describe(), count(sample), took.as_secs_f64());
        took
    });
    let started = Instant::now();
    for (c, chunk) in base.chunks(ADD_CHUNK * DIMS).enumerate() {
        let first = c * ADD_CHUNK;
        let ids: Vec<i64> = (first..first + count(chunk)).map(|i| i as i64).collect();
        index.add(&ids, chunk).expect("add");
        if count(base) > ADD_CHUNK {
            eprintln!(
                "  {}: added {} / {} in {:.1} s",
                kind.describe(),
                first + count(chunk),
                count(base),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let add = started.elapsed();
    release_freed_memory();
    Built { index, train, add, rss_mib: rss_mib() - before }
}

/// Recall and latency of single-query searches.
#[derive(Clone, Copy)]
struct Point {
    recall: f64,
    p50: Duration,
    p99: Duration,
}

/// Searches the queries one at a time on this thread, as a query request does.
fn single_queries(index: &VectorIndex, queries: &[f32], truth: &[Vec<(i64, f32)>]) -> Point {
    index.search(&queries[..DIMS], K).expect("warm-up search");
    let mut times = Vec::with_capacity(truth.len());
    let mut found = 0;
    for (query, want) in queries.chunks_exact(DIMS).zip(truth) {
        let started = Instant::now();
        let got = index.search(query, K).expect("search");
        times.push(started.elapsed());
        found += got.iter().filter(|(id, _)| want.iter().any(|(w, _)| w == id)).count();
    }
    times.sort_unstable();
    Point {
        recall: found as f64 / (K * truth.len()) as f64,
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
    }
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Queries per second of `search_many` over all `queries` in one call, repeated for at least a
/// second (and twice at least).
fn batched_qps(index: &VectorIndex, queries: &[f32]) -> f64 {
    let started = Instant::now();
    let mut runs = 0;
    while runs < 2 || started.elapsed() < Duration::from_secs(1) {
        index.search_many(queries, K).expect("batched search");
        runs += 1;
    }
    (runs * count(queries)) as f64 / started.elapsed().as_secs_f64()
}

/// The search parameter chosen for an approximate index, and the sweep it was chosen from.
struct Tuned {
    kind: IndexKind,
    point: Point,
    reached: bool,
    sweep: Vec<(usize, Point)>,
    /// Position of the chosen setting in `sweep`.
    chosen: usize,
}

/// Measures each `(parameter, kind)` and keeps the first reaching the target recall (else the
/// most accurate); leaves the index set to it.
fn tune(index: &mut VectorIndex, settings: &[(usize, IndexKind)], queries: &[f32], truth: &[Vec<(i64, f32)>]) -> Tuned {
    let mut sweep = Vec::new();
    for &(parameter, kind) in settings {
        index.set_kind_parameters(kind).expect("search parameters");
        sweep.push((parameter, single_queries(index, queries, truth)));
    }
    let chosen = sweep.iter().position(|(_, p)| p.recall >= TARGET_RECALL);
    let best = chosen.unwrap_or_else(|| {
        (0..sweep.len()).max_by(|&a, &b| sweep[a].1.recall.total_cmp(&sweep[b].1.recall)).expect("a setting")
    });
    index.set_kind_parameters(settings[best].1).expect("search parameters");
    Tuned { kind: settings[best].1, point: sweep[best].1, reached: chosen.is_some(), sweep, chosen: best }
}

fn ivf_nlist(n: usize) -> usize {
    ((4.0 * (n as f64).sqrt()).round() as usize).max(1)
}

fn ivf_settings(nlist: usize) -> Vec<(usize, IndexKind)> {
    NPROBES.iter().filter(|&&p| p <= nlist).map(|&nprobe| (nprobe, IndexKind::Ivf { nlist, nprobe })).collect()
}

fn hnsw_settings() -> Vec<(usize, IndexKind)> {
    EF_SEARCHES.iter().map(|&ef_search| (ef_search, IndexKind::Hnsw { m: HNSW_M, ef_search })).collect()
}

/// IVF training sample: `TRAIN_PER_CELL` vectors per cell (at most `MAX_TRAIN`), taken at an even
/// stride through the collection rather than its first vectors.
fn training_sample(base: &[f32], nlist: usize) -> Vec<f32> {
    let n = count(base);
    let want = (TRAIN_PER_CELL * nlist).min(MAX_TRAIN).min(n);
    (0..want).flat_map(|j| &base[j * n / want * DIMS..][..DIMS]).copied().collect()
}

/// An IVF index over `base`, trained and tuned against `truth`.
fn tuned_ivf(base: &[f32], queries: &[f32], truth: &[Vec<(i64, f32)>]) -> (Built, Tuned) {
    let nlist = ivf_nlist(count(base));
    let sample = training_sample(base, nlist);
    let mut built = build(IndexKind::Ivf { nlist, nprobe: 1 }, base, Some(&sample));
    drop(sample);
    let tuned = tune(&mut built.index, &ivf_settings(nlist), queries, truth);
    (built, tuned)
}

/// One row of the main table.
struct Row {
    name: &'static str,
    vectors: usize,
    kind: IndexKind,
    reached: bool,
    train: Option<Duration>,
    add: Duration,
    rss_mib: f64,
    point: Point,
    batched_qps: f64,
    /// Single-query p50 of the exact index over the same vectors.
    flat_p50: Duration,
}

impl Row {
    fn new(name: &'static str, built: &Built, tuned: &Tuned, queries: &[f32], flat_p50: Duration) -> Self {
        Self {
            name,
            vectors: built.index.len(),
            kind: tuned.kind,
            reached: tuned.reached,
            train: built.train,
            add: built.add,
            rss_mib: built.rss_mib,
            point: tuned.point,
            batched_qps: batched_qps(&built.index, queries),
            flat_p50,
        }
    }

    fn print(&self) {
        let parameter = match self.kind {
            IndexKind::Flat => "–".to_owned(),
            IndexKind::Ivf { nlist, nprobe } => format!("nlist {nlist}, nprobe {nprobe}"),
            IndexKind::Hnsw { m, ef_search } => format!("m {m}, ef_search {ef_search}"),
        };
        let train = self.train.map_or("–".to_owned(), |t| format!("{:.1}", t.as_secs_f64()));
        let recall = format!("{:.3}{}", self.point.recall, if self.reached { "" } else { " (< target)" });
        println!(
            "| {} | {} | {parameter} | {train} | {:.1} | {:.0} | {recall} | {:.3} | {:.3} | {:.0} | {:.1}× |",
            self.name,
            self.vectors,
            self.add.as_secs_f64(),
            self.rss_mib,
            ms(self.point.p50),
            ms(self.point.p99),
            self.batched_qps,
            self.flat_p50.as_secs_f64() / self.point.p50.as_secs_f64(),
        );
    }
}

fn print_sweep(name: &str, parameter: &str, tuned: &Tuned) {
    println!("\n{name} sweep (single queries; * = chosen, the smallest reaching recall@10 ≥ {TARGET_RECALL}):\n");
    println!("| {parameter} | recall@10 | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|");
    for (i, (value, point)) in tuned.sweep.iter().enumerate() {
        let mark = if i == tuned.chosen { " *" } else { "" };
        println!("| {value}{mark} | {:.3} | {:.3} | {:.3} |", point.recall, ms(point.p50), ms(point.p99));
    }
}

/// A Flat index over `base` with the exact answers to `queries` (in one batched call) and its
/// single-query measurements.
fn flat_reference(base: &[f32], queries: &[f32]) -> (Built, Tuned, Vec<Vec<(i64, f32)>>) {
    let built = build(IndexKind::Flat, base, None);
    let truth = built.index.search_many(queries, K).expect("exact search");
    let point = single_queries(&built.index, queries, &truth);
    let tuned = Tuned { kind: IndexKind::Flat, point, reached: true, sweep: vec![(0, point)], chosen: 0 };
    (built, tuned, truth)
}

/// Seconds `searches` single-query searches per thread take from `THREADS` threads started
/// together (the product runs each query's search on a `spawn_blocking` thread).
fn concurrent_secs(queries: &[f32], searches: usize, search: impl Fn(&[f32]) + Sync) -> f64 {
    let barrier = Barrier::new(THREADS + 1);
    let nq = count(queries);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (barrier, search) = (&barrier, &search);
            s.spawn(move || {
                barrier.wait();
                for r in 0..searches {
                    let q = (t + r * THREADS) % nq;
                    search(&queries[q * DIMS..][..DIMS]);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let started = Instant::now();
        barrier.wait();
        started.elapsed().as_secs_f64()
    })
}

/// One row of the concurrency table: the same searches through a read-write lock's read side
/// and through a mutex (each run twice, alternating, keeping the better run: other work on the
/// machine comes in bursts), and the same queries batched 50 at a time.
fn concurrency_row(name: &str, index: &VectorIndex, queries: &[f32], p50: Duration) {
    // Enough searches per thread that the serialised (mutex) run takes about two seconds.
    let searches = ((2.0 / (p50.as_secs_f64() * THREADS as f64)).ceil() as usize).clamp(4, 2_000);
    let total = (THREADS * searches) as f64;
    // The locks guard a reference: taking them is what is compared, the index is the same.
    let rwlock = RwLock::new(index);
    let mutex = Mutex::new(index);
    let shared = |q: &[f32]| {
        let index = rwlock.read().unwrap_or_else(PoisonError::into_inner);
        index.search(q, K).expect("search");
    };
    let exclusive = |q: &[f32]| {
        let index = mutex.lock().unwrap_or_else(PoisonError::into_inner);
        index.search(q, K).expect("search");
    };
    concurrent_secs(queries, 1, shared); // warm-up
    let (mut rwlock_qps, mut mutex_qps) = (0f64, 0f64);
    for _ in 0..2 {
        rwlock_qps = rwlock_qps.max(total / concurrent_secs(queries, searches, shared));
        mutex_qps = mutex_qps.max(total / concurrent_secs(queries, searches, exclusive));
    }
    // The same queries, THREADS per `search_many` call: batch r holds what the threads search in
    // their round r.
    let nq = count(queries);
    let batches: Vec<Vec<f32>> = (0..nq.div_ceil(THREADS))
        .map(|r| (0..THREADS).flat_map(|t| &queries[(t + r * THREADS) % nq * DIMS..][..DIMS]).copied().collect())
        .collect();
    let started = Instant::now();
    for r in 0..searches {
        index.search_many(&batches[r % batches.len()], K).expect("batched search");
    }
    let batched_qps = total / started.elapsed().as_secs_f64();
    println!(
        "| {name} | {} | {:.3} | {mutex_qps:.0} | {rwlock_qps:.0} | {:.2}× | {batched_qps:.0} |",
        index.len(),
        ms(p50),
        rwlock_qps / mutex_qps,
    );
}

fn main() {
    ragpipe::blas::ensure_best_kernel();
    let sizes = Sizes::from_env();
    let kernels = ragpipe::blas::Kernels::current();
    println!("CPU: {}", cpu_model());
    println!("{}", kernels.describe());
    if let Some(warning) = kernels.warning() {
        println!("warning: {warning}");
    }
    // FAISS's OpenMP threads spin between parallel regions by default, and every search enters
    // one (IndexIDMap translates labels in a `parallel for`): on a busy machine that shows in
    // the latencies, so the settings and the load belong with the figures.
    let threading: Vec<String> = ["OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS"]
        .iter()
        .map(|name| format!("{name}={}", std::env::var(name).unwrap_or_else(|_| "unset".into())))
        .collect();
    println!("{}; load average at start: {}", threading.join(" "), load_average());
    println!(
        "N = {} vectors × {DIMS} dims ({CENTRES} clusters, noise {NOISE}, spectrum decay {NOISE_DECAY}), {} held-out \
         queries, top-{K}",
        sizes.vectors, sizes.queries
    );

    let corpus = Corpus::new();

    let started = Instant::now();
    let base = corpus.vectors(0, sizes.vectors);
    let queries = corpus.vectors(QUERY_OFFSET, sizes.queries);
    eprintln!("  generated {} vectors in {:.1} s", sizes.vectors, started.elapsed().as_secs_f64());

    let (flat, flat_tuned, truth) = flat_reference(&base, &queries);
    let flat_p50 = flat_tuned.point.p50;
    let mut rows = vec![Row::new("Flat", &flat, &flat_tuned, &queries, flat_p50)];
    drop(flat);
    let mean_score = |rank: usize| truth.iter().map(|t| f64::from(t[rank].1)).sum::<f64>() / truth.len() as f64;
    println!("exact neighbours: mean cosine of the 1st {:.3}, of the 10th {:.3}", mean_score(0), mean_score(K - 1));

    let (ivf, ivf_tuned) = tuned_ivf(&base, &queries, &truth);
    rows.push(Row::new("IVF", &ivf, &ivf_tuned, &queries, flat_p50));
    drop(ivf);
    print_sweep("IVF", "nprobe", &ivf_tuned);

    // HNSW may run on a prefix (its build is the slow one): then it is compared with a Flat
    // index over the same prefix.
    let hnsw_base = &base[..sizes.hnsw_vectors * DIMS];
    let (hnsw_truth, hnsw_flat_p50) = if sizes.hnsw_vectors == sizes.vectors {
        (truth, flat_p50)
    } else {
        let (flat, flat_tuned, truth) = flat_reference(hnsw_base, &queries);
        rows.push(Row::new("Flat (HNSW's N)", &flat, &flat_tuned, &queries, flat_tuned.point.p50));
        (truth, flat_tuned.point.p50)
    };
    let mut hnsw = build(IndexKind::Hnsw { m: HNSW_M, ef_search: EF_SEARCHES[0] }, hnsw_base, None);
    let hnsw_tuned = tune(&mut hnsw.index, &hnsw_settings(), &queries, &hnsw_truth);
    rows.push(Row::new("HNSW", &hnsw, &hnsw_tuned, &queries, hnsw_flat_p50));
    drop(hnsw);
    print_sweep("HNSW", "ef_search", &hnsw_tuned);
    drop(base);

    println!("\n## Index kinds, N = {} (CPU: {})\n", sizes.vectors, cpu_model());
    println!(
        "| index | vectors | parameters | train s | add s | RSS growth MiB | recall@10 | p50 ms | p99 ms | batched QPS \
         | single-query speed vs Flat |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    rows.iter().for_each(Row::print);
    println!(
        "\n(single queries: one at a time on one thread; batched: all {} queries in one search_many call, FAISS's \
         OpenMP threads)",
        sizes.queries
    );

    println!("\n## {THREADS} concurrent searches on a {}-vector collection\n", sizes.concurrent_vectors);
    let base = corpus.vectors(0, sizes.concurrent_vectors);
    let (flat, flat_tuned, truth) = flat_reference(&base, &queries);
    let (ivf, ivf_tuned) = tuned_ivf(&base, &queries, &truth);
    println!(
        "{THREADS} threads, each issuing single-query searches; QPS over all of them. Batched: the same queries, \
         {THREADS} per search_many call.\n"
    );
    println!("| index | vectors | single-query p50 ms | Mutex QPS | RwLock QPS | RwLock / Mutex | batched QPS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    concurrency_row("Flat", &flat.index, &queries, flat_tuned.point.p50);
    let IndexKind::Ivf { nlist, nprobe } = ivf_tuned.kind else { unreachable!("an IVF setting") };
    concurrency_row(
        &format!("IVF nlist {nlist}, nprobe {nprobe} (recall@10 {:.3})", ivf_tuned.point.recall),
        &ivf.index,
        &queries,
        ivf_tuned.point.p50,
    );
    println!("\nload average at the end: {}", load_average());
}
