//! `ragpipe reindex --re-embed`: after a model change, embeds every live chunk of a collection
//! again from its stored text (through the embedding cache, batching, retries and rate governor
//! of [`EmbeddingService`]), staging the new vectors beside the old ones; only when every chunk
//! has its new vector does one store transaction switch the collection to the new model. Until
//! then queries keep using the old vectors; an interrupted run resumes where it stopped.

use crate::embed::service::EmbeddingService;
use crate::store::{Collection, Store, StoreError};

/// Chunks embedded per round trip (the service batches them further by `[embedder]` limits).
const PAGE: i64 = 256;
/// Rounds of "embed what is missing, then try to switch" before giving up: chunks that keep
/// arriving meanwhile come from workers still running with the old model.
const SWITCH_ATTEMPTS: usize = 5;

/// A re-embedding failure; staged vectors are kept, so running it again resumes.
#[derive(Debug, thiserror::Error)]
pub enum ReembedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedding provider failed (after its retries).
    #[error("embedding chunk {chunk_id} failed: {reason}; staged vectors are kept, run it again to resume")]
    Embed {
        /// The chunk.
        chunk_id: i64,
        /// Why.
        reason: String,
    },
    /// Chunks of the old model kept arriving.
    #[error(
        "{missing} chunks still lack a vector of the new model after {SWITCH_ATTEMPTS} rounds: stop the \
         workers that still ingest with the old model, then run it again"
    )]
    StillArriving {
        /// Chunks without a new vector at the last attempt.
        missing: i64,
    },
}

/// What a re-embedding did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reembedded {
    /// Chunks embedded by this run (a resumed run skips those staged before).
    pub embedded: usize,
    /// The model the collection had (`None`: it had no vectors).
    pub from: Option<String>,
    /// Whether the collection already used this model (nothing was done).
    pub unchanged: bool,
}

/// Re-embeds the collection's live chunks with `embedding`'s model and switches the collection
/// to it (see the module documentation).
///
/// # Errors
/// See [`ReembedError`]; the collection keeps its old model and vectors.
pub async fn reembed(
    store: &dyn Store,
    embedding: &EmbeddingService,
    collection: &Collection,
) -> Result<Reembedded, ReembedError> {
    let model = embedding.embedder().model_id().to_owned();
    let dimensions = embedding.embedder().dimensions();
    let from = store.collection_model(collection.id).await?;
    if from.as_ref().is_some_and(|(m, d)| *m == model && *d == dimensions as i64) {
        return Ok(Reembedded { embedded: 0, from: Some(model), unchanged: true });
    }
    let mut embedded = 0;
    let mut missing = 0;
    for _ in 0..SWITCH_ATTEMPTS {
        let mut after = 0;
        loop {
            let page = store.chunks_to_reembed(collection.id, &model, after, PAGE).await?;
            let Some(&(last, _)) = page.last() else { break };
            after = last;
            let texts: Vec<String> = page.iter().map(|(_, text)| text.clone()).collect();
            let results = embedding.embed(&texts).await;
            let mut staged = Vec::with_capacity(page.len());
            let mut failed = None;
            for ((chunk_id, _), result) in page.iter().zip(results) {
                match result {
                    Ok(vector) => staged.push((*chunk_id, vector)),
                    Err(e) => {
                        failed.get_or_insert(ReembedError::Embed { chunk_id: *chunk_id, reason: e.to_string() });
                    }
                }
            }
            // What succeeded is kept even when part of the page failed: a rerun embeds only the rest.
            if !staged.is_empty() {
                store.stage_embeddings(&model, &staged).await?;
            }
            embedded += staged.len();
            if let Some(error) = failed {
                return Err(error);
            }
            tracing::info!(collection = %collection.name, embedded, "re-embedding");
        }
        missing = store.switch_model(collection.id, &model, dimensions).await?;
        if missing == 0 {
            return Ok(Reembedded { embedded, from: from.map(|(m, _)| m), unchanged: false });
        }
    }
    Err(ReembedError::StillArriving { missing })
}
