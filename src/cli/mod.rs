//! The command line: one file per subcommand. Each takes its parsed arguments and the loaded
//! settings; errors are `anyhow` here (the edge), with context saying what was being done.

mod chunk;
mod delete;
mod eval;
mod extract;
mod ingest;
mod migrate;
mod query;
mod reindex;
mod status;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Settings;

/// Queue-driven RAG pipeline: ingest documents from RabbitMQ into PostgreSQL + FAISS and answer
/// queries over request/reply.
#[derive(Debug, Parser)]
#[command(name = "ragpipe", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: $RAGPIPE_CONFIG, else ./workers.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations (workers also do this at start unless database.migrate_on_start = false).
    Migrate(migrate::Args),
    /// Run a worker: consume uploads, answer queries, keep index snapshots.
    Worker(worker::Args),
    /// Publish files as uploads (directories are walked), optionally waiting for the outcome.
    Ingest(ingest::Args),
    /// Ask a question over the request/reply queue and print the best passages.
    Query(query::Args),
    /// Delete documents by id, SHA-256 or upload id (soft delete; removed from every index).
    Delete(delete::Args),
    /// Rebuild indexes now from stored vectors (as the nightly rebuild does) and wait for it.
    Reindex(reindex::Args),
    /// Show documents per collection and status, queue depths and index snapshots.
    Status(status::Args),
    /// Retrieval quality on a BEIR-format dataset (nDCG@10, recall, MRR) through the real pipeline.
    Eval(eval::Args),
    /// Debug: print what extraction yields for a file (same sandbox as the worker).
    Extract(extract::Args),
    /// Debug: extract and chunk a file, printing chunks with token counts and offsets.
    Chunk(chunk::Args),
    /// Internal: the extraction sandbox's child process (reads a request on stdin).
    #[command(name = crate::extract::CHILD_SUBCOMMAND, hide = true)]
    ExtractChild,
}

/// Runs the parsed command line.
///
/// # Errors
/// Configuration, connection or command failures, with context.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command {
        Command::Migrate(args) => migrate::run(args, settings).await,
        Command::Worker(args) => worker::run(args, settings).await,
        Command::Ingest(args) => ingest::run(args, settings).await,
        Command::Query(args) => query::run(args, settings).await,
        Command::Delete(args) => delete::run(args, settings).await,
        Command::Reindex(args) => reindex::run(args, settings).await,
        Command::Status(args) => status::run(args, settings).await,
        Command::Eval(args) => eval::run(args, settings).await,
        Command::Extract(args) => extract::run(args, settings).await,
        Command::Chunk(args) => chunk::run(args, settings).await,
        // main() runs the child before any runtime starts; reaching here means a caller skipped that.
        Command::ExtractChild => Ok(crate::extract::child_main()),
    }
}
