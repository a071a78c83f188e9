//! `ragpipe ingest <paths…>`: publish one upload per file; with `--wait`, follow their outcomes
//! and print a summary (ingested / duplicate / no text / failed with reasons).
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
use tokio_util::sync::CancellationToken;

use crate::client::{self, Outcome};
use crate::config::Settings;
use crate::embedded::LazyDatabase;
use crate::fetch::FetchPolicy;
use crate::messages::{self, CollectionName, DocumentStatus};
use crate::queue::{self, QueueKind};
use crate::worker::{self, Role};

/// Arguments of `ragpipe ingest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (walked recursively) to ingest.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Collection to ingest into.
    #[arg(long, short, default_value = "default")]
    pub collection: String,
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
    let collection = CollectionName::new(args.collection.as_str())?;
    let files = client::collect_files(&args.paths)?;
    anyhow::ensure!(!files.is_empty(), "no files found under {:?}", args.paths);
    let policy = FetchPolicy::new(
        &settings.storage.allowed_roots,
        settings.extract.max_file_bytes,
        settings.ingest.max_inline_bytes,
    );
    let embedded = LazyDatabase::new(settings.storage.database_file());
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
    let mut pending = Vec::with_capacity(files.len());
    let mut names = std::collections::HashMap::new();
    for file in &files {
        let upload = client::upload_for_file(file, &collection, &policy)?;
        queue
            .uploads
            .publish(&messages::encode(&upload))
            .await
            .with_context(|| format!("publishing {}", file.display()))?;
        names.insert(upload.upload_id.clone(), file.display().to_string());
        pending.push(upload.upload_id);
    }
    let Some(events) = events.as_mut() else {
        println!("published {} upload(s) to collection `{collection}`", pending.len());
        return Ok(ExitCode::SUCCESS);
    };
    let progress = Progress::new(pending.len() as u64);
    let outcomes =
        client::wait_for_outcomes(events, &pending, Duration::from_secs(args.timeout), |_| progress.inc()).await;
    progress.finish();
    let elapsed = started.elapsed();
    if let Some((shutdown, running)) = worker {
        // Drain and write the index snapshots, so the next `ragpipe query` starts from them.
        shutdown.cancel();
        running.await.context("the pipeline task")?.context("running the pipeline")?;
    }
    Ok(summarise(&pending, &outcomes, &names, elapsed))
}

/// A progress bar on a terminal; a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    last_line: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} documents ({per_sec}, eta {eta})")
            {
                bar.set_style(style);
            }
            bar
        });
        Self { bar, total, done: 0.into(), last_line: std::sync::Mutex::new(Instant::now()) }
    }

    fn inc(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{done}/{} documents", self.total);
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
