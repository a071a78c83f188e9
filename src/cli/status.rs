//! `ragpipe status`: documents per collection and status, queue depths, index snapshots.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::queue::Broker;
use crate::queue::amqp::AmqpBroker;
use crate::store::Store;
use crate::store::postgres::PgStore;

/// Arguments of `ragpipe status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the status.
///
/// # Errors
/// The database or broker is unreachable.
pub async fn run(_args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let kernels = crate::blas::Kernels::current();
    println!("compute:\n  {}", kernels.describe());
    if let Some(warning) = kernels.warning() {
        println!("  warning: {warning}");
    }
    let store = PgStore::connect(&settings.database).await.context("connecting to the database")?;
    let rows = store.status().await.context("reading document counts")?;
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
    match AmqpBroker::connect(&settings.broker).await {
        Ok(broker) => match broker.depths().await {
            Ok(d) => println!(
                "queues:\n  uploads waiting {}\n  dead letters    {}\n  queries waiting {}",
                d.ingest, d.dead, d.query
            ),
            Err(error) => println!("queues: {error}"),
        },
        Err(error) => println!("queues: broker unreachable: {error}"),
    }
    println!("index snapshots ({}):", settings.index.dir.display());
    let mut found = false;
    if let Ok(entries) = std::fs::read_dir(&settings.index.dir) {
        for entry in entries.flatten() {
            let manifest = entry.path().join("manifest.json");
            let Ok(bytes) = std::fs::read(&manifest) else { continue };
            if let Ok(m) = serde_json::from_slice::<crate::index::snapshot::Manifest>(&bytes) {
                found = true;
                println!(
                    "  {:<24} generation {} watermark {} vectors {} ({}d, {})",
                    m.collection, m.generation, m.watermark, m.count, m.dimensions, m.model
                );
            }
        }
    }
    if !found {
        println!("  (none)");
    }
    Ok(ExitCode::SUCCESS)
}
