//! The per-document stages: dedup, extract, chunk, persist + index. Each takes a job, does one
//! thing, and either forwards it, finishes it, or fails it with a classified [`Failure`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::finish::Finisher;
use super::{Doc, Failed, Job, Work};
use crate::app::{FaultPoint, IngestContext};
use crate::blobs::sha256_hex;
use crate::chunk::{Chunk, ChunkInput};
use crate::error::Failure;
use crate::extract::{ExtractError, Extracted, OwnedHints};
use crate::store::{Claim, Collection, DocumentChunks, DocumentStatus, NewChunk, NewDocument, Persisted};
use crate::telemetry::metrics;

/// Chunks with their vectors, ready to persist.
pub(crate) struct Embedded {
    pub chunks: Vec<Chunk>,
    pub vectors: Vec<Vec<f32>>,
}

fn failed(job: Job, doc: Option<Doc>, failure: impl Into<Failure>) -> Failed {
    Failed { job, doc, failure: failure.into() }
}

/// An upload whose bytes are fetched (and stored by hash, unless small enough to go into its
/// document row with the claim), waiting for its document row.
pub(crate) struct Fetched {
    job: Job,
    collection: Collection,
    new: NewDocument,
    bytes: Arc<[u8]>,
    /// Counts the upload in the dedup stage until it is claimed.
    timer: metrics::StageTimer,
}

impl super::HasJob for Fetched {
    fn job(&self) -> &Job {
        &self.job
    }
}

/// Fetches the bytes and stores them by hash, or keeps small ones for the claim to store with
/// the row (the first half of dedup; [`claim`] is the other).
pub(crate) async fn fetch(s: &Arc<IngestContext>, job: Job) -> Result<Option<Fetched>, Failed> {
    let timer = metrics::stage("dedup");
    let (upload, policy, blobs) = (job.upload.clone(), s.fetch_policy.clone(), s.blobs.clone());
    let in_database_max = s.in_database_max_bytes;
    let fetched = tokio::task::spawn_blocking(move || {
        let bytes: Arc<[u8]> = crate::fetch::fetch(&upload, &policy)?.into();
        let sha256 = sha256_hex(&bytes);
        if bytes.len() <= in_database_max {
            return Ok((bytes, sha256, None));
        }
        let path = blobs
            .put(&sha256, &bytes)
            .map_err(|e| Failure::transient("storage", format!("cannot store the original bytes: {e}")))?;
        Ok::<_, Failure>((bytes, sha256, Some(path)))
    })
    .await;
    let (bytes, sha256, path) = match fetched {
        Ok(Ok(found)) => found,
        Ok(Err(failure)) => return Err(failed(job, None, failure)),
        Err(e) => return Err(failed(job, None, Failure::transient("internal", format!("fetch task: {e}")))),
    };
    let collection = match s.collection(job.upload.collection.as_str()).await {
        Ok(c) => c,
        Err(e) => return Err(failed(job, None, e)),
    };
    let new = NewDocument {
        collection_id: collection.id,
        sha256,
        upload_id: job.upload.upload_id.clone(),
        filename: job.upload.filename.clone(),
        content_type: job.upload.content_type.clone(),
        size_bytes: bytes.len() as i64,
        storage_path: path.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        content: path.is_none().then(|| bytes.clone()),
        metadata: serde_json::to_value(&job.upload.metadata).unwrap_or_default(),
    };
    Ok(Some(Fetched { job, collection, new, bytes, timer }))
}

/// Claims the document rows of a batch of fetched uploads in one store call, then sends each
/// new document on to `next` and settles duplicates and redeliveries of finished uploads.
pub(crate) async fn claim(
    s: &Arc<IngestContext>,
    f: &Finisher,
    batch: Vec<Fetched>,
    next: mpsc::Sender<Work<Arc<[u8]>>>,
) {
    let docs: Vec<NewDocument> = batch.iter().map(|b| b.new.clone()).collect();
    let claims = s.store.claim_documents(&docs).await;
    drop(docs);
    let settled = batch.into_iter().zip(claims).map(|(fetched, claim)| {
        let span = fetched.job.stage_span("dedup");
        let next = next.clone();
        async move {
            let Fetched { job, collection, new, bytes, timer } = fetched;
            drop(timer);
            let claim = match claim {
                Ok(claim) => claim,
                Err(e) => return f.fail(failed(job, None, e)).await,
            };
            let (Claim::Process { document_id }
            | Claim::Duplicate { document_id, .. }
            | Claim::AlreadyDone { document_id, .. }) = claim;
            job.span.record("document_id", document_id);
            let doc = Doc { collection, document_id, sha256: new.sha256, garbled_pages: 0 };
            match claim {
                Claim::Process { .. } => {
                    // Fails only when the next stage is gone (shutdown); the unacked message
                    // then goes back to the queue.
                    let _ = next.send(Work { job, doc, data: bytes }).await;
                }
                Claim::Duplicate { chunks, status, .. } => f.succeed(job, &doc, chunks, true, status).await,
                Claim::AlreadyDone { chunks, status, .. } => {
                    // A redelivery after a crash between commit and ack: make sure the vectors
                    // are indexed.
                    if status == DocumentStatus::Ingested
                        && let Err(failure) = reindex_document(s, &doc).await
                    {
                        return f.fail(failed(job, Some(doc), failure)).await;
                    }
                    f.succeed(job, &doc, chunks, false, status).await;
                }
            }
        }
        .instrument(span)
    });
    futures::future::join_all(settled).await;
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

/// Writes a batch of documents' chunks in one transaction, adds their vectors to the index (one
/// add per collection), then publishes `document.ingested` and acks each. A document that fails
/// fails alone; a crash anywhere before an ack leaves that message to be delivered again.
pub(crate) async fn persist(s: &Arc<IngestContext>, f: &Finisher, batch: Vec<Work<Embedded>>) {
    let timers: Vec<_> = batch.iter().map(|_| metrics::stage("persist")).collect();
    let mut works = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    for w in batch {
        let Work { job, doc, data } = w;
        rows.push(new_chunks(data));
        works.push(Work { job, doc, data: () });
    }
    let documents: Vec<DocumentChunks<'_>> =
        works.iter().zip(&rows).map(|(w, chunks)| DocumentChunks { document_id: w.doc.document_id, chunks }).collect();
    let embedder = s.embedding.embedder();
    let results = s.store.persist_documents(embedder.model_id(), embedder.dimensions(), &documents).await;
    drop(documents);
    drop(timers);
    if s.crash_at(FaultPoint::AfterPersist) {
        return;
    }
    // Stored documents by collection, so each collection's index takes one add.
    let mut stored: Vec<(Work<()>, Persisted, u64)> = Vec::with_capacity(works.len());
    for ((w, result), chunks) in works.into_iter().zip(results).zip(&rows) {
        match result {
            Ok(persisted) => {
                let tokens = chunks.iter().map(|r| u64::try_from(r.token_count).unwrap_or(0)).sum();
                stored.push((w, persisted, tokens));
            }
            Err(e) => {
                let span = w.job.stage_span("persist");
                f.fail(failed(w.job, Some(w.doc), e)).instrument(span).await;
            }
        }
    }
    drop(rows);
    let timers: Vec<_> = stored.iter().map(|_| metrics::stage("index")).collect();
    let mut by_collection: BTreeMap<i64, (&Collection, Vec<i64>, Vec<f32>)> = BTreeMap::new();
    for (w, persisted, _) in &stored {
        let (_, ids, vectors) =
            by_collection.entry(w.doc.collection.id).or_insert_with(|| (&w.doc.collection, Vec::new(), Vec::new()));
        ids.extend_from_slice(&persisted.stored.ids);
        vectors.extend_from_slice(&persisted.stored.vectors);
    }
    let mut refused = HashMap::new();
    for (id, (collection, ids, vectors)) in by_collection {
        if let Err(e) = s.indexes.add(collection, ids, vectors).await {
            refused.insert(id, Failure::from(e));
        }
    }
    drop(timers);
    if s.crash_at(FaultPoint::AfterIndex) {
        return;
    }
    // Newly stored documents are settled together (their events in one publish); a document
    // another attempt stored first, or whose index refused it, alone.
    let mut done = Vec::with_capacity(stored.len());
    let mut others = Vec::new();
    for (w, persisted, tokens) in stored {
        let count = persisted.stored.ids.len() as i64;
        if persisted.inserted && !refused.contains_key(&w.doc.collection.id) {
            metrics::CHUNKS.inc_by(count as u64);
            metrics::CHUNK_TOKENS.inc_by(tokens);
            done.push((w.job, w.doc, count));
        } else {
            others.push((w, count));
        }
    }
    let refused = &refused;
    let settled = others.into_iter().map(|(w, count)| {
        let span = w.job.stage_span("persist");
        async move {
            if let Some(failure) = refused.get(&w.doc.collection.id) {
                return f.fail(failed(w.job, Some(w.doc), failure.clone())).await;
            }
            f.succeed(w.job, &w.doc, count, true, DocumentStatus::Ingested).await;
        }
        .instrument(span)
    });
    futures::future::join(f.succeed_all("persist", done), futures::future::join_all(settled)).await;
}

fn new_chunks(embedded: Embedded) -> Vec<NewChunk> {
    embedded
        .chunks
        .into_iter()
        .zip(embedded.vectors)
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
        .collect()
}
