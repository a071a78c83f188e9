//! The `scheduler` role: rebuilds every collection's vector index from its stored vectors on
//! `[index] rebuild_cron` (default 03:00 UTC), and `ragpipe reindex` runs the same now.
//!
//! Leader election is per trigger: every scheduler process computes the same trigger time from
//! the cron expression and claims `(job, trigger time)` in the store ([`Store::claim_run`]); the
//! primary key lets exactly one claim succeed, however many schedulers run, on PostgreSQL or
//! the embedded SQLite file. A claim whose holder died before finishing is taken over after
//! `rebuild_lease_secs`, so a crash costs one lease, not a night.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::SchedulerContext;
use crate::index::{IndexError, Indexes, RebuildReport};
use crate::messages::{INDEX_REBUILT, IndexRebuilt, VERSION};
use crate::queue::EventBus;
use crate::store::{Collection, Store};

/// The job name rebuild runs are claimed under.
pub const REBUILD_JOB: &str = "index.rebuild";

/// Runs the rebuild schedule until `shutdown`.
pub async fn run(ctx: Arc<SchedulerContext>, shutdown: CancellationToken) {
    let cron = match ctx.settings.rebuild_schedule() {
        Ok(Some(cron)) => cron,
        Ok(None) => {
            tracing::info!("index.rebuild_cron is empty: no scheduled rebuilds");
            return;
        }
        Err(error) => {
            // Settings are validated at start; this is unreachable in practice.
            tracing::error!(%error, "no scheduled rebuilds");
            return;
        }
    };
    tracing::info!(cron = %ctx.settings.rebuild_cron, "index rebuilds scheduled (UTC)");
    loop {
        let now = Utc::now();
        let next = match cron.find_next_occurrence(&now, false) {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "the rebuild schedule has no next occurrence");
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match run_trigger(&ctx, next).await {
            Ok(Some(reports)) => tracing::info!(trigger = %next, collections = reports.len(), "scheduled rebuild done"),
            Ok(None) => tracing::info!(trigger = %next, "another scheduler leads this rebuild"),
            Err(error) => tracing::error!(trigger = %next, %error, "scheduled rebuild failed"),
        }
    }
}

/// Runs the rebuild for the trigger at `scheduled_for` if this scheduler wins its claim:
/// `Ok(None)` when another one did.
///
/// # Errors
/// The store is unreachable for the claim. Failures of single collections are logged and in
/// their reports; they do not stop the others.
pub async fn run_trigger(
    ctx: &SchedulerContext,
    scheduled_for: DateTime<Utc>,
) -> Result<Option<Vec<(String, Result<RebuildReport, IndexError>)>>, IndexError> {
    let lease = Duration::from_secs(ctx.settings.rebuild_lease_secs);
    if !ctx.store.claim_run(REBUILD_JOB, scheduled_for, &ctx.holder, lease).await? {
        return Ok(None);
    }
    let collections = ctx.store.collections().await?;
    let reports = rebuild_collections(ctx.indexes.as_ref(), ctx.events.as_ref(), &collections).await;
    ctx.store.finish_run(REBUILD_JOB, scheduled_for).await?;
    Ok(Some(reports))
}

/// Rebuilds each collection in turn, announcing every generation that passed verification.
pub async fn rebuild_collections(
    indexes: &Indexes,
    events: &dyn EventBus,
    collections: &[Collection],
) -> Vec<(String, Result<RebuildReport, IndexError>)> {
    let mut reports = Vec::with_capacity(collections.len());
    for collection in collections {
        let result = indexes.rebuild(collection).await;
        if let Ok(report) = &result
            && report.verification.failure.is_none()
        {
            announce(events, report).await;
        }
        reports.push((collection.name.clone(), result));
    }
    reports
}

/// Publishes `index.rebuilt`. A lost event is not fatal: replicas also adopt recorded generations
/// on their periodic check.
async fn announce(events: &dyn EventBus, report: &RebuildReport) {
    let event = IndexRebuilt {
        v: VERSION,
        collection: report.collection.clone(),
        generation: report.generation,
        vectors: report.verification.vectors,
        kind: report.kind.describe(),
        recall: report.verification.recall,
    };
    let body = serde_json::to_vec(&event).unwrap_or_default();
    if let Err(error) = events.publish(INDEX_REBUILT, &body).await {
        tracing::warn!(collection = %report.collection, %error, "could not publish index.rebuilt; replicas adopt it on their next check");
    }
}

/// The store's collections, or only `name` (an error naming it if it does not exist).
///
/// # Errors
/// The store is unreachable, or the collection does not exist.
pub async fn select_collections(store: &dyn Store, name: Option<&str>) -> Result<Vec<Collection>, String> {
    match name {
        Some(name) => match store.collection(name).await.map_err(|e| e.to_string())? {
            Some(collection) => Ok(vec![collection]),
            None => Err(format!("collection `{name}` does not exist")),
        },
        None => store.collections().await.map_err(|e| e.to_string()),
    }
}
