//! `ragpipe migrate`: apply the embedded PostgreSQL migrations.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::store::postgres::PgStore;

/// Arguments of `ragpipe migrate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Applies pending migrations.
///
/// # Errors
/// The database is unreachable or a migration fails.
pub async fn run(_args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    PgStore::create_database_if_missing(&settings.database).await.context("creating the database")?;
    let store = PgStore::connect(&settings.database).await.context("connecting to the database")?;
    store.migrate().await.context("applying migrations")?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
