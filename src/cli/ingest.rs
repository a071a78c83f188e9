//! `ragpipe ingest <paths…>`: publish one upload per file; with `--wait`, follow their outcomes
//! and print a summary (ingested / duplicate / no text / failed with reasons).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{self, Outcome};
use crate::config::Settings;
use crate::ingest::fetch::FetchPolicy;
use crate::messages;
use crate::queue::Broker;
use crate::queue::amqp::AmqpBroker;

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

/// Publishes the uploads and optionally waits for them.
///
/// # Errors
/// No files, an unreadable file, or a broker failure.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    crate::ingest::validate_collection(&args.collection).map_err(|f| anyhow::anyhow!(f.reason))?;
    let files = client::collect_files(&args.paths)?;
    anyhow::ensure!(!files.is_empty(), "no files found under {:?}", args.paths);
    let policy = FetchPolicy::new(
        &settings.storage.allowed_roots,
        settings.extract.max_file_bytes,
        settings.ingest.max_inline_bytes,
    );
    let broker = AmqpBroker::connect(&settings.broker).await.context("connecting to the broker")?;
    let started = Instant::now();
    // Subscribe before publishing so that no outcome can slip past.
    let mut events = if args.wait { Some(client::subscribe_outcomes(&broker).await?) } else { None };
    let mut pending = Vec::with_capacity(files.len());
    let mut names = std::collections::HashMap::new();
    for file in &files {
        let upload = client::upload_for_file(file, &args.collection, &policy)?;
        broker
            .publish_upload(&messages::encode(&upload))
            .await
            .with_context(|| format!("publishing {}", file.display()))?;
        names.insert(upload.upload_id.clone(), file.display().to_string());
        pending.push(upload.upload_id);
    }
    let Some(events) = events.as_mut() else {
        println!("published {} upload(s) to collection `{}`", pending.len(), args.collection);
        return Ok(ExitCode::SUCCESS);
    };
    let bar = progress_bar(pending.len() as u64);
    let outcomes = client::wait_for_outcomes(events, &pending, Duration::from_secs(args.timeout), |_| {
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let elapsed = started.elapsed();
    Ok(summarise(&pending, &outcomes, &names, elapsed))
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} documents ({elapsed})") {
        bar.set_style(style);
    }
    Some(bar)
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
            Some(Outcome::Ingested(e)) if e.status == "no_text" => {
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
    println!(
        "{ingested} ingested ({chunks} chunks), {duplicate} duplicate, {no_text} without text, {} failed or pending — {} documents in {:.2} s ({:.1} documents/s)",
        pending.len() - ingested - duplicate - no_text,
        pending.len(),
        secs,
        pending.len() as f64 / secs
    );
    for line in &problems {
        println!("{line}");
    }
    let failed = pending.len() - ingested - duplicate - no_text;
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
