//! `ragpipe status`: compute kernels, backends, documents per collection and status, queue
//! depths, and per collection its index (kind, generation, log lag) and last rebuild.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::embedded::LazyDatabase;
use crate::{queue, store};

/// Arguments of `ragpipe status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the status.
///
/// # Errors
/// The store is unreachable.
pub async fn run(_args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let kernels = crate::blas::Kernels::current();
    println!("compute:\n  {}", kernels.describe());
    if let Some(warning) = kernels.warning() {
        println!("  warning: {warning}");
    }
    let embedded = LazyDatabase::new(settings.storage.database_file());
    let connected = store::connect(&settings.database, &embedded).await.context("connecting to the store")?;
    let queue = queue::connect(&settings.broker, &embedded).await;
    let (cache, _) = crate::cache::connect(&settings.cache);
    println!("backends:");
    println!("  store  {}", connected.kind);
    match &queue {
        Ok(queue) => println!("  queue  {}", queue.kind),
        Err(error) => println!("  queue  unreachable: {error}"),
    }
    println!("  cache  {cache}");
    let rows = connected.store.status().await.context("reading document counts")?;
    println!("documents:");
    if rows.is_empty() {
        println!("  (none)");
    }
    for row in rows {
        println!(
            "  {:<24} {:<10} {:>8} documents {:>10} chunks",
            row.collection, row.status, row.documents, row.chunks
        );
    }
    if let Ok(queue) = &queue {
        match queue.uploads.depths().await {
            Ok(d) => {
                println!("queues:\n  uploads waiting {}", d.ingest);
                if let Some(taken) = d.in_progress {
                    println!("  uploads taken   {taken}");
                }
                println!("  dead letters    {}\n  queries waiting {}", d.dead, d.query);
            }
            Err(error) => println!("queues: {error}"),
        }
        match queue.uploads.has_consumers().await {
            Ok(true) => println!("  a worker is consuming uploads"),
            Ok(false) => println!("  no worker is consuming uploads"),
            Err(error) => println!("  consumers: {error}"),
        }
    }
    let index_dir = settings.index_dir();
    println!("indexes (snapshots in {}):", index_dir.display());
    let collections = connected.store.collections().await.context("listing collections")?;
    if collections.is_empty() {
        println!("  (none)");
    }
    for collection in collections {
        print_index(connected.store.as_ref(), &index_dir, &collection).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// One collection's index: its snapshot (kind, generation, log position and lag behind the
/// store) and its last rebuild with the verification result.
async fn print_index(store: &dyn store::Store, index_dir: &std::path::Path, collection: &store::Collection) {
    let manifest =
        std::fs::read(crate::index::snapshot::collection_dir(index_dir, &collection.name).join("manifest.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<crate::index::snapshot::Manifest>(&bytes).ok());
    let snapshot = match manifest {
        None => "no snapshot (built from the store when first opened)".to_owned(),
        Some(m) if m.collection_id != collection.id => {
            "snapshot from another store or collection (will be rebuilt)".to_owned()
        }
        Some(m) => {
            let lag = match store.last_log_seq(collection.id).await {
                Ok(last) => format!("{} entries behind", (last - m.log_seq).max(0)),
                Err(error) => format!("lag unknown: {error}"),
            };
            format!(
                "{} vectors, {}, generation {}, log seq {} ({lag}), {}d {}",
                m.count,
                m.index.describe(),
                m.generation,
                m.log_seq,
                m.dimensions,
                m.model
            )
        }
    };
    println!("  {:<24} {snapshot}", collection.name);
    match store.last_generation(collection.id).await {
        Ok(Some(g)) => {
            let when = g.finished_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default();
            let recall = g.recall.map_or_else(|| "exact".to_owned(), |r| format!("recall@10 {r:.3}"));
            let outcome = if g.ok {
                "passed".to_owned()
            } else {
                format!("FAILED ({}), previous generation kept", g.reason.unwrap_or_default())
            };
            println!(
                "  {:<24} last rebuild {when}: generation {}, {} of {} vectors, {}, {recall}: {outcome}",
                "", g.generation, g.vectors, g.expected, g.kind
            );
        }
        Ok(None) => println!("  {:<24} never rebuilt", ""),
        Err(error) => println!("  {:<24} last rebuild unknown: {error}", ""),
    }
}
