//! `ragpipe reindex [--collection C] [--re-embed]`: rebuild collections' indexes now, from their
//! stored vectors (no embedding call), exactly as the nightly rebuild does, and wait for it.
//! Running workers adopt the new generation when `index.rebuilt` arrives. With `--re-embed`,
//! first embed every chunk again with the configured (new) model and switch the collection to
//! it once all are done (see [`crate::reembed`]).

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::messages::CollectionName;
use crate::scheduler;

/// Arguments of `ragpipe reindex`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this collection (default: every collection).
    #[arg(long, short)]
    pub collection: Option<String>,
    /// First re-embed every chunk from its stored text with `[embedder]`'s model (after a model
    /// change; through the embedding cache), switching the collection to it only when every
    /// chunk has its new vector.
    #[arg(long)]
    pub re_embed: bool,
}

/// Rebuilds and prints one line per collection; fails if any rebuild failed or was rejected.
///
/// # Errors
/// The store, queue or snapshot directory is unusable.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let collection = args.collection.as_deref().map(CollectionName::new).transpose()?;
    let program = std::env::current_exe().context("locating the ragpipe binary")?;
    let services = crate::worker::connect(settings, program).await.context("connecting")?;
    let collections =
        scheduler::select_collections(services.store.as_ref(), collection.as_ref().map(CollectionName::as_str))
            .await
            .map_err(anyhow::Error::msg)?;
    if args.re_embed {
        for collection in &collections {
            let done = crate::reembed::reembed(services.store.as_ref(), &services.embedding, collection)
                .await
                .with_context(|| format!("re-embedding `{}`", collection.name))?;
            let model = services.embedding.embedder().model_id();
            if done.unchanged {
                println!("{}: already on {model}; nothing to re-embed", collection.name);
            } else {
                println!(
                    "{}: {} chunks re-embedded; switched from {} to {model}",
                    collection.name,
                    done.embedded,
                    done.from.as_deref().unwrap_or("(no model)")
                );
            }
        }
    }
    let reports =
        scheduler::rebuild_collections(services.indexes.as_ref(), services.queue.events.as_ref(), &collections).await;
    let mut failed = false;
    for (name, result) in reports {
        match result {
            Ok(report) => {
                let v = &report.verification;
                let recall = v.recall.map_or_else(|| "exact".to_owned(), |r| format!("recall@10 {r:.3}"));
                let t = &report.timings;
                let outcome = match &v.failure {
                    None => format!("generation {} in service", report.generation),
                    Some(failure) => {
                        failed = true;
                        format!("REJECTED, previous generation kept: {failure}")
                    }
                };
                println!(
                    "{name}: {} vectors, {}, {recall}; {outcome} \
                     (fetch {:.1}s, train {:.1}s, add {:.1}s, replay {:.1}s, tune {:.1}s, write {:.1}s)",
                    v.vectors,
                    report.kind.describe(),
                    t.fetch,
                    t.train,
                    t.add,
                    t.replay,
                    t.tune,
                    report.write_secs
                );
            }
            Err(error) => {
                failed = true;
                println!("{name}: rebuild failed: {error}");
            }
        }
    }
    if collections.is_empty() {
        println!("no collections yet");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
