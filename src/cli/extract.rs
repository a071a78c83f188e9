//! `ragpipe extract <file>`: what extraction yields for a file (text, pages, detected type, or the
//! failure and its reason), through the same sandboxed child process as the worker.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::extract::{Sandbox, debug_report};

/// Arguments of `ragpipe extract`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to extract.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Extracts one file and prints the report.
///
/// # Errors
/// The file cannot be read or the sandbox cannot start.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::current_exe(settings.extract).context("locating the ragpipe binary")?;
    print!("{}", debug_report(&sandbox, &args.file, args.json).await?);
    Ok(ExitCode::SUCCESS)
}
