//! `ragpipe worker`: run the ingest, query and scheduler roles (all by default) until Ctrl-C or
//! SIGTERM, then drain in-flight work.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::worker::{self, Role};

/// Arguments of `ragpipe worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Roles to run (repeat or comma-separate); default: all of them in one process.
    #[arg(long = "role", value_enum, value_delimiter = ',')]
    pub roles: Vec<Role>,
}

/// Runs the worker until a shutdown signal.
///
/// # Errors
/// A backend cannot be reached at start, or the ops endpoint cannot bind.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let roles = if args.roles.is_empty() { vec![Role::Ingest, Role::Query, Role::Scheduler] } else { args.roles };
    tracing::info!(?roles, data_dir = %settings.storage.data_dir.display(), "starting worker");
    crate::blas::Kernels::current().log();
    let program = std::env::current_exe().context("locating the ragpipe binary for the extraction sandbox")?;
    let http = settings.http.clone();
    let services = Arc::new(worker::connect(settings, program).await.context("starting the worker")?);
    let b = &services.backends;
    tracing::info!(store = %b.store, queue = %b.queue, cache = %b.cache, "backends connected");
    let shutdown = CancellationToken::new();
    if http.enabled {
        let addr = format!("{}:{}", http.bind, http.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding http endpoint {addr}"))?;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or(addr), "serving /metrics, /health, /ready");
        let readiness = crate::http::Readiness::new(services.clone(), roles.contains(&Role::Query));
        tokio::spawn(crate::http::serve(listener, readiness, shutdown.clone()));
    }
    tokio::spawn(watch_signals(shutdown.clone()));
    let grace = Duration::from_secs(services.settings.ingest.shutdown_grace_secs);
    let running = worker::run(services.clone(), &roles, shutdown.clone());
    tokio::pin!(running);
    tokio::select! {
        result = &mut running => result?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            // Unfinished work stays unacknowledged: closing the connection (RabbitMQ) or the
            // lease running out (embedded) delivers it again, and every stage is idempotent.
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight work did not finish within the grace period; it will be delivered again"
            );
            if let Err(error) = services.indexes.snapshot_all().await {
                tracing::warn!(%error, "could not write the index snapshots; the next start catches up from the store");
            }
        }
    }
    services.queue.close().await;
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// Cancels on the first Ctrl-C or SIGTERM; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    for round in 0..2 {
        let terminated = async {
            match term.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        if round == 0 {
            tracing::info!("shutting down: finishing in-flight work (signal again to exit now)");
            shutdown.cancel();
        } else {
            std::process::exit(130);
        }
    }
}
