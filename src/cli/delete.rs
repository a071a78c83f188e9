//! `ragpipe delete <document-id | sha256 | upload-id>`: soft-delete documents, log their chunks
//! for removal from every index, and publish `document.deleted`. From the moment the delete
//! commits, no query returns the document (the store filters deleted chunks; replicas replay
//! the log). Uploading the same bytes again restores it.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::embedded::LazyDatabase;
use crate::messages::CollectionName;
use crate::store::DocumentRef;
use crate::{queue, store};

/// Arguments of `ragpipe delete`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A document id, a SHA-256 (64 hex digits) or an upload id.
    pub target: String,
    /// Only in this collection (a SHA-256 or upload id may name documents in several).
    #[arg(long, short)]
    pub collection: Option<String>,
}

/// Deletes and reports what was deleted.
///
/// # Errors
/// The store or queue is unreachable.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let collection = args.collection.as_deref().map(CollectionName::new).transpose()?;
    let embedded = LazyDatabase::new(settings.storage.database_file());
    let connected = store::connect(&settings.database, &embedded).await.context("connecting to the store")?;
    let queue = queue::connect(&settings.broker, &embedded).await.context("connecting to the queue")?;
    let target = DocumentRef::parse(&args.target);
    let deleted = crate::ingest::delete::delete_and_announce(
        connected.store.as_ref(),
        queue.events.as_ref(),
        &target,
        collection.as_ref().map(CollectionName::as_str),
    )
    .await
    .context("deleting")?;
    if deleted.is_empty() {
        eprintln!("no live document matches `{}`", args.target);
        return Ok(ExitCode::FAILURE);
    }
    for doc in &deleted {
        println!(
            "deleted document {} in `{}` ({} chunks, sha256 {})",
            doc.document_id,
            doc.collection,
            doc.chunk_ids.len(),
            doc.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}
