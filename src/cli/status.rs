//! `ragpipe status`: compute kernels, backends, documents per collection and status, queue
//! depths, index snapshots.

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
    println!("index snapshots ({}):", index_dir.display());
    let mut found = false;
    if let Ok(entries) = std::fs::read_dir(&index_dir) {
        for entry in entries.flatten() {
            let manifest = entry.path().join("manifest.json");
            let Ok(bytes) = std::fs::read(&manifest) else { continue };
            if let Ok(m) = serde_json::from_slice::<crate::index::snapshot::Manifest>(&bytes) {
                found = true;
                let lag = match connected.store.collection(&m.collection).await {
                    Ok(Some(c)) if c.id == m.collection_id => match connected.store.last_log_seq(c.id).await {
                        Ok(last) => format!("{} log entries behind", (last - m.log_seq).max(0)),
                        Err(error) => format!("lag unknown: {error}"),
                    },
                    Ok(_) => "from another store or collection (will be rebuilt)".to_owned(),
                    Err(error) => format!("lag unknown: {error}"),
                };
                println!(
                    "  {:<24} {} generation {} log seq {} ({lag}) vectors {} ({}d, {})",
                    m.collection,
                    m.index.describe(),
                    m.generation,
                    m.log_seq,
                    m.count,
                    m.dimensions,
                    m.model
                );
            }
        }
    }
    if !found {
        println!("  (none)");
    }
    Ok(ExitCode::SUCCESS)
}
