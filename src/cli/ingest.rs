//! `ragpipe ingest <paths…> [--from-jsonl manifest]`: publish one upload per file (directories
//! walked with include/exclude globs, hidden files skipped, no symlink escapes) or manifest line;
//! with `--wait`, follow their outcomes and print a summary (ingested / duplicate / no text /
//! failed with reasons). Ctrl-C stops and says how far it got.
//!
//! With the embedded queue and no worker running on the data directory, this process runs the
//! ingest role itself until its uploads are settled (so `--wait` is implied): the same pipeline,
//! progress and summary as with a worker, and nothing needs to run in the background.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Outcome};
use crate::config::Settings;
use crate::embedded::LazyDatabase;
use crate::fetch::FetchPolicy;
use crate::messages::{self, CollectionName, DocumentStatus};
use crate::queue::{self, QueueKind};
use crate::store;
use crate::worker::{self, Role};

/// Uploads published together (one commit of the embedded queue; confirms awaited together).
const PUBLISH_BATCH: usize = 64;
/// Batches published but not yet confirmed, at most.
const PUBLISH_WINDOW: usize = 2;

/// Arguments of `ragpipe ingest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (walked recursively) to ingest.
    #[arg(required_unless_present_any = ["from_jsonl", "retry_failed"])]
    pub paths: Vec<PathBuf>,
    /// Send every document that failed for good again, from its stored original bytes (only
    /// those of `--collection` when it is given), after fixing what made it fail.
    #[arg(long)]
    pub retry_failed: bool,
    /// A manifest instead of (or besides) paths: one JSON object per line, `{"path": ...}` (relative
    /// to the manifest) or `{"uri": ...}`, each with optional `"metadata": {...}`.
    #[arg(long, value_name = "FILE")]
    pub from_jsonl: Option<PathBuf>,
    /// Only files matching one of these globs (`*.pdf`; with a `/`, a path below the directory:
    /// `reports/**/*.md`).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files and directories matching one of these globs.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Take hidden files and directories (names starting with `.`) too.
    #[arg(long)]
    pub hidden: bool,
    /// Collection to ingest into (default `default`); with `--retry-failed`, the only collection
    /// whose failed documents are sent again (default: all, each into its own collection).
    #[arg(long, short)]
    pub collection: Option<String>,
    /// Wait for every upload's outcome and print a summary (exit code 1 if any failed).
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Publishes the uploads and optionally waits for them (or, embedded with no worker, processes
/// them here).
///
/// # Errors
/// No files, an unreadable file, a bad collection name, or a queue failure.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let collection = CollectionName::new(args.collection.as_deref().unwrap_or("default"))?;
    let walk =
        client::WalkOptions { include: args.include.clone(), exclude: args.exclude.clone(), hidden: args.hidden };
    let mut sources: Vec<Source> = client::collect_files(&args.paths, &walk)?.into_iter().map(Source::File).collect();
    if let Some(manifest) = &args.from_jsonl {
        sources.extend(read_manifest(manifest)?);
    }
    let embedded = LazyDatabase::new(settings.storage.database_file());
    if args.retry_failed {
        let connected = store::connect(&settings.database, &embedded).await.context("connecting to the store")?;
        let failed =
            connected.store.failed_documents(args.collection.as_deref()).await.context("listing failed documents")?;
        if failed.is_empty() && sources.is_empty() {
            println!("no failed documents to send again");
            return Ok(ExitCode::SUCCESS);
        }
        sources.extend(failed.into_iter().map(Source::Failed));
    }
    anyhow::ensure!(!sources.is_empty(), "no files found under {:?}", args.paths);
    let policy = FetchPolicy::new(
        &settings.storage.allowed_roots,
        settings.extract.max_file_bytes,
        settings.ingest.max_inline_bytes,
    );
    let mut queue = queue::connect(&settings.broker, &embedded).await.context("connecting to the queue")?;
    let local = matches!(queue.kind, QueueKind::Embedded(_))
        && !queue.uploads.has_consumers().await.context("looking for a running worker")?;
    let worker = if local {
        let program = std::env::current_exe().context("locating the ragpipe binary for the extraction sandbox")?;
        let services =
            Arc::new(worker::connect_with(settings, program, &embedded).await.context("starting the pipeline")?);
        queue = services.queue.clone();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn({
            let (services, shutdown) = (services.clone(), shutdown.clone());
            async move { worker::run(services, &[Role::Ingest], shutdown).await }
        });
        Some((shutdown, running))
    } else {
        None
    };
    let started = Instant::now();
    // Subscribe before publishing so that no outcome can slip past.
    let wait = args.wait || local;
    let mut events = if wait { Some(client::subscribe_outcomes(queue.events.as_ref()).await?) } else { None };
    // Ctrl-C stops publishing and waiting; what was published is still ingested by the worker.
    let interrupted = CancellationToken::new();
    tokio::spawn({
        let interrupted = interrupted.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.cancel();
            }
        }
    });
    let mut pending = Vec::with_capacity(sources.len());
    let mut names = std::collections::HashMap::new();
    let mut sizes = std::collections::HashMap::new();
    // Publishes go in batches, pipelined: up to PUBLISH_WINDOW batches await their confirms at
    // once, instead of a round trip (or an embedded commit) per file. Each is still confirmed
    // (durable) before this command ends.
    let mut confirming = FuturesUnordered::new();
    for batch in sources.chunks(PUBLISH_BATCH) {
        if interrupted.is_cancelled() {
            break;
        }
        let mut bodies = Vec::with_capacity(batch.len());
        for source in batch {
            let upload = source.upload(&collection, &policy)?;
            bodies.push(messages::encode(&upload));
            names.insert(upload.upload_id.clone(), source.to_string());
            sizes.insert(upload.upload_id.clone(), source.size());
            pending.push(upload.upload_id);
        }
        let uploads = &queue.uploads;
        let (first, n) = (&batch[0], batch.len());
        confirming.push(async move {
            uploads.publish_all(&bodies).await.with_context(|| format!("publishing {n} upload(s) from {first} on"))
        });
        while confirming.len() >= PUBLISH_WINDOW {
            confirming.next().await.transpose()?;
        }
    }
    while let Some(confirmed) = confirming.next().await {
        confirmed?;
    }
    drop(confirming);
    let Some(events) = events.as_mut() else {
        println!("published {} upload(s) to collection `{collection}`", pending.len());
        return Ok(interrupted_or(&interrupted, pending.len(), sources.len(), ExitCode::SUCCESS));
    };
    let progress = Progress::new(pending.len() as u64, sizes.values().sum());
    let on_outcome = |outcome: &Outcome| progress.inc(sizes.get(outcome.upload_id()).copied().unwrap_or(0));
    let outcomes = tokio::select! {
        outcomes = client::wait_for_outcomes(events, &pending, Duration::from_secs(args.timeout), on_outcome) => outcomes,
        () = interrupted.cancelled() => std::collections::HashMap::new(),
    };
    progress.finish();
    let elapsed = started.elapsed();
    if let Some((shutdown, running)) = worker {
        // Drain and write the index snapshots, so the next `ragpipe query` starts from them.
        shutdown.cancel();
        running.await.context("the pipeline task")?.context("running the pipeline")?;
    }
    let code = summarise(&pending, &outcomes, &names, elapsed);
    Ok(interrupted_or(&interrupted, pending.len(), sources.len(), code))
}

/// What one upload is made from: a file, a manifest entry, or a failed document's stored bytes.
enum Source {
    File(PathBuf),
    Entry { manifest: PathBuf, line: usize, entry: client::ManifestEntry },
    Failed(store::FailedDocument),
}

impl Source {
    /// Bytes of the file behind it, when local (0 for a URI the worker fetches).
    fn size(&self) -> u64 {
        let path = match self {
            Source::File(path) => path.clone(),
            Source::Entry { manifest, entry, .. } => match &entry.path {
                Some(path) => manifest.parent().unwrap_or(std::path::Path::new(".")).join(path),
                None => return 0,
            },
            Source::Failed(doc) => match &doc.content {
                Some(bytes) => return bytes.len() as u64,
                None => PathBuf::from(&doc.storage_path),
            },
        };
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn upload(&self, collection: &CollectionName, policy: &FetchPolicy) -> anyhow::Result<messages::UploadMessage> {
        Ok(match self {
            Source::File(path) => client::upload_for_file(path, collection, policy)?,
            Source::Entry { manifest, entry, .. } => {
                let base = manifest.parent().unwrap_or(std::path::Path::new("."));
                entry.to_upload(base, collection, policy).with_context(|| self.to_string())?
            }
            Source::Failed(doc) => {
                let own = CollectionName::new(doc.collection.as_str())?;
                let mut upload = match &doc.content {
                    // Kept in the store: sent inline, from anywhere.
                    Some(bytes) => client::upload_for_bytes(&doc.filename, bytes, &own),
                    None => {
                        let path = std::path::Path::new(&doc.storage_path);
                        client::upload_for_file(path, &own, policy).with_context(|| {
                            format!("reading the stored bytes of {self} (run this where the worker's blob store is)")
                        })?
                    }
                };
                upload.filename.clone_from(&doc.filename);
                upload.content_type.clone_from(&doc.content_type);
                if let serde_json::Value::Object(metadata) = &doc.metadata {
                    upload.metadata = metadata.clone().into_iter().collect();
                }
                upload
            }
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Entry { manifest, line, entry } => {
                let what = entry
                    .path
                    .as_ref()
                    .map_or_else(|| entry.uri.clone().unwrap_or_default(), |p| p.display().to_string());
                write!(f, "{what} ({}:{line})", manifest.display())
            }
            Source::Failed(doc) => write!(f, "{} (document {} in {})", doc.filename, doc.document_id, doc.collection),
        }
    }
}

/// The manifest's entries; a malformed line stops the run before anything is published.
fn read_manifest(path: &std::path::Path) -> anyhow::Result<Vec<Source>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the manifest {}", path.display()))?;
    let mut sources = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = client::ManifestEntry::parse(line)
            .map_err(|reason| anyhow::anyhow!("{}:{}: {reason}", path.display(), i + 1))?;
        if let Some(entry) = entry {
            sources.push(Source::Entry { manifest: path.to_path_buf(), line: i + 1, entry });
        }
    }
    Ok(sources)
}

/// After Ctrl-C: says how far the run got and exits 130; otherwise `code`.
fn interrupted_or(interrupted: &CancellationToken, published: usize, total: usize, code: ExitCode) -> ExitCode {
    if !interrupted.is_cancelled() {
        return code;
    }
    eprintln!(
        "interrupted: {published} of {total} upload(s) published; the published ones are ingested by the \
         worker (run again to send the rest: ingested files count as duplicates)"
    );
    ExitCode::from(130)
}

/// A progress bar on a terminal (documents/s, MB/s, ETA); a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    total_bytes: u64,
    /// Documents and bytes settled so far.
    done: std::sync::Mutex<(u64, u64)>,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new(total: u64, total_bytes: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} documents ({per_sec}, {msg}, eta {eta})")
            {
                bar.set_style(style);
            }
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            total_bytes,
            done: std::sync::Mutex::new((0, 0)),
            started: now,
            last_line: std::sync::Mutex::new(now),
        }
    }

    /// One more document settled, of `bytes`.
    fn inc(&self, bytes: u64) {
        let (documents, done_bytes) = {
            let mut done = self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *done = (done.0 + 1, done.1 + bytes);
            *done
        };
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = format!("{:.1} MB/s", done_bytes as f64 / secs / 1e6);
        match &self.bar {
            Some(bar) => {
                bar.set_message(rate);
                bar.inc(1);
            }
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.elapsed() >= Duration::from_secs(5) {
                    let per_second = documents as f64 / secs;
                    let eta = self.total.saturating_sub(documents) as f64 / per_second.max(1e-9);
                    eprintln!(
                        "{documents}/{} documents, {:.1}/{:.1} MB ({per_second:.1} documents/s, {rate}), eta {eta:.0} s",
                        self.total,
                        done_bytes as f64 / 1e6,
                        self.total_bytes as f64 / 1e6
                    );
                    *last = Instant::now();
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn summarise(
    pending: &[String],
    outcomes: &std::collections::HashMap<String, Outcome>,
    names: &std::collections::HashMap<String, String>,
    elapsed: Duration,
) -> ExitCode {
    let (mut ingested, mut duplicate, mut no_text, mut chunks) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for id in pending {
        let name = names.get(id).map(String::as_str).unwrap_or(id);
        match outcomes.get(id) {
            Some(Outcome::Ingested(e)) if e.duplicate => duplicate += 1,
            Some(Outcome::Ingested(e)) if e.status == DocumentStatus::NoText => {
                no_text += 1;
                problems.push(format!("  no text  {name}"));
            }
            Some(Outcome::Ingested(e)) => {
                ingested += 1;
                chunks += e.chunks;
            }
            Some(Outcome::Failed(e)) => problems.push(format!("  failed   {name}: {}: {}", e.code, e.reason)),
            None => problems.push(format!("  no outcome yet  {name} (still queued or in progress)")),
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let failed = pending.len() - ingested - duplicate - no_text;
    println!(
        "{ingested} ingested ({chunks} chunks), {duplicate} duplicate, {no_text} without text, {failed} failed or pending — {} documents in {secs:.2} s ({:.1} documents/s)",
        pending.len(),
        pending.len() as f64 / secs
    );
    for line in &problems {
        println!("{line}");
    }
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
