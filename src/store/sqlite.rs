//! [`Store`] over SQLite (the embedded store): the same tables and meanings as PostgreSQL
//! (`migrations/sqlite`), in the data directory's database file.
//!
//! SQLite has one writer at a time, which gives for free what PostgreSQL needs an advisory lock
//! for: chunk ids of a collection are allocated in commit order, so an index snapshot's
//! watermark stays exact. Every multi-statement write runs in a `BEGIN IMMEDIATE` transaction
//! (see [`crate::embedded`]); lists are passed as JSON arrays and read with `json_each`.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::{
    ChunkHit, Claim, Collection, Deleted, DocumentChunks, DocumentRef, DocumentStatus, FailedDocument, FeedbackEntry,
    GenerationRecord, LogEntry, LogOp, NewDocument, Persisted, PoolStats, QueryLogEntry, QuerySummary, StatusRow,
    Store, StoreError, StoredVectors, claim_existing, decode_vector_into, encode_vector, finish_persist,
    found_documents, log_op, plan_persist,
};
use crate::embedded::Database;

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Database,
}

impl SqliteStore {
    /// Claims `docs` in one write transaction, as PostgreSQL does: one multi-row insert of every
    /// new row, then the uploads whose bytes were already there one by one, in order (rare in a
    /// bulk ingest). A database error fails the whole call.
    async fn claim_together(&self, docs: &[NewDocument]) -> Result<Vec<Result<Claim, StoreError>>, StoreError> {
        let metadata: Vec<String> =
            docs.iter().map(|d| serde_json::to_string(&d.metadata).unwrap_or_else(|_| "{}".into())).collect();
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        // A row inserted now is pending: every upload of those bytes in the batch processes it,
        // as each would alone (persist settles who wins).
        let mut inserted = std::collections::HashMap::with_capacity(docs.len());
        let rows: Vec<(&NewDocument, &String)> = docs.iter().zip(&metadata).collect();
        for part in rows.chunks(CLAIM_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO documents
                     (collection_id, sha256, upload_id, filename, content_type, size_bytes, storage_path, metadata,
                      content) ",
            );
            insert.push_values(part, |mut row, &(d, metadata)| {
                row.push_bind(d.collection_id)
                    .push_bind(d.sha256.as_str())
                    .push_bind(d.upload_id.as_str())
                    .push_bind(d.filename.as_str())
                    .push_bind(d.content_type.as_deref())
                    .push_bind(d.size_bytes)
                    .push_bind(d.storage_path.as_str())
                    .push_bind(metadata.as_str())
                    .push_bind(d.content.as_deref());
            });
            insert.push(" ON CONFLICT (collection_id, sha256) DO NOTHING RETURNING id, collection_id, sha256");
            for row in insert.build().fetch_all(&mut *tx).await.map_err(map_err)? {
                let key: (i64, String) =
                    (row.try_get("collection_id").map_err(map_err)?, row.try_get("sha256").map_err(map_err)?);
                inserted.insert(key, row.try_get::<i64, _>("id").map_err(map_err)?);
            }
        }
        let mut claims = Vec::with_capacity(docs.len());
        for (doc, metadata) in docs.iter().zip(&metadata) {
            let claim = match inserted.get(&(doc.collection_id, doc.sha256.clone())) {
                Some(&document_id) => Claim::Process { document_id },
                None => claim_existing_in(&mut tx, doc, metadata).await?,
            };
            claims.push(Ok(claim));
        }
        tx.commit().await.map_err(map_err)?;
        Ok(claims)
    }

    /// Persists `documents` in one transaction, with a fixed number of statements whatever
    /// their number, as PostgreSQL does: each statement is a round trip to sqlx's SQLite thread
    /// (two thread switches), and per-document statements were most of what small documents
    /// cost here. A document refused for itself (deleted, another model) gets its error and the
    /// rest still commit; a database error fails the whole call.
    async fn persist_together(
        &self,
        model: &str,
        dimensions: usize,
        documents: &[DocumentChunks<'_>],
    ) -> Result<Vec<Result<Persisted, StoreError>>, StoreError> {
        // Encode outside the write lock: the lock is held for the statements only.
        let embeddings: Vec<Vec<Vec<u8>>> =
            documents.iter().map(|d| d.chunks.iter().map(|c| encode_vector(&c.embedding)).collect()).collect();
        let ids: Vec<i64> = documents.iter().map(|d| d.document_id).collect();
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        let rows = sqlx::query(
            "SELECT d.id, d.status, d.collection_id, c.name, c.embedding_model, c.embedding_dimensions
             FROM documents d JOIN collections c ON c.id = d.collection_id
             WHERE d.id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_ids(&ids))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let found = found_documents(&rows, map_err)?;
        let mut plan = plan_persist(documents, &found, model, dimensions);
        for &i in &plan.reread {
            let stored = read_vectors(&mut tx, documents[i].document_id, dimensions).await?;
            plan.results[i] = Some(Ok(Persisted { inserted: false, stored }));
        }
        if !plan.admitted.is_empty() {
            sqlx::query(
                "UPDATE collections SET embedding_model = ?2, embedding_dimensions = ?3
                 WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_ids(&plan.admitted))
            .bind(model)
            .bind(i32::try_from(dimensions).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        let stored = insert_batch(&mut tx, model, documents, &embeddings, &plan.writes).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(finish_persist(plan, documents, stored, dimensions))
    }

    /// The store in an opened (and migrated) embedded database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database it lives in.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// Classifies sqlx errors: a busy database, I/O and pool problems are transient, the rest permanent.
fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable(error.to_string())
        }
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes: another process
            // held the write lock beyond the busy timeout. SQLITE_FULL (13), SQLITE_IOERR (10).
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
            if matches!(code, 5 | 6 | 10 | 13) {
                StoreError::Unavailable(error.to_string())
            } else {
                StoreError::Query(error.to_string())
            }
        }
        _ => StoreError::Query(error.to_string()),
    }
}

fn json_ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

fn collect_vectors(rows: &[SqliteRow], dimensions: usize) -> Result<StoredVectors, StoreError> {
    let mut out =
        StoredVectors { ids: Vec::with_capacity(rows.len()), vectors: Vec::with_capacity(rows.len() * dimensions) };
    for row in rows {
        out.ids.push(row.try_get("id").map_err(map_err)?);
        let bytes: Vec<u8> = row.try_get("embedding").map_err(map_err)?;
        decode_vector_into(&bytes, dimensions, &mut out.vectors)?;
    }
    Ok(out)
}

fn status_of(row: &SqliteRow) -> Result<DocumentStatus, StoreError> {
    let text: String = row.try_get("status").map_err(map_err)?;
    text.parse().map_err(StoreError::Query)
}

/// Chunk rows per `INSERT` statement: 12 parameters each, well under SQLite's limit of 32,766.
const CHUNK_ROWS_PER_INSERT: usize = 1000;

/// Writes the chunks of the documents in `writes` (index into `documents`, collection id):
/// leftovers of earlier uploads removed, chunks inserted, documents marked ingested, one index
/// log entry per document. Returns each written document's chunk ids in ordinal order.
async fn insert_batch(
    tx: &mut Transaction<'_, Sqlite>,
    model: &str,
    documents: &[DocumentChunks<'_>],
    embeddings: &[Vec<Vec<u8>>],
    writes: &[(usize, i64)],
) -> Result<Vec<Vec<i64>>, StoreError> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let document_ids: Vec<i64> = writes.iter().map(|&(i, _)| documents[i].document_id).collect();
    // Leftovers of documents that were deleted and are now uploaded again.
    sqlx::query("DELETE FROM chunks WHERE document_id IN (SELECT value FROM json_each(?1))")
        .bind(json_ids(&document_ids))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    let rows: Vec<_> = writes
        .iter()
        .flat_map(|&(i, collection_id)| {
            let document_id = documents[i].document_id;
            documents[i].chunks.iter().zip(&embeddings[i]).map(move |(c, e)| (document_id, collection_id, c, e))
        })
        .collect();
    let mut by_document: std::collections::HashMap<i64, Vec<(i32, i64)>> = std::collections::HashMap::new();
    for part in rows.chunks(CHUNK_ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO chunks (document_id, collection_id, model, ordinal, text, token_count, char_start,
                                 char_end, page_start, page_end, heading_path, embedding) ",
        );
        insert.push_values(part, |mut row, &(document_id, collection_id, c, embedding)| {
            row.push_bind(document_id)
                .push_bind(collection_id)
                .push_bind(model)
                .push_bind(c.ordinal)
                .push_bind(c.text.as_str())
                .push_bind(c.token_count)
                .push_bind(c.char_start)
                .push_bind(c.char_end)
                .push_bind(c.page_start)
                .push_bind(c.page_end)
                .push_bind(c.heading_path.as_deref())
                .push_bind(embedding.as_slice());
        });
        insert.push(" RETURNING id, document_id, ordinal");
        for row in insert.build().fetch_all(&mut **tx).await.map_err(map_err)? {
            let document_id: i64 = row.try_get("document_id").map_err(map_err)?;
            let entry = (row.try_get("ordinal").map_err(map_err)?, row.try_get("id").map_err(map_err)?);
            by_document.entry(document_id).or_default().push(entry);
        }
    }
    let counts: Vec<[i64; 2]> =
        writes.iter().map(|&(i, _)| [documents[i].document_id, documents[i].chunks.len() as i64]).collect();
    sqlx::query(
        "UPDATE documents SET status = 'ingested', chunk_count = json_extract(u.value, '$[1]'),
             failure_reason = NULL,
             ingested_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         FROM json_each(?1) AS u WHERE documents.id = json_extract(u.value, '$[0]')",
    )
    .bind(serde_json::to_string(&counts).unwrap_or_else(|_| "[]".into()))
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    let stored: Vec<Vec<i64>> = document_ids
        .iter()
        .map(|id| {
            let mut ids = by_document.remove(id).unwrap_or_default();
            ids.sort_unstable();
            ids.into_iter().map(|(_, id)| id).collect()
        })
        .collect();
    let entries: Vec<_> = writes.iter().map(|&(_, collection_id)| collection_id).zip(&stored).collect();
    for part in entries.chunks(CHUNK_ROWS_PER_INSERT) {
        let mut log = sqlx::QueryBuilder::<Sqlite>::new("INSERT INTO index_log (collection_id, op, chunk_ids) ");
        log.push_values(part, |mut row, &(collection_id, chunk_ids)| {
            row.push_bind(collection_id).push_bind(LogOp::Add.as_str()).push_bind(json_ids(chunk_ids));
        });
        log.build().execute(&mut **tx).await.map_err(map_err)?;
    }
    Ok(stored)
}

async fn read_vectors(
    tx: &mut Transaction<'_, Sqlite>,
    document_id: i64,
    dimensions: usize,
) -> Result<StoredVectors, StoreError> {
    let rows = sqlx::query("SELECT id, embedding FROM chunks WHERE document_id = ?1 ORDER BY ordinal")
        .bind(document_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
    collect_vectors(&rows, dimensions)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ensure_collection(&self, name: &str) -> Result<Collection, StoreError> {
        if let Some(found) = self.collection(name).await? {
            return Ok(found);
        }
        let row = sqlx::query(
            "INSERT INTO collections (name) VALUES (?1)
             ON CONFLICT (name) DO UPDATE SET name = excluded.name
             RETURNING id, name",
        )
        .bind(name)
        .fetch_one(&mut *self.db.write().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        Ok(Collection { id: row.try_get("id").map_err(map_err)?, name: row.try_get("name").map_err(map_err)? })
    }

    async fn collection(&self, name: &str) -> Result<Option<Collection>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM collections WHERE name = ?1")
            .bind(name)
            .fetch_optional(&mut *self.db.read().await.map_err(map_err)?)
            .await
            .map_err(map_err)?;
        row.map(|r| Ok(Collection { id: r.try_get("id").map_err(map_err)?, name: r.try_get("name").map_err(map_err)? }))
            .transpose()
    }

    async fn claim_documents(&self, docs: &[NewDocument]) -> Vec<Result<Claim, StoreError>> {
        super::each_alone_on_failure(docs, |d| self.claim_together(d)).await
    }

    async fn mark_failed(&self, document_id: i64, reason: &str) -> Result<(), StoreError> {
        // Never downgrade a document another attempt already ingested.
        sqlx::query(
            "UPDATE documents SET status = 'failed', failure_reason = ?2,
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ?1 AND status NOT IN ('ingested', 'no_text', 'deleted')",
        )
        .bind(document_id)
        .bind(reason)
        .execute(&mut *self.db.write().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn mark_no_text(&self, document_id: i64, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE documents SET status = 'no_text', failure_reason = ?2, chunk_count = 0,
                 ingested_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ?1 AND status NOT IN ('ingested', 'deleted')",
        )
        .bind(document_id)
        .bind(reason)
        .execute(&mut *self.db.write().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn persist_documents(
        &self,
        model: &str,
        dimensions: usize,
        documents: &[DocumentChunks<'_>],
    ) -> Vec<Result<Persisted, StoreError>> {
        super::each_alone_on_failure(documents, |d| self.persist_together(model, dimensions, d)).await
    }

    async fn document_vectors(&self, document_id: i64, dimensions: usize) -> Result<StoredVectors, StoreError> {
        let rows = sqlx::query("SELECT id, embedding FROM chunks WHERE document_id = ?1 ORDER BY ordinal")
            .bind(document_id)
            .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
            .await
            .map_err(map_err)?;
        collect_vectors(&rows, dimensions)
    }

    async fn delete_documents(
        &self,
        target: &DocumentRef,
        collection: Option<&str>,
    ) -> Result<Vec<Deleted>, StoreError> {
        let column = match target {
            DocumentRef::Id(_) => "d.id",
            DocumentRef::Sha256(_) => "d.sha256",
            DocumentRef::UploadId(_) => "d.upload_id",
        };
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.id, d.collection_id, d.sha256, c.name FROM documents d JOIN collections c ON c.id = d.collection_id
             WHERE {column} = ?1 AND (?2 IS NULL OR c.name = ?2) AND d.status <> 'deleted'
             ORDER BY d.collection_id, d.id"
        )));
        let query = match target {
            DocumentRef::Id(id) => query.bind(*id),
            DocumentRef::Sha256(text) | DocumentRef::UploadId(text) => query.bind(text.clone()),
        };
        let rows = query.bind(collection).fetch_all(&mut *tx).await.map_err(map_err)?;
        let mut deleted = Vec::with_capacity(rows.len());
        for row in &rows {
            let document_id: i64 = row.try_get("id").map_err(map_err)?;
            let collection_id: i64 = row.try_get("collection_id").map_err(map_err)?;
            sqlx::query(
                "UPDATE documents SET status = 'deleted', deleted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?1",
            )
            .bind(document_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            let mut chunk_ids: Vec<i64> = sqlx::query_scalar(
                "UPDATE chunks SET deleted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE document_id = ?1 AND deleted_at IS NULL RETURNING id",
            )
            .bind(document_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            chunk_ids.sort_unstable();
            if !chunk_ids.is_empty() {
                append_log(&mut tx, collection_id, LogOp::Remove, &chunk_ids).await?;
            }
            deleted.push(Deleted {
                document_id,
                collection: row.try_get("name").map_err(map_err)?,
                sha256: row.try_get("sha256").map_err(map_err)?,
                chunk_ids,
            });
        }
        tx.commit().await.map_err(map_err)?;
        Ok(deleted)
    }

    async fn log_after(&self, collection_id: i64, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, op, chunk_ids FROM index_log WHERE collection_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(collection_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let ids: String = r.try_get("chunk_ids").map_err(map_err)?;
                Ok(LogEntry {
                    seq: r.try_get("seq").map_err(map_err)?,
                    op: log_op(r.try_get::<&str, _>("op").map_err(map_err)?)?,
                    chunk_ids: serde_json::from_str(&ids).map_err(|e| StoreError::Query(format!("index_log: {e}")))?,
                })
            })
            .collect()
    }

    async fn last_log_seq(&self, collection_id: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM index_log WHERE collection_id = ?1")
            .bind(collection_id)
            .fetch_one(&mut *self.db.read().await.map_err(map_err)?)
            .await
            .map_err(map_err)
    }

    async fn identity(&self) -> Result<String, StoreError> {
        sqlx::query_scalar("SELECT id FROM store_identity")
            .fetch_one(&mut *self.db.read().await.map_err(map_err)?)
            .await
            .map_err(map_err)
    }

    async fn vectors_by_ids(&self, ids: &[i64], dimensions: usize) -> Result<StoredVectors, StoreError> {
        let rows =
            sqlx::query("SELECT id, embedding FROM chunks WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id")
                .bind(json_ids(ids))
                .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
                .await
                .map_err(map_err)?;
        collect_vectors(&rows, dimensions)
    }

    async fn fetch_chunks(&self, ids: &[i64]) -> Result<Vec<ChunkHit>, StoreError> {
        // One query for all chunks and their documents: no N+1. A walk over the ids in their
        // order, each a primary-key lookup of its chunk and its document (as PostgreSQL).
        let rows = sqlx::query(
            "SELECT c.id, c.document_id, d.filename, c.text, c.char_start, c.char_end,
                    c.page_start, c.heading_path, d.metadata
             FROM json_each(?1) AS wanted
             CROSS JOIN chunks c ON c.id = wanted.value
             JOIN documents d ON d.id = c.document_id
             WHERE c.deleted_at IS NULL AND d.deleted_at IS NULL AND d.status = 'ingested'
             ORDER BY wanted.key",
        )
        .bind(json_ids(ids))
        .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            hits.push(ChunkHit {
                chunk_id: row.try_get("id").map_err(map_err)?,
                document_id: row.try_get("document_id").map_err(map_err)?,
                filename: row.try_get("filename").map_err(map_err)?,
                text: row.try_get("text").map_err(map_err)?,
                char_start: row.try_get("char_start").map_err(map_err)?,
                char_end: row.try_get("char_end").map_err(map_err)?,
                page: row.try_get("page_start").map_err(map_err)?,
                heading_path: row.try_get("heading_path").map_err(map_err)?,
                metadata: serde_json::from_str(&row.try_get::<String, _>("metadata").map_err(map_err)?)
                    .unwrap_or_default(),
            });
        }
        Ok(hits)
    }

    async fn log_queries(&self, entries: &[QueryLogEntry]) -> Result<(), StoreError> {
        if entries.len() <= super::QUERY_LOG_ROWS_PER_INSERT {
            // One statement is atomic on its own.
            if !entries.is_empty() {
                query_log_insert(entries)
                    .build()
                    .execute(&mut *self.db.write().await.map_err(map_err)?)
                    .await
                    .map_err(map_err)?;
            }
            return Ok(());
        }
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        for part in entries.chunks(super::QUERY_LOG_ROWS_PER_INSERT) {
            query_log_insert(part).build().execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn record_feedback(&self, feedback: &FeedbackEntry) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO query_feedback (query_id, rating, comment) VALUES (?1, ?2, ?3)")
            .bind(&feedback.query_id)
            .bind(&feedback.rating)
            .bind(&feedback.comment)
            .execute(&mut *self.db.write().await.map_err(map_err)?)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn status(&self) -> Result<Vec<StatusRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.name, d.status, count(*) AS documents, coalesce(sum(d.chunk_count), 0) AS chunks,
                    coalesce(sum(t.tokens), 0) AS tokens
             FROM documents d JOIN collections c ON c.id = d.collection_id
             LEFT JOIN (SELECT document_id, sum(token_count) AS tokens FROM chunks GROUP BY document_id) t
                    ON t.document_id = d.id
             GROUP BY c.name, d.status ORDER BY c.name, d.status",
        )
        .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(StatusRow {
                    collection: r.try_get("name").map_err(map_err)?,
                    status: status_of(r)?,
                    documents: r.try_get("documents").map_err(map_err)?,
                    chunks: r.try_get("chunks").map_err(map_err)?,
                    tokens: r.try_get("tokens").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn query_summary(&self, since: chrono::DateTime<chrono::Utc>) -> Result<QuerySummary, StoreError> {
        // Timestamps are ISO-8601 UTC text of one width: they compare as strings.
        let since = since.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let groups: Vec<(Option<String>, bool, i64, f64, f64)> = sqlx::query_as(
            "SELECT cache_layer, error_code IS NOT NULL, count(*), CAST(coalesce(sum(latency_ms), 0) AS REAL),
                    CAST(coalesce(sum(cost_usd), 0) AS REAL)
             FROM query_log WHERE created_at >= ?1 GROUP BY 1, 2",
        )
        .bind(&since)
        .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        let (up, down): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(rating = 'up'), 0), coalesce(sum(rating = 'down'), 0)
             FROM query_feedback WHERE created_at >= ?1",
        )
        .bind(&since)
        .fetch_one(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        Ok(QuerySummary::from_groups(&groups, up, down))
    }

    async fn failed_documents(&self, collection: Option<&str>) -> Result<Vec<FailedDocument>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, c.name, d.filename, d.content_type, d.storage_path, d.content, d.metadata, d.failure_reason
             FROM documents d JOIN collections c ON c.id = d.collection_id
             WHERE d.status = 'failed' AND (?1 IS NULL OR c.name = ?1)
             ORDER BY d.id",
        )
        .bind(collection)
        .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(FailedDocument {
                    document_id: row.try_get("id").map_err(map_err)?,
                    collection: row.try_get("name").map_err(map_err)?,
                    filename: row.try_get("filename").map_err(map_err)?,
                    content_type: row.try_get("content_type").map_err(map_err)?,
                    storage_path: row.try_get("storage_path").map_err(map_err)?,
                    content: row.try_get("content").map_err(map_err)?,
                    metadata: serde_json::from_str(&row.try_get::<String, _>("metadata").map_err(map_err)?)
                        .unwrap_or_default(),
                    failure_reason: row.try_get("failure_reason").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.db.read().await.map_err(map_err)?).await.map_err(map_err)?;
        Ok(())
    }

    fn pools(&self) -> Vec<PoolStats> {
        vec![PoolStats::of("reader", self.db.reader()), PoolStats::of("writer", self.db.writer())]
    }

    async fn collections(&self) -> Result<Vec<Collection>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM collections ORDER BY name")
            .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(Collection { id: r.try_get("id").map_err(map_err)?, name: r.try_get("name").map_err(map_err)? })
            })
            .collect()
    }

    async fn live_vectors(
        &self,
        collection_id: i64,
        after_id: i64,
        limit: i64,
        dimensions: usize,
    ) -> Result<StoredVectors, StoreError> {
        let rows = sqlx::query(
            "SELECT id, embedding FROM chunks
             WHERE collection_id = ?1 AND id > ?2 AND deleted_at IS NULL
             ORDER BY id LIMIT ?3",
        )
        .bind(collection_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        collect_vectors(&rows, dimensions)
    }

    async fn live_state(&self, collection_id: i64) -> Result<(i64, i64), StoreError> {
        // One statement reads one snapshot, and chunks commit with their log entry.
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM chunks WHERE collection_id = ?1 AND deleted_at IS NULL),
                    (SELECT coalesce(max(seq), 0) FROM index_log WHERE collection_id = ?1)",
        )
        .bind(collection_id)
        .fetch_one(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)
    }

    async fn record_generation(&self, record: &GenerationRecord) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO index_generations
                 (collection_id, generation, ok, kind, vectors, expected, recall, log_seq, reason, timings)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(record.collection_id)
        .bind(record.generation)
        .bind(record.ok)
        .bind(&record.kind)
        .bind(record.vectors)
        .bind(record.expected)
        .bind(record.recall)
        .bind(record.log_seq)
        .bind(&record.reason)
        .bind(record.timings.to_string())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn last_generation(&self, collection_id: i64) -> Result<Option<GenerationRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT collection_id, generation, ok, kind, vectors, expected, recall, log_seq, reason, timings,
                    finished_at
             FROM index_generations WHERE collection_id = ?1 ORDER BY id DESC LIMIT 1",
        )
        .bind(collection_id)
        .fetch_optional(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        row.map(|r| {
            let timings: String = r.try_get("timings").map_err(map_err)?;
            let finished: String = r.try_get("finished_at").map_err(map_err)?;
            Ok(GenerationRecord {
                collection_id: r.try_get("collection_id").map_err(map_err)?,
                generation: r.try_get("generation").map_err(map_err)?,
                ok: r.try_get("ok").map_err(map_err)?,
                kind: r.try_get("kind").map_err(map_err)?,
                vectors: r.try_get("vectors").map_err(map_err)?,
                expected: r.try_get("expected").map_err(map_err)?,
                recall: r.try_get("recall").map_err(map_err)?,
                log_seq: r.try_get("log_seq").map_err(map_err)?,
                reason: r.try_get("reason").map_err(map_err)?,
                timings: serde_json::from_str(&timings).unwrap_or_default(),
                finished_at: chrono::DateTime::parse_from_rfc3339(&finished).ok().map(|t| t.to_utc()),
            })
        })
        .transpose()
    }

    async fn claim_run(
        &self,
        job: &str,
        scheduled_for: chrono::DateTime<chrono::Utc>,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        // Same rule as PostgreSQL: one claimant per trigger; an unfinished claim older than the
        // lease may be taken over. Times are Unix milliseconds.
        let now = chrono::Utc::now().timestamp_millis();
        let stale_before = now - i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO scheduled_runs (job, scheduled_for, holder, claimed_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (job, scheduled_for) DO UPDATE SET holder = excluded.holder, claimed_at = excluded.claimed_at
             WHERE scheduled_runs.finished_at IS NULL AND scheduled_runs.claimed_at <= ?5
             RETURNING holder",
        )
        .bind(job)
        .bind(scheduled_for.timestamp_millis())
        .bind(holder)
        .bind(now)
        .bind(stale_before)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(claimed.is_some())
    }

    async fn finish_run(&self, job: &str, scheduled_for: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        sqlx::query("UPDATE scheduled_runs SET finished_at = ?1 WHERE job = ?2 AND scheduled_for = ?3")
            .bind(chrono::Utc::now().timestamp_millis())
            .bind(job)
            .bind(scheduled_for.timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }
    async fn chunks_to_reembed(
        &self,
        collection_id: i64,
        model: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, c.text FROM chunks c
             LEFT JOIN chunk_embeddings_next n ON n.chunk_id = c.id AND n.model = ?2
             WHERE c.collection_id = ?1 AND c.id > ?3 AND c.deleted_at IS NULL AND n.chunk_id IS NULL
             ORDER BY c.id LIMIT ?4",
        )
        .bind(collection_id)
        .bind(model)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *self.db.read().await.map_err(map_err)?)
        .await
        .map_err(map_err)?;
        rows.iter().map(|r| Ok((r.try_get("id").map_err(map_err)?, r.try_get("text").map_err(map_err)?))).collect()
    }

    async fn stage_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<(), StoreError> {
        let bytes: Vec<Vec<u8>> = vectors.iter().map(|v| encode_vector(&v.1)).collect();
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        for ((id, _), embedding) in vectors.iter().zip(&bytes) {
            sqlx::query(
                "INSERT INTO chunk_embeddings_next (chunk_id, model, embedding) VALUES (?1, ?2, ?3)
                 ON CONFLICT (chunk_id) DO UPDATE SET model = excluded.model, embedding = excluded.embedding",
            )
            .bind(id)
            .bind(model)
            .bind(embedding)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn switch_model(&self, collection_id: i64, model: &str, dimensions: usize) -> Result<i64, StoreError> {
        // The write transaction excludes every persist (SQLite's single writer).
        let mut tx = self.db.begin_write().await.map_err(map_err)?;
        let missing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chunks c
             LEFT JOIN chunk_embeddings_next n ON n.chunk_id = c.id AND n.model = ?2
             WHERE c.collection_id = ?1 AND c.deleted_at IS NULL AND n.chunk_id IS NULL",
        )
        .bind(collection_id)
        .bind(model)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if missing > 0 {
            return Ok(missing);
        }
        sqlx::query(
            "UPDATE chunks SET embedding = n.embedding, model = n.model
             FROM chunk_embeddings_next n
             WHERE n.chunk_id = chunks.id AND n.model = ?2 AND chunks.collection_id = ?1",
        )
        .bind(collection_id)
        .bind(model)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "DELETE FROM chunk_embeddings_next WHERE chunk_id IN (SELECT id FROM chunks WHERE collection_id = ?1)",
        )
        .bind(collection_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE collections SET embedding_model = ?2, embedding_dimensions = ?3 WHERE id = ?1")
            .bind(collection_id)
            .bind(model)
            .bind(i64::try_from(dimensions).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(0)
    }

    async fn collection_model(&self, collection_id: i64) -> Result<Option<(String, i64)>, StoreError> {
        let row: Option<(Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT embedding_model, embedding_dimensions FROM collections WHERE id = ?1")
                .bind(collection_id)
                .fetch_optional(&mut *self.db.read().await.map_err(map_err)?)
                .await
                .map_err(map_err)?;
        Ok(row.and_then(|(m, d)| Some((m?, d?))))
    }
}

/// Appends an index log entry. The transaction holds SQLite's single write lock from its
/// `BEGIN IMMEDIATE`, so sequences commit in order: gap-safe without a lock of our own.
async fn append_log(
    tx: &mut Transaction<'_, Sqlite>,
    collection_id: i64,
    op: LogOp,
    chunk_ids: &[i64],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO index_log (collection_id, op, chunk_ids) VALUES (?1, ?2, ?3)")
        .bind(collection_id)
        .bind(op.as_str())
        .bind(json_ids(chunk_ids))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Document rows per `INSERT` of a claim batch: 9 parameters each, under SQLite's limit.
const CLAIM_ROWS_PER_INSERT: usize = 1000;

/// Claims one upload whose bytes already have a row in its collection, inside a write
/// transaction (see [`Store::claim_document`]).
async fn claim_existing_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    doc: &NewDocument,
    metadata: &str,
) -> Result<Claim, StoreError> {
    let row = sqlx::query(
        "SELECT id, status, upload_id, chunk_count FROM documents WHERE collection_id = ?1 AND sha256 = ?2",
    )
    .bind(doc.collection_id)
    .bind(&doc.sha256)
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    let document_id: i64 = row.try_get("id").map_err(map_err)?;
    let status = status_of(&row)?;
    let owner: String = row.try_get("upload_id").map_err(map_err)?;
    let chunks: i64 = row.try_get("chunk_count").map_err(map_err)?;
    let claim = match claim_existing(document_id, status, owner == doc.upload_id, chunks) {
        Some(claim) => claim,
        None => {
            // Failed or deleted: this upload takes the document over and resumes it.
            sqlx::query(
                "UPDATE documents SET status = 'pending', failure_reason = NULL, deleted_at = NULL,
                     upload_id = ?2, filename = ?3, content_type = ?4, metadata = ?5,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?1 AND status IN ('failed', 'deleted')",
            )
            .bind(document_id)
            .bind(&doc.upload_id)
            .bind(&doc.filename)
            .bind(&doc.content_type)
            .bind(metadata)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            Claim::Process { document_id }
        }
    };
    Ok(claim)
}

/// One multi-row insert of query log entries (at most [`super::QUERY_LOG_ROWS_PER_INSERT`]).
fn query_log_insert(entries: &[QueryLogEntry]) -> sqlx::QueryBuilder<Sqlite> {
    let mut insert = sqlx::QueryBuilder::<Sqlite>::new(super::QUERY_LOG_INSERT);
    insert.push_values(entries, |mut row, entry| {
        row.push_bind(&entry.collection)
            .push_bind(&entry.query)
            .push_bind(entry.top_k)
            .push_bind(json_ids(&entry.chunk_ids))
            .push_bind(serde_json::to_string(&entry.scores).unwrap_or_else(|_| "[]".into()))
            .push_bind(&entry.error_code)
            .push_bind(entry.latency_ms)
            .push_bind(&entry.query_id)
            .push_bind(&entry.mode)
            .push_bind(&entry.cache_layer)
            .push_bind(entry.input_tokens)
            .push_bind(entry.output_tokens)
            .push_bind(entry.cost_usd);
    });
    insert
}
