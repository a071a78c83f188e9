//! [`Store`] over PostgreSQL with a sized sqlx pool and embedded migrations.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::{
    ChunkHit, Claim, Collection, Deleted, DocumentChunks, DocumentRef, DocumentStatus, FailedDocument, FeedbackEntry,
    GenerationRecord, LogEntry, LogOp, NewDocument, Persisted, PoolStats, QueryLogEntry, QuerySummary, StatusRow,
    Store, StoreError, StoredVectors, claim_existing, decode_vector_into, encode_vector, finish_persist,
    found_documents, log_op, plan_persist,
};
use crate::config::DatabaseSettings;

/// Namespace of ragpipe's advisory locks (first key of the two-key form): "rp".
const LOCK_NAMESPACE: i32 = 0x7270;

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// A pooled connection idle this long is checked before it is handed out.
const PING_WHEN_IDLE: Duration = Duration::from_secs(1);

impl PgStore {
    /// Claims `docs` in one transaction with a fixed number of statements: one insert of every
    /// new row, one lookup of the rows that were already there, and an update only for failed or
    /// deleted documents taken over. A database error fails the whole call.
    async fn claim_together(&self, docs: &[NewDocument]) -> Result<Vec<Result<Claim, StoreError>>, StoreError> {
        let mut tx = self.begin().await?;
        let column = |f: fn(&NewDocument) -> String| docs.iter().map(f).collect::<Vec<String>>();
        let collections: Vec<i64> = docs.iter().map(|d| d.collection_id).collect();
        let (shas, uploads) = (column(|d| d.sha256.clone()), column(|d| d.upload_id.clone()));
        let rows = sqlx::query(
            "INSERT INTO documents
                 (collection_id, sha256, upload_id, filename, content_type, size_bytes, storage_path, metadata,
                  content)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                  $7::text[], $8::jsonb[], $9::bytea[])
             ON CONFLICT (collection_id, sha256) DO NOTHING
             RETURNING id, collection_id, sha256",
        )
        .bind(&collections)
        .bind(&shas)
        .bind(&uploads)
        .bind(column(|d| d.filename.clone()))
        .bind(docs.iter().map(|d| d.content_type.clone()).collect::<Vec<Option<String>>>())
        .bind(docs.iter().map(|d| d.size_bytes).collect::<Vec<i64>>())
        .bind(column(|d| d.storage_path.clone()))
        .bind(docs.iter().map(|d| d.metadata.clone()).collect::<Vec<serde_json::Value>>())
        .bind(docs.iter().map(|d| d.content.as_deref()).collect::<Vec<Option<&[u8]>>>())
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        // A row inserted now is pending: every upload of those bytes in the batch processes it,
        // as each would alone (persist settles who wins).
        let mut inserted: HashMap<(i64, &str), i64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key = (
                row.try_get::<i64, _>("collection_id").map_err(map_err)?,
                row.try_get::<&str, _>("sha256").map_err(map_err)?,
            );
            inserted.insert(key, row.try_get("id").map_err(map_err)?);
        }
        let mut claims: Vec<Option<Claim>> = docs
            .iter()
            .map(|d| {
                inserted.get(&(d.collection_id, d.sha256.as_str())).map(|&document_id| Claim::Process { document_id })
            })
            .collect();
        if claims.iter().any(Option::is_none) {
            let existing = sqlx::query(
                "SELECT d.id, d.collection_id, d.sha256, d.status, d.upload_id, d.chunk_count::bigint AS chunks
                 FROM documents d JOIN unnest($1::bigint[], $2::text[]) AS k (collection_id, sha256)
                   ON d.collection_id = k.collection_id AND d.sha256 = k.sha256",
            )
            .bind(&collections)
            .bind(&shas)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            let mut found = HashMap::with_capacity(existing.len());
            for row in &existing {
                let key = (
                    row.try_get::<i64, _>("collection_id").map_err(map_err)?,
                    row.try_get::<&str, _>("sha256").map_err(map_err)?,
                );
                found.insert(key, row);
            }
            for (i, d) in docs.iter().enumerate() {
                if claims[i].is_some() {
                    continue;
                }
                let row = found.get(&(d.collection_id, d.sha256.as_str())).ok_or_else(|| {
                    StoreError::Query(format!(
                        "document {} in collection {} vanished while claimed",
                        d.sha256, d.collection_id
                    ))
                })?;
                let document_id: i64 = row.try_get("id").map_err(map_err)?;
                let status = status_of(row)?;
                let owner: String = row.try_get("upload_id").map_err(map_err)?;
                let chunks: i64 = row.try_get("chunks").map_err(map_err)?;
                claims[i] = Some(match claim_existing(document_id, status, owner == d.upload_id, chunks) {
                    Some(claim) => claim,
                    None => {
                        // Failed or deleted: this upload takes the document over and resumes it.
                        sqlx::query(
                            "UPDATE documents SET status = 'pending', failure_reason = NULL, deleted_at = NULL,
                                 upload_id = $2, filename = $3, content_type = $4, metadata = $5, updated_at = now()
                             WHERE id = $1 AND status IN ('failed', 'deleted')",
                        )
                        .bind(document_id)
                        .bind(&d.upload_id)
                        .bind(&d.filename)
                        .bind(&d.content_type)
                        .bind(&d.metadata)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        Claim::Process { document_id }
                    }
                });
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(claims.into_iter().map(|c| c.ok_or_else(|| StoreError::Query("no claim".into()))).collect())
    }

    /// Opens a pool sized from `[database]`.
    ///
    /// # Errors
    /// No URL configured, or the first connection fails.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let url = settings.url.as_ref().ok_or_else(|| StoreError::Unavailable("database.url is not set".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            // sqlx pings every connection it hands out by default: a round trip before every
            // statement. Only a connection idle for a while is likely to have been cut (a server
            // restart, a proxy's idle timeout); one in steady use that breaks fails its
            // statement, which the caller retries or reports like any outage.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_WHEN_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .min_connections(settings.min_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .max_lifetime(Duration::from_secs(settings.max_lifetime_secs))
            .idle_timeout(Duration::from_secs(settings.idle_timeout_secs))
            .connect(url.expose_secret())
            .await
            .map_err(map_err)?;
        Ok(Self { pool })
    }

    /// Creates the configured database if it does not exist yet (needs CREATEDB rights).
    ///
    /// # Errors
    /// No URL configured, the server is unreachable, or creation is refused.
    pub async fn create_database_if_missing(settings: &DatabaseSettings) -> Result<(), StoreError> {
        use sqlx::migrate::MigrateDatabase;
        let url = settings
            .url
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("database.url is not set".into()))?
            .expose_secret();
        if !Postgres::database_exists(url).await.map_err(map_err)? {
            Postgres::create_database(url).await.map_err(map_err)?;
        }
        Ok(())
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection from the pool (the wait is measured).
    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        super::timed_acquire("main", self.pool.acquire()).await.map_err(map_err)
    }

    /// A transaction on a connection from the pool (the wait is measured).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        super::timed_acquire("main", self.pool.begin()).await.map_err(map_err)
    }

    /// Applies the embedded migrations (`migrations/postgres`).
    ///
    /// # Errors
    /// A migration fails or the database is unreachable.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres").run(&self.pool).await.map_err(|e| StoreError::Migrate(e.to_string()))
    }

    /// Persists `documents` in one transaction, with a fixed number of statements whatever
    /// their number (round trips, not rows, are what small documents cost). A document refused
    /// for itself (deleted, another model) gets its error and the rest still commit; a database
    /// error fails the whole call.
    async fn persist_together(
        &self,
        model: &str,
        dimensions: usize,
        documents: &[DocumentChunks<'_>],
    ) -> Result<Vec<Result<Persisted, StoreError>>, StoreError> {
        let ids: Vec<i64> = documents.iter().map(|d| d.document_id).collect();
        let mut tx = self.begin().await?;
        // Rows are locked in id order, so concurrent batches cannot deadlock.
        let rows = sqlx::query(
            "SELECT d.id, d.status, d.collection_id, c.name, c.embedding_model, c.embedding_dimensions
             FROM documents d JOIN collections c ON c.id = d.collection_id
             WHERE d.id = ANY($1) ORDER BY d.id FOR UPDATE OF d FOR KEY SHARE OF c",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let found = found_documents(&rows, map_err)?;
        let mut plan = plan_persist(documents, &found, model, dimensions);
        for &i in &plan.reread {
            let stored = Self::read_vectors(&mut tx, documents[i].document_id, dimensions).await?;
            plan.results[i] = Some(Ok(Persisted { inserted: false, stored }));
        }
        if !plan.admitted.is_empty() {
            sqlx::query(
                "UPDATE collections SET embedding_model = $2, embedding_dimensions = $3
                 WHERE id = ANY($1)",
            )
            .bind(&plan.admitted)
            .bind(model)
            .bind(i32::try_from(dimensions).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        let writes = &plan.writes;
        let stored = insert_batch(&mut tx, model, documents, writes).await?;
        // The log last, under each collection's lock (gap-safe replay), so the lock is held for
        // these two statements and the commit only.
        let mut log_collections: Vec<i64> = Vec::with_capacity(writes.len());
        let mut log_ids: Vec<String> = Vec::with_capacity(writes.len());
        for (&(_, collection_id), chunk_ids) in writes.iter().zip(&stored) {
            log_collections.push(collection_id);
            let list: Vec<String> = chunk_ids.iter().map(i64::to_string).collect();
            log_ids.push(format!("{{{}}}", list.join(",")));
        }
        if !writes.is_empty() {
            let mut locks = log_collections.clone();
            locks.sort_unstable();
            locks.dedup();
            let locks: Vec<i32> = locks.iter().map(|&c| i32::try_from(c).unwrap_or(i32::MAX)).collect();
            sqlx::query("SELECT pg_advisory_xact_lock($1, c) FROM unnest($2::int[]) AS c ORDER BY c")
                .bind(LOCK_NAMESPACE)
                .bind(&locks)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            sqlx::query(
                "INSERT INTO index_log (collection_id, op, chunk_ids)
                 SELECT t.c, $2, t.ids::bigint[]
                 FROM unnest($1::bigint[], $3::text[]) WITH ORDINALITY AS t(c, ids, n) ORDER BY t.n",
            )
            .bind(&log_collections)
            .bind(LogOp::Add.as_str())
            .bind(&log_ids)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(finish_persist(plan, documents, stored, dimensions))
    }

    async fn read_vectors(
        tx: &mut Transaction<'_, Postgres>,
        document_id: i64,
        dimensions: usize,
    ) -> Result<StoredVectors, StoreError> {
        let rows = sqlx::query("SELECT id, embedding FROM chunks WHERE document_id = $1 ORDER BY ordinal")
            .bind(document_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(map_err)?;
        collect_vectors(&rows, dimensions)
    }
}

fn collect_vectors(rows: &[sqlx::postgres::PgRow], dimensions: usize) -> Result<StoredVectors, StoreError> {
    let mut out =
        StoredVectors { ids: Vec::with_capacity(rows.len()), vectors: Vec::with_capacity(rows.len() * dimensions) };
    for row in rows {
        out.ids.push(row.try_get("id").map_err(map_err)?);
        let bytes: Vec<u8> = row.try_get("embedding").map_err(map_err)?;
        decode_vector_into(&bytes, dimensions, &mut out.vectors)?;
    }
    Ok(out)
}

/// The `status` column as the enum (the store's edge: no string comparisons past here).
fn status_of(row: &sqlx::postgres::PgRow) -> Result<DocumentStatus, StoreError> {
    let text: String = row.try_get("status").map_err(map_err)?;
    text.parse().map_err(StoreError::Query)
}

/// Classifies sqlx errors: connection and resource problems are transient, the rest permanent.
fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
        sqlx::Error::Database(db) => {
            // SQLSTATE classes: 08 connection, 40 transaction rollback (deadlock, serialization),
            // 53 insufficient resources, 57 operator intervention (shutdown).
            let class = db.code().map(|c| c.chars().take(2).collect::<String>()).unwrap_or_default();
            if matches!(class.as_str(), "08" | "40" | "53" | "57") {
                StoreError::Unavailable(error.to_string())
            } else {
                StoreError::Query(error.to_string())
            }
        }
        _ => StoreError::Query(error.to_string()),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ensure_collection(&self, name: &str) -> Result<Collection, StoreError> {
        let row = sqlx::query(
            "INSERT INTO collections (name) VALUES ($1)
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
             RETURNING id, name",
        )
        .bind(name)
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        Ok(Collection { id: row.try_get("id").map_err(map_err)?, name: row.try_get("name").map_err(map_err)? })
    }

    async fn collection(&self, name: &str) -> Result<Option<Collection>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM collections WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.conn().await?)
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
            "UPDATE documents SET status = 'failed', failure_reason = $2, updated_at = now()
             WHERE id = $1 AND status NOT IN ('ingested', 'no_text', 'deleted')",
        )
        .bind(document_id)
        .bind(reason)
        .execute(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn mark_no_text(&self, document_id: i64, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE documents SET status = 'no_text', failure_reason = $2, chunk_count = 0,
                 ingested_at = now(), updated_at = now()
             WHERE id = $1 AND status NOT IN ('ingested', 'deleted')",
        )
        .bind(document_id)
        .bind(reason)
        .execute(&mut *self.conn().await?)
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
        let mut tx = self.begin().await?;
        let stored = Self::read_vectors(&mut tx, document_id, dimensions).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(stored)
    }

    async fn delete_documents(
        &self,
        target: &DocumentRef,
        collection: Option<&str>,
    ) -> Result<Vec<Deleted>, StoreError> {
        let mut tx = self.begin().await?;
        let column = match target {
            DocumentRef::Id(_) => "d.id",
            DocumentRef::Sha256(_) => "d.sha256",
            DocumentRef::UploadId(_) => "d.upload_id",
        };
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT d.id, d.collection_id, d.sha256, c.name FROM documents d JOIN collections c ON c.id = d.collection_id
             WHERE {column} = $1 AND ($2::text IS NULL OR c.name = $2) AND d.status <> 'deleted'
             ORDER BY d.collection_id, d.id FOR UPDATE OF d"
        )));
        let query = match target {
            DocumentRef::Id(id) => query.bind(*id),
            DocumentRef::Sha256(text) | DocumentRef::UploadId(text) => query.bind(text.clone()),
        };
        let rows = query.bind(collection).fetch_all(&mut *tx).await.map_err(map_err)?;
        let mut deleted = Vec::with_capacity(rows.len());
        for row in &rows {
            let document_id: i64 = row.try_get("id").map_err(map_err)?;
            sqlx::query(
                "UPDATE documents SET status = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1",
            )
            .bind(document_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            let mut chunk_ids: Vec<i64> = sqlx::query_scalar(
                "UPDATE chunks SET deleted_at = now() WHERE document_id = $1 AND deleted_at IS NULL RETURNING id",
            )
            .bind(document_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            chunk_ids.sort_unstable();
            deleted.push((
                row.try_get::<i64, _>("collection_id").map_err(map_err)?,
                Deleted {
                    document_id,
                    collection: row.try_get("name").map_err(map_err)?,
                    sha256: row.try_get("sha256").map_err(map_err)?,
                    chunk_ids,
                },
            ));
        }
        // Log entries last (collections in ascending order, so two deletes never deadlock on
        // the per-collection locks append_log takes).
        for (collection_id, doc) in &deleted {
            if !doc.chunk_ids.is_empty() {
                append_log(&mut tx, *collection_id, LogOp::Remove, &doc.chunk_ids).await?;
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(deleted.into_iter().map(|(_, doc)| doc).collect())
    }

    async fn log_after(&self, collection_id: i64, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, op, chunk_ids FROM index_log WHERE collection_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(collection_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(LogEntry {
                    seq: r.try_get("seq").map_err(map_err)?,
                    op: log_op(r.try_get::<&str, _>("op").map_err(map_err)?)?,
                    chunk_ids: r.try_get("chunk_ids").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn last_log_seq(&self, collection_id: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM index_log WHERE collection_id = $1")
            .bind(collection_id)
            .fetch_one(&mut *self.conn().await?)
            .await
            .map_err(map_err)
    }

    async fn identity(&self) -> Result<String, StoreError> {
        sqlx::query_scalar("SELECT id FROM store_identity").fetch_one(&mut *self.conn().await?).await.map_err(map_err)
    }

    async fn vectors_by_ids(&self, ids: &[i64], dimensions: usize) -> Result<StoredVectors, StoreError> {
        let rows = sqlx::query("SELECT id, embedding FROM chunks WHERE id = ANY($1) ORDER BY id")
            .bind(ids)
            .fetch_all(&mut *self.conn().await?)
            .await
            .map_err(map_err)?;
        collect_vectors(&rows, dimensions)
    }

    async fn fetch_chunks(&self, ids: &[i64]) -> Result<Vec<ChunkHit>, StoreError> {
        // One query for all chunks and their documents: no N+1. Written as a walk over the ids
        // (each a primary-key lookup of its chunk, then of its document) because `c.id = ANY($1)`
        // let the planner pick, on a freshly filled table, a loop over every document
        // intersecting index bitmaps: 3.3 ms instead of 0.1 for 20 ids over 50 documents, and
        // after ANALYZE a scan of every document row, growing with the collection.
        let rows = sqlx::query(
            "SELECT c.id, c.document_id, d.filename, c.text, c.char_start, c.char_end,
                    c.page_start, c.heading_path, d.metadata
             FROM unnest($1::bigint[]) WITH ORDINALITY AS wanted (id, n)
             JOIN chunks c ON c.id = wanted.id
             JOIN documents d ON d.id = c.document_id
             WHERE c.deleted_at IS NULL AND d.deleted_at IS NULL AND d.status = 'ingested'
             ORDER BY wanted.n",
        )
        .bind(ids)
        .fetch_all(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            hits.push(ChunkHit {
                chunk_id: row.try_get("id").map_err(map_err)?,
                document_id: row.try_get("document_id").map_err(map_err)?,
                filename: row.try_get("filename").map_err(map_err)?,
                text: row.try_get("text").map_err(map_err)?,
                char_start: i64::from(row.try_get::<i32, _>("char_start").map_err(map_err)?),
                char_end: i64::from(row.try_get::<i32, _>("char_end").map_err(map_err)?),
                page: row.try_get("page_start").map_err(map_err)?,
                heading_path: row.try_get("heading_path").map_err(map_err)?,
                metadata: row.try_get("metadata").map_err(map_err)?,
            });
        }
        Ok(hits)
    }

    async fn log_queries(&self, entries: &[QueryLogEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        // The log is analytics: its commit does not wait for the disk (a server crash may lose
        // its last fraction of a second, never the database's consistency). Flushing the WAL
        // for it was the largest part of PostgreSQL's work for a cached query.
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await.map_err(map_err)?;
        for part in entries.chunks(super::QUERY_LOG_ROWS_PER_INSERT) {
            query_log_insert(part).build().execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn record_feedback(&self, feedback: &FeedbackEntry) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO query_feedback (query_id, rating, comment) VALUES ($1, $2, $3)")
            .bind(&feedback.query_id)
            .bind(&feedback.rating)
            .bind(&feedback.comment)
            .execute(&mut *self.conn().await?)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn status(&self) -> Result<Vec<StatusRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.name, d.status, count(*) AS documents, coalesce(sum(d.chunk_count), 0)::bigint AS chunks,
                    coalesce(sum(t.tokens), 0)::bigint AS tokens
             FROM documents d JOIN collections c ON c.id = d.collection_id
             LEFT JOIN (SELECT document_id, sum(token_count) AS tokens FROM chunks GROUP BY document_id) t
                    ON t.document_id = d.id
             GROUP BY c.name, d.status ORDER BY c.name, d.status",
        )
        .fetch_all(&mut *self.conn().await?)
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
        let groups: Vec<(Option<String>, bool, i64, f64, f64)> = sqlx::query_as(
            "SELECT cache_layer, error_code IS NOT NULL, count(*), coalesce(sum(latency_ms), 0)::float8,
                    coalesce(sum(cost_usd), 0)::float8
             FROM query_log WHERE created_at >= $1 GROUP BY 1, 2",
        )
        .bind(since)
        .fetch_all(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        let (up, down): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE rating = 'up'), count(*) FILTER (WHERE rating = 'down')
             FROM query_feedback WHERE created_at >= $1",
        )
        .bind(since)
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        Ok(QuerySummary::from_groups(&groups, up, down))
    }

    async fn failed_documents(&self, collection: Option<&str>) -> Result<Vec<FailedDocument>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, c.name, d.filename, d.content_type, d.storage_path, d.content, d.metadata, d.failure_reason
             FROM documents d JOIN collections c ON c.id = d.collection_id
             WHERE d.status = 'failed' AND ($1 IS NULL OR c.name = $1)
             ORDER BY d.id",
        )
        .bind(collection)
        .fetch_all(&mut *self.conn().await?)
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
                    metadata: row.try_get("metadata").map_err(map_err)?,
                    failure_reason: row.try_get("failure_reason").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.conn().await?).await.map_err(map_err)?;
        Ok(())
    }

    fn pools(&self) -> Vec<PoolStats> {
        vec![PoolStats::of("main", &self.pool)]
    }

    async fn collections(&self) -> Result<Vec<Collection>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM collections ORDER BY name")
            .fetch_all(&mut *self.conn().await?)
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
        // Keyset pages over (collection_id, id): each page is one index range scan.
        let rows = sqlx::query(
            "SELECT id, embedding FROM chunks
             WHERE collection_id = $1 AND id > $2 AND deleted_at IS NULL
             ORDER BY id LIMIT $3",
        )
        .bind(collection_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        collect_vectors(&rows, dimensions)
    }

    async fn live_state(&self, collection_id: i64) -> Result<(i64, i64), StoreError> {
        // One statement reads one snapshot, and chunks commit with their log entry.
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM chunks WHERE collection_id = $1 AND deleted_at IS NULL),
                    (SELECT coalesce(max(seq), 0) FROM index_log WHERE collection_id = $1)",
        )
        .bind(collection_id)
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(map_err)
    }

    async fn record_generation(&self, record: &GenerationRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO index_generations
                 (collection_id, generation, ok, kind, vectors, expected, recall, log_seq, reason, timings)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .bind(&record.timings)
        .execute(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn last_generation(&self, collection_id: i64) -> Result<Option<GenerationRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT collection_id, generation, ok, kind, vectors, expected, recall, log_seq, reason, timings,
                    finished_at
             FROM index_generations WHERE collection_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(collection_id)
        .fetch_optional(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        row.map(|r| {
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
                timings: r.try_get("timings").map_err(map_err)?,
                finished_at: Some(r.try_get("finished_at").map_err(map_err)?),
            })
        })
        .transpose()
    }

    async fn claim_run(
        &self,
        job: &str,
        scheduled_for: chrono::DateTime<chrono::Utc>,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        // The primary key makes the insert succeed for one claimant; the update takes over only
        // a claim that was never finished and is older than the lease.
        let claimed = sqlx::query_scalar::<_, String>(
            "INSERT INTO scheduled_runs (job, scheduled_for, holder) VALUES ($1, $2, $3)
             ON CONFLICT (job, scheduled_for) DO UPDATE SET holder = EXCLUDED.holder, claimed_at = now()
             WHERE scheduled_runs.finished_at IS NULL
               AND scheduled_runs.claimed_at <= now() - make_interval(secs => $4)
             RETURNING holder",
        )
        .bind(job)
        .bind(scheduled_for)
        .bind(holder)
        .bind(lease.as_secs_f64())
        .fetch_optional(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        Ok(claimed.is_some())
    }

    async fn finish_run(&self, job: &str, scheduled_for: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE scheduled_runs SET finished_at = now() WHERE job = $1 AND scheduled_for = $2")
            .bind(job)
            .bind(scheduled_for)
            .execute(&mut *self.conn().await?)
            .await
            .map_err(map_err)?;
        Ok(())
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
             LEFT JOIN chunk_embeddings_next n ON n.chunk_id = c.id AND n.model = $2
             WHERE c.collection_id = $1 AND c.id > $3 AND c.deleted_at IS NULL AND n.chunk_id IS NULL
             ORDER BY c.id LIMIT $4",
        )
        .bind(collection_id)
        .bind(model)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        rows.iter().map(|r| Ok((r.try_get("id").map_err(map_err)?, r.try_get("text").map_err(map_err)?))).collect()
    }

    async fn stage_embeddings(&self, model: &str, vectors: &[(i64, Vec<f32>)]) -> Result<(), StoreError> {
        let ids: Vec<i64> = vectors.iter().map(|v| v.0).collect();
        let bytes: Vec<Vec<u8>> = vectors.iter().map(|v| encode_vector(&v.1)).collect();
        sqlx::query(
            "INSERT INTO chunk_embeddings_next (chunk_id, model, embedding)
             SELECT * FROM unnest($1::bigint[], array_fill($2::text, ARRAY[cardinality($1::bigint[])]), $3::bytea[])
             ON CONFLICT (chunk_id) DO UPDATE SET model = EXCLUDED.model, embedding = EXCLUDED.embedding",
        )
        .bind(&ids)
        .bind(model)
        .bind(&bytes)
        .execute(&mut *self.conn().await?)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn switch_model(&self, collection_id: i64, model: &str, dimensions: usize) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        // Persists hold KEY SHARE on the collection row: this waits for those in flight, and
        // the ones after it see the new model.
        sqlx::query("SELECT id FROM collections WHERE id = $1 FOR UPDATE")
            .bind(collection_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let missing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chunks c
             LEFT JOIN chunk_embeddings_next n ON n.chunk_id = c.id AND n.model = $2
             WHERE c.collection_id = $1 AND c.deleted_at IS NULL AND n.chunk_id IS NULL",
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
            "UPDATE chunks c SET embedding = n.embedding, model = n.model
             FROM chunk_embeddings_next n
             WHERE n.chunk_id = c.id AND n.model = $2 AND c.collection_id = $1",
        )
        .bind(collection_id)
        .bind(model)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "DELETE FROM chunk_embeddings_next n USING chunks c WHERE n.chunk_id = c.id AND c.collection_id = $1",
        )
        .bind(collection_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE collections SET embedding_model = $2, embedding_dimensions = $3 WHERE id = $1")
            .bind(collection_id)
            .bind(model)
            .bind(i32::try_from(dimensions).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(0)
    }

    async fn collection_model(&self, collection_id: i64) -> Result<Option<(String, i64)>, StoreError> {
        let row: Option<(Option<String>, Option<i32>)> =
            sqlx::query_as("SELECT embedding_model, embedding_dimensions FROM collections WHERE id = $1")
                .bind(collection_id)
                .fetch_optional(&mut *self.conn().await?)
                .await
                .map_err(map_err)?;
        Ok(row.and_then(|(m, d)| Some((m?, i64::from(d?)))))
    }
}

/// Appends an index log entry as the transaction's last step. The per-collection advisory lock
/// taken here is held until commit, so entries of one collection commit in sequence order (a
/// reader of `seq > applied` never skips one that commits late), while the rest of a persist —
/// its chunk inserts — runs without it.
async fn append_log(
    tx: &mut Transaction<'_, Postgres>,
    collection_id: i64,
    op: LogOp,
    chunk_ids: &[i64],
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(i32::try_from(collection_id).unwrap_or(i32::MAX))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    sqlx::query("INSERT INTO index_log (collection_id, op, chunk_ids) VALUES ($1, $2, $3)")
        .bind(collection_id)
        .bind(op.as_str())
        .bind(chunk_ids)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Marks the documents of `writes` (index into `documents`, collection id) ingested and inserts
/// all their chunks, each step one statement; returns each written document's chunk ids in
/// ordinal order.
async fn insert_batch(
    tx: &mut Transaction<'_, Postgres>,
    model: &str,
    documents: &[DocumentChunks<'_>],
    writes: &[(usize, i64)],
) -> Result<Vec<Vec<i64>>, StoreError> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let document_ids: Vec<i64> = writes.iter().map(|&(i, _)| documents[i].document_id).collect();
    let counts: Vec<i32> =
        writes.iter().map(|&(i, _)| i32::try_from(documents[i].chunks.len()).unwrap_or(i32::MAX)).collect();
    // Leftovers of documents that were deleted and are now uploaded again.
    sqlx::query("DELETE FROM chunks WHERE document_id = ANY($1)")
        .bind(&document_ids)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    let rows = writes.iter().map(|&(i, c)| (documents[i].document_id, c, documents[i].chunks));
    let mut cols = ChunkColumns::default();
    for (document_id, collection_id, chunks) in rows {
        for c in chunks {
            cols.documents.push(document_id);
            cols.collections.push(collection_id);
            cols.ordinals.push(c.ordinal);
            cols.texts.push(c.text.as_str());
            cols.tokens.push(c.token_count);
            cols.starts.push(c.char_start);
            cols.ends.push(c.char_end);
            cols.page_starts.push(c.page_start);
            cols.page_ends.push(c.page_end);
            cols.headings.push(c.heading_path.as_deref());
            cols.embeddings.push(encode_vector(&c.embedding));
        }
    }
    let inserted = sqlx::query(
        "INSERT INTO chunks (document_id, collection_id, model, ordinal, text, token_count, char_start,
                             char_end, page_start, page_end, heading_path, embedding)
         SELECT t.d, t.c, $3, t.o, t.x, t.k, t.s, t.e, t.ps, t.pe, t.h, t.v
         FROM UNNEST($1::bigint[], $2::bigint[], $4::int[], $5::text[], $6::int[], $7::int[], $8::int[],
                     $9::int[], $10::int[], $11::text[], $12::bytea[]) AS t(d, c, o, x, k, s, e, ps, pe, h, v)
         RETURNING id, document_id, ordinal",
    )
    .bind(&cols.documents)
    .bind(&cols.collections)
    .bind(model)
    .bind(&cols.ordinals)
    .bind(&cols.texts)
    .bind(&cols.tokens)
    .bind(&cols.starts)
    .bind(&cols.ends)
    .bind(&cols.page_starts)
    .bind(&cols.page_ends)
    .bind(&cols.headings)
    .bind(&cols.embeddings)
    .fetch_all(&mut **tx)
    .await
    .map_err(map_err)?;
    sqlx::query(
        "UPDATE documents SET status = 'ingested', chunk_count = u.n, failure_reason = NULL,
             ingested_at = now(), updated_at = now()
         FROM unnest($1::bigint[], $2::int[]) AS u(id, n) WHERE documents.id = u.id",
    )
    .bind(&document_ids)
    .bind(&counts)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    let mut by_document: std::collections::HashMap<i64, Vec<(i32, i64)>> = std::collections::HashMap::new();
    for row in inserted {
        let document_id: i64 = row.try_get("document_id").map_err(map_err)?;
        by_document
            .entry(document_id)
            .or_default()
            .push((row.try_get("ordinal").map_err(map_err)?, row.try_get("id").map_err(map_err)?));
    }
    Ok(document_ids
        .iter()
        .map(|id| {
            let mut ids = by_document.remove(id).unwrap_or_default();
            ids.sort_unstable();
            ids.into_iter().map(|(_, id)| id).collect()
        })
        .collect())
}

/// The columns of a multi-document chunk insert.
#[derive(Default)]
struct ChunkColumns<'a> {
    documents: Vec<i64>,
    collections: Vec<i64>,
    ordinals: Vec<i32>,
    texts: Vec<&'a str>,
    tokens: Vec<i32>,
    starts: Vec<i32>,
    ends: Vec<i32>,
    page_starts: Vec<Option<i32>>,
    page_ends: Vec<Option<i32>>,
    headings: Vec<Option<&'a str>>,
    embeddings: Vec<Vec<u8>>,
}

/// One multi-row insert of query log entries (at most [`super::QUERY_LOG_ROWS_PER_INSERT`]).
fn query_log_insert(entries: &[QueryLogEntry]) -> sqlx::QueryBuilder<Postgres> {
    let mut insert = sqlx::QueryBuilder::<Postgres>::new(super::QUERY_LOG_INSERT);
    insert.push_values(entries, |mut row, entry| {
        row.push_bind(&entry.collection)
            .push_bind(&entry.query)
            .push_bind(entry.top_k)
            .push_bind(&entry.chunk_ids)
            .push_bind(&entry.scores)
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
