//! FAISS's BLAS-bound work under the OpenBLAS kernel this process runs on: k-means training of
//! an IVF index (nlist 1024) on 200,000 × 384 vectors, and a batched exact (Flat) search of 64
//! queries over 100,000 vectors. Both go through OpenBLAS's `sgemm`, so their speed follows the
//! kernel OpenBLAS picked; `benches/blas_kernels.sh` runs this with `OPENBLAS_CORETYPE` unset,
//! `Prescott`, `Haswell` and `SkylakeX` to show the spread and what the start-up guard recovers.
//!
//! Like `main`, the bench first calls [`ragpipe::blas::ensure_best_kernel`], so the "unset" row
//! measures what a ragpipe process gets by itself. Run: `cargo bench --bench faiss_blas`. Under
//! `cargo test --all-targets` (no `--bench` argument) it runs on small sizes as a smoke test.

use std::time::Instant;

use faiss::{Index, MetricType};

const DIMS: usize = 384;

/// `count` pseudo-random unit vectors (xorshift; the values do not matter to BLAS, only sizes).
fn unit_vectors(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(count * DIMS);
    for _ in 0..count {
        let start = out.len();
        for _ in 0..DIMS {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5);
        }
        ragpipe::embed::normalize(&mut out[start..]);
    }
    out
}

fn main() {
    ragpipe::blas::ensure_best_kernel();
    let full = std::env::args().any(|a| a == "--bench");
    let (train_n, nlist, base_n, queries_n) = if full { (200_000, 1024, 100_000, 64) } else { (4_000, 16, 2_000, 8) };
    let kernels = ragpipe::blas::Kernels::current();
    println!("{}", kernels.describe());
    if let Some(warning) = kernels.warning() {
        println!("warning: {warning}");
    }
    let core = format!("OPENBLAS_CORETYPE={}", std::env::var("OPENBLAS_CORETYPE").unwrap_or_else(|_| "unset".into()));

    let train = unit_vectors(train_n, 7);
    let mut ivf =
        faiss::index_factory(DIMS as u32, format!("IVF{nlist},Flat"), MetricType::InnerProduct).expect("IVF index");
    let started = Instant::now();
    ivf.train(&train).expect("IVF training");
    let train_secs = started.elapsed().as_secs_f64();

    let base = unit_vectors(base_n, 11);
    let queries = unit_vectors(queries_n, 13);
    let mut flat = faiss::index_factory(DIMS as u32, "Flat", MetricType::InnerProduct).expect("Flat index");
    flat.add(&base).expect("add");
    flat.search(&queries, 10).expect("warm-up search");
    let rounds = if full { 20 } else { 2 };
    let started = Instant::now();
    for _ in 0..rounds {
        flat.search(&queries, 10).expect("search");
    }
    let search_ms = started.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
    println!(
        "{core:<28} kernel {:<10} IVF{nlist} training on {train_n} × {DIMS}: {train_secs:6.2} s   \
         Flat search, {queries_n} queries over {base_n}: {search_ms:7.1} ms",
        kernels.blas_core
    );
}
