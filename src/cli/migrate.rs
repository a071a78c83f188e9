//! `ragpipe migrate`: create the database if needed and apply the migrations of its backend
//! (`migrations/postgres` or `migrations/sqlite`).

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::embedded::LazyDatabase;

/// Arguments of `ragpipe migrate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Applies pending migrations.
///
/// # Errors
/// The database is unreachable or a migration fails.
pub async fn run(_args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let mut database = settings.database.clone();
    database.migrate_on_start = true;
    let embedded = LazyDatabase::new(settings.storage.database_file());
    let connected = crate::store::connect(&database, &embedded).await.context("migrating the store")?;
    println!("migrations applied: {}", connected.kind);
    Ok(ExitCode::SUCCESS)
}
