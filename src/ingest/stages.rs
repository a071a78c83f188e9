//! The per-document stages: dedup, extract, chunk, persist + index. Each takes a job, does one
//! thing, and either forwards it, finishes it, or fails it with a classified [`Failure`].

use std::sync::Arc;

use super::finish::Finisher;
use super::{Doc, Failed, Job, Work};
use crate::app::{FaultPoint, IngestContext};
use crate::blobs::sha256_hex;
use crate::chunk::{Chunk, ChunkInput};
use crate::error::Failure;
use crate::extract::{ExtractError, Extracted, OwnedHints};
use crate::store::{Claim, DocumentStatus, NewChunk, NewDocument};
use crate::telemetry::metrics;

/// Chunks with their vectors, ready to persist.
pub(crate) struct Embedded {
    pub chunks: Vec<Chunk>,
    pub vectors: Vec<Vec<f32>>,
}

fn failed(job: Job, doc: Option<Doc>, failure: impl Into<Failure>) -> Failed {
    Failed { job, doc, failure: failure.into() }
}

/// Fetches the bytes, stores them by hash, and claims the document row.
pub(crate) async fn dedup(s: &Arc<IngestContext>, f: &Finisher, job: Job) -> Result<Option<Work<Arc<[u8]>>>, Failed> {
    let timer = metrics::stage("dedup");
    let (upload, policy, blobs) = (job.upload.clone(), s.fetch_policy.clone(), s.blobs.clone());
    let fetched = tokio::task::spawn_blocking(move || {
        let bytes = crate::fetch::fetch(&upload, &policy)?;
        let sha256 = sha256_hex(&bytes);
        let path = blobs
            .put(&sha256, &bytes)
            .map_err(|e| Failure::transient("storage", format!("cannot store the original bytes: {e}")))?;
        Ok::<_, Failure>((bytes, sha256, path))
    })
    .await;
    let (bytes, sha256, path) = match fetched {
        Ok(Ok(found)) => found,
        Ok(Err(failure)) => return Err(failed(job, None, failure)),
        Err(e) => return Err(failed(job, None, Failure::transient("internal", format!("fetch task: {e}")))),
    };
    let collection = match s.store.ensure_collection(job.upload.collection.as_str()).await {
        Ok(c) => c,
        Err(e) => return Err(failed(job, None, e)),
    };
    let new = NewDocument {
        collection_id: collection.id,
        sha256: sha256.clone(),
        upload_id: job.upload.upload_id.clone(),
        filename: job.upload.filename.clone(),
        content_type: job.upload.content_type.clone(),
        size_bytes: bytes.len() as i64,
        storage_path: path.to_string_lossy().into_owned(),
        metadata: serde_json::to_value(&job.upload.metadata).unwrap_or_default(),
    };
    let claim = match s.store.claim_document(&new).await {
        Ok(claim) => claim,
        Err(e) => return Err(failed(job, None, e)),
    };
    drop(timer);
    match claim {
        Claim::Process { document_id } => {
            let doc = Doc { collection, document_id, sha256, garbled_pages: 0 };
            Ok(Some(Work { job, doc, data: Arc::from(bytes) }))
        }
        Claim::Duplicate { document_id, chunks, status } => {
            let doc = Doc { collection, document_id, sha256, garbled_pages: 0 };
            f.succeed(job, &doc, chunks, true, status).await;
            Ok(None)
        }
        Claim::AlreadyDone { document_id, chunks, status } => {
            // A redelivery after a crash between commit and ack: make sure the vectors are indexed.
            let doc = Doc { collection, document_id, sha256, garbled_pages: 0 };
            if status == DocumentStatus::Ingested
                && let Err(failure) = reindex_document(s, &doc).await
            {
                return Err(failed(job, Some(doc), failure));
            }
            f.succeed(job, &doc, chunks, false, status).await;
            Ok(None)
        }
    }
}

async fn reindex_document(s: &IngestContext, doc: &Doc) -> Result<(), Failure> {
    let stored = s.store.document_vectors(doc.document_id, s.embedding.embedder().dimensions()).await?;
    s.indexes.add(&doc.collection, stored.ids, stored.vectors).await?;
    Ok(())
}

/// Extracts text in the sandbox. A file with no text ends as `no_text`, not as a failure.
pub(crate) async fn extract(
    s: &Arc<IngestContext>,
    f: &Finisher,
    w: Work<Arc<[u8]>>,
) -> Result<Option<Work<Extracted>>, Failed> {
    let timer = metrics::stage("extract");
    let hints = OwnedHints {
        filename: Some(w.job.upload.filename.clone()),
        content_type: w.job.upload.content_type.clone(),
        password: w.job.upload.metadata.get("password").and_then(|v| v.as_str()).map(str::to_owned),
    };
    let result = s.sandbox.extract(w.data, hints).await;
    drop(timer);
    match result {
        Ok(mut extracted) => {
            // PostgreSQL text cannot hold NUL; U+FFFD keeps character offsets unchanged.
            if extracted.text.contains('\0') {
                extracted.text = extracted.text.replace('\0', "\u{fffd}");
            }
            let mut doc = w.doc;
            doc.garbled_pages = u32::try_from(extracted.garbled_pages.len()).unwrap_or(u32::MAX);
            if doc.garbled_pages > 0 {
                tracing::warn!(
                    upload_id = %w.job.upload.upload_id,
                    document_id = doc.document_id,
                    pages = ?extracted.garbled_pages,
                    "garbled pages left out (fonts without a Unicode mapping)"
                );
            }
            Ok(Some(Work { job: w.job, doc, data: extracted }))
        }
        Err(error @ (ExtractError::NoText | ExtractError::Garbled { .. })) => {
            let mut doc = w.doc;
            if let ExtractError::Garbled { pages } = error {
                doc.garbled_pages = pages;
            }
            finish_no_text(s, f, w.job, doc, &error.to_string()).await;
            Ok(None)
        }
        Err(error) => {
            let failure = extract_failure(&error);
            Err(failed(w.job, Some(w.doc), failure))
        }
    }
}

fn extract_failure(error: &ExtractError) -> Failure {
    if error.is_transient() {
        Failure::transient(error.code(), error.to_string())
    } else {
        Failure::permanent(error.code(), error.to_string())
    }
}

async fn finish_no_text(s: &IngestContext, f: &Finisher, job: Job, doc: Doc, reason: &str) {
    match s.store.mark_no_text(doc.document_id, reason).await {
        Ok(()) => f.succeed(job, &doc, 0, false, DocumentStatus::NoText).await,
        Err(e) => f.fail(failed(job, Some(doc), e)).await,
    }
}

/// Splits the text into chunks (CPU work, on the blocking pool).
pub(crate) async fn chunk(
    s: &Arc<IngestContext>,
    f: &Finisher,
    w: Work<Extracted>,
) -> Result<Option<Work<Vec<Chunk>>>, Failed> {
    let timer = metrics::stage("chunk");
    let chunker = s.chunker.clone();
    let extracted = w.data;
    let chunks = tokio::task::spawn_blocking(move || {
        let pages = extracted.page_ranges();
        let markdown = matches!(extracted.kind, crate::extract::DocKind::Markdown);
        chunker.chunk(&ChunkInput { text: &extracted.text, markdown, pages: &pages })
    })
    .await;
    drop(timer);
    match chunks {
        Ok(chunks) if chunks.is_empty() => {
            finish_no_text(s, f, w.job, w.doc, "no_text: the extracted text is empty or only whitespace").await;
            Ok(None)
        }
        Ok(chunks) => Ok(Some(Work { job: w.job, doc: w.doc, data: chunks })),
        Err(e) => Err(failed(w.job, Some(w.doc), Failure::permanent("chunker_crashed", e.to_string()))),
    }
}

/// Writes the document's chunks in one transaction, adds the vectors to the index, then
/// publishes `document.ingested` and acks.
pub(crate) async fn persist(s: &Arc<IngestContext>, f: &Finisher, w: Work<Embedded>) -> Result<Option<()>, Failed> {
    let timer = metrics::stage("persist");
    let rows: Vec<NewChunk> = w
        .data
        .chunks
        .into_iter()
        .zip(w.data.vectors)
        .enumerate()
        .map(|(i, (c, embedding))| NewChunk {
            ordinal: i as i32,
            token_count: c.token_count as i32,
            char_start: c.char_start as i32,
            char_end: c.char_end as i32,
            page_start: c.page_start.map(|p| p as i32),
            page_end: c.page_end.map(|p| p as i32),
            heading_path: c.heading_path,
            text: c.text,
            embedding,
        })
        .collect();
    let tokens: u64 = rows.iter().map(|r| u64::try_from(r.token_count).unwrap_or(0)).sum();
    let embedder = s.embedding.embedder();
    let persisted =
        match s.store.persist_chunks(w.doc.document_id, embedder.model_id(), embedder.dimensions(), &rows).await {
            Ok(p) => p,
            Err(e) => return Err(failed(w.job, Some(w.doc), e)),
        };
    drop(timer);
    if s.crash_at(FaultPoint::AfterPersist) {
        return Ok(None);
    }
    let timer = metrics::stage("index");
    let count = persisted.stored.ids.len() as i64;
    if let Err(e) = s.indexes.add(&w.doc.collection, persisted.stored.ids, persisted.stored.vectors).await {
        return Err(failed(w.job, Some(w.doc), e));
    }
    drop(timer);
    if s.crash_at(FaultPoint::AfterIndex) {
        return Ok(None);
    }
    if persisted.inserted {
        metrics::CHUNKS.inc_by(count as u64);
        metrics::CHUNK_TOKENS.inc_by(tokens);
    }
    f.succeed(w.job, &w.doc, count, !persisted.inserted, DocumentStatus::Ingested).await;
    Ok(None)
}
