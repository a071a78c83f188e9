//! Chunking throughput per file and strategy, on one core, release build.
//!
//! `cargo bench --bench chunk_throughput -- [--max-tokens N] [--repeat R] [--emit DIR] [FILE…]`
//!
//! Prints MB/s (best of R runs, input bytes / time, tokenizer already built) for every
//! strategy, then text-splitter 0.33 on the same input for comparison, and checks every chunk
//! with tiktoken-rs's own `encode_ordinary` (over-budget chunks are reported, never hidden).
//! "cpu" is input bytes per second of this thread's on-CPU time (Linux schedstat): one core's
//! throughput, unaffected by other processes sharing the machine. "wall" is per elapsed second.
//! With `--emit DIR`, writes each run's chunks as JSON lines (`{"text": …, "tokens": …}`) to
//! `DIR/<file>.<strategy>.jsonl` and the figures to `DIR/throughput.json`, for
//! `benches/chunk_vs_langchain.py` to compare and check.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ragpipe::chunk::{Chunk, ChunkInput, ChunkSettings, Chunker, Strategy};

const DEFAULT_FILES: [&str; 2] = ["markdown/pandoc_MANUAL.md", "text/tinyshakespeare.txt"];
const STRATEGIES: [Strategy; 4] = [Strategy::Semantic, Strategy::Recursive, Strategy::Markdown, Strategy::Fixed];

struct Args {
    max_tokens: usize,
    repeat: usize,
    emit: Option<PathBuf>,
    files: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let mut args = Args { max_tokens: 256, repeat: 5, emit: None, files: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--max-tokens" => {
                args.max_tokens = value("--max-tokens")?.parse().map_err(|e| format!("--max-tokens: {e}"))?
            }
            "--repeat" => args.repeat = value("--repeat")?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--emit" => args.emit = Some(PathBuf::from(value("--emit")?)),
            "--bench" => {} // added by `cargo bench`
            file => args.files.push(corpus.join(file)),
        }
    }
    if args.files.is_empty() {
        args.files = DEFAULT_FILES.iter().map(|f| corpus.join(f)).collect();
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let settings = ChunkSettings { max_tokens: args.max_tokens, ..ChunkSettings::default() };
    let started = Instant::now();
    let chunker = Chunker::new(&settings)?;
    println!("tokenizer built in {:?} ({})", started.elapsed(), settings.encoding);
    let reference = tiktoken_rs::cl100k_base()?;
    if let Some(dir) = &args.emit {
        std::fs::create_dir_all(dir)?;
    }
    println!(
        "{:<28} {:<13} {:>8} {:>8} {:>7} {:>8} {:>6}",
        "file", "strategy", "cpu MB/s", "wall", "chunks", "mean tok", "over"
    );
    let mut figures = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)?;
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_owned();
        let markdown = name.ends_with(".md");
        for strategy in STRATEGIES {
            let input = ChunkInput { text: &text, markdown, pages: &[] };
            let (best, chunks) = best_of(args.repeat, || chunker.chunk_with(&input, strategy, args.max_tokens, 0));
            let over = chunks.iter().filter(|c| reference.encode_ordinary(&c.text).len() > args.max_tokens).count();
            let (cpu, wall) = report(
                &name,
                strategy.name(),
                text.len(),
                best,
                &chunks.iter().map(|c| c.token_count).collect::<Vec<_>>(),
                over,
            );
            figures.push(serde_json::json!({ "file": name, "strategy": strategy.name(), "cpu_mb_per_s": cpu, "wall_mb_per_s": wall, "chunks": chunks.len(), "over": over }));
            if let Some(dir) = &args.emit {
                emit(
                    &dir.join(format!("{name}.{}.jsonl", strategy.name())),
                    chunks.iter().map(|c: &Chunk| (c.text.as_str(), c.token_count)),
                )?;
            }
        }
        let (cpu, wall) = text_splitter_baseline(&name, &text, markdown, &reference, &args)?;
        figures.push(serde_json::json!({ "file": name, "strategy": "text-splitter", "cpu_mb_per_s": cpu, "wall_mb_per_s": wall }));
    }
    if let Some(dir) = &args.emit {
        std::fs::write(dir.join("throughput.json"), serde_json::to_string_pretty(&figures)?)?;
    }
    Ok(())
}

/// text-splitter 0.33 with the same BPE, for the record (see the README for why it is not used).
fn text_splitter_baseline(
    name: &str,
    text: &str,
    markdown: bool,
    bpe: &tiktoken_rs::CoreBPE,
    args: &Args,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};
    let config = || ChunkConfig::new(args.max_tokens).with_sizer(bpe);
    let repeat = args.repeat.min(2);
    let (best, chunks): (Timing, Vec<String>) = if markdown {
        let splitter = MarkdownSplitter::new(config());
        best_of(repeat, || splitter.chunks(text).map(str::to_owned).collect())
    } else {
        let splitter = TextSplitter::new(config());
        best_of(repeat, || splitter.chunks(text).map(str::to_owned).collect())
    };
    let counts: Vec<usize> = chunks.iter().map(|c| bpe.encode_ordinary(c).len()).collect();
    let over = counts.iter().filter(|&&n| n > args.max_tokens).count();
    let mbps = report(name, "text-splitter", text.len(), best, &counts, over);
    if let Some(dir) = &args.emit {
        emit(
            &dir.join(format!("{name}.text-splitter.jsonl")),
            chunks.iter().map(String::as_str).zip(counts.iter().copied()),
        )?;
    }
    Ok(mbps)
}

/// Fastest run by on-CPU time and by wall time (they may come from different runs).
#[derive(Clone, Copy)]
struct Timing {
    cpu: Duration,
    wall: Duration,
}

/// This thread's on-CPU time so far, from `/proc/thread-self/schedstat` (nanoseconds first);
/// wall time stands in where that file does not exist.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Runs `run` `repeat` times (at least once); the fastest times and the last output.
fn best_of<T>(repeat: usize, mut run: impl FnMut() -> T) -> (Timing, T) {
    let mut best = Timing { cpu: Duration::MAX, wall: Duration::MAX };
    let mut once = || {
        let (cpu, wall) = (thread_cpu(), Instant::now());
        let out = run();
        let wall = wall.elapsed();
        let cpu = cpu.zip(thread_cpu()).map_or(wall, |(a, b)| b.saturating_sub(a));
        (Timing { cpu, wall }, out)
    };
    let (first, mut out) = once();
    best = Timing { cpu: best.cpu.min(first.cpu), wall: best.wall.min(first.wall) };
    for _ in 1..repeat {
        let (t, o) = once();
        best = Timing { cpu: best.cpu.min(t.cpu), wall: best.wall.min(t.wall) };
        out = o;
    }
    (best, out)
}

/// Prints one row and returns (cpu, wall) MB/s.
fn report(file: &str, what: &str, bytes: usize, best: Timing, counts: &[usize], over: usize) -> (f64, f64) {
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let (cpu, wall) = (mbps(best.cpu), mbps(best.wall));
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    println!("{file:<28} {what:<13} {cpu:>8.2} {wall:>8.2} {:>7} {mean:>8.1} {over:>6}", counts.len());
    (cpu, wall)
}

fn emit<'a>(path: &Path, chunks: impl Iterator<Item = (&'a str, usize)>) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (text, tokens) in chunks {
        writeln!(out, "{}", serde_json::json!({ "text": text, "tokens": tokens }))?;
    }
    out.flush()
}
