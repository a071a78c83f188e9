//! The `ragpipe` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use ragpipe::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The extraction sandbox's child caps its own address space at start, so it must run before
    // any runtime, thread pool or logger exists (they would inflate the baseline).
    if matches!(cli.command, Command::ExtractChild) {
        return ragpipe::extract::child_main();
    }
    // Before any thread exists: may re-execute the program with a better OpenBLAS kernel.
    ragpipe::blas::ensure_best_kernel();
    ragpipe::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ragpipe::cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
