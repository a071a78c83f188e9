//! Deletes, from `ragpipe delete` or a delete message on the upload queue: soft-delete in the
//! store (chunks logged for removal from every index, in the same transaction), then announce
//! each document with `document.deleted`.

use crate::messages::{self, DOCUMENT_DELETED, DocumentDeleted, VERSION};
use crate::queue::EventBus;
use crate::store::{Deleted, DocumentRef, Store, StoreError};

/// Deletes the live documents `target` names (in `collection` if given) and publishes
/// `document.deleted` for each. The delete is committed and logged before any event: a lost
/// event only delays replicas until their next catch-up, so publish failures are logged, not
/// returned.
///
/// # Errors
/// The store is unavailable (nothing was deleted).
pub async fn delete_and_announce(
    store: &dyn Store,
    events: &dyn EventBus,
    target: &DocumentRef,
    collection: Option<&str>,
) -> Result<Vec<Deleted>, StoreError> {
    let deleted = store.delete_documents(target, collection).await?;
    for doc in &deleted {
        let event = DocumentDeleted {
            v: VERSION,
            collection: doc.collection.clone(),
            document_id: doc.document_id,
            sha256: doc.sha256.clone(),
            chunks: doc.chunk_ids.len() as i64,
        };
        if let Err(error) = events.publish(DOCUMENT_DELETED, &messages::encode(&event)).await {
            tracing::warn!(document_id = doc.document_id, %error, "could not publish document.deleted; replicas catch up from the log");
        }
    }
    Ok(deleted)
}
