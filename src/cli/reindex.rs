//! `ragpipe reindex [--collection C]`: rebuild collections' indexes now, from their stored
//! vectors (no embedding call), exactly as the nightly rebuild does, and wait for it. Running
//! workers adopt the new generation when `index.rebuilt` arrives.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::messages::CollectionName;
use crate::scheduler;

/// Arguments of `ragpipe reindex`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this collection (default: every collection).
    #[arg(long, short)]
    pub collection: Option<String>,
}

/// Rebuilds and prints one line per collection; fails if any rebuild failed or was rejected.
///
/// # Errors
/// The store, queue or snapshot directory is unusable.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let collection = args.collection.as_deref().map(CollectionName::new).transpose()?;
    let program = std::env::current_exe().context("locating the ragpipe binary")?;
    let services = crate::worker::connect(settings, program).await.context("connecting")?;
    let collections =
        scheduler::select_collections(services.store.as_ref(), collection.as_ref().map(CollectionName::as_str))
            .await
            .map_err(anyhow::Error::msg)?;
    let reports =
        scheduler::rebuild_collections(services.indexes.as_ref(), services.queue.events.as_ref(), &collections).await;
    let mut failed = false;
    for (name, result) in reports {
        match result {
            Ok(report) => {
                let v = &report.verification;
                let recall = v.recall.map_or_else(|| "exact".to_owned(), |r| format!("recall@10 {r:.3}"));
                let t = &report.timings;
                let outcome = match &v.failure {
                    None => format!("generation {} in service", report.generation),
                    Some(failure) => {
                        failed = true;
                        format!("REJECTED, previous generation kept: {failure}")
                    }
                };
                println!(
                    "{name}: {} vectors, {}, {recall}; {outcome} \
                     (fetch {:.1}s, train {:.1}s, add {:.1}s, replay {:.1}s, tune {:.1}s, write {:.1}s)",
                    v.vectors,
                    report.kind.describe(),
                    t.fetch,
                    t.train,
                    t.add,
                    t.replay,
                    t.tune,
                    report.write_secs
                );
            }
            Err(error) => {
                failed = true;
                println!("{name}: rebuild failed: {error}");
            }
        }
    }
    if collections.is_empty() {
        println!("no collections yet");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
