-- ragpipe schema for the embedded store (SQLite), version 1: the same tables, constraints and
-- meanings as migrations/postgres/0001_init.sql. Timestamps are ISO-8601 UTC text; embeddings
-- are little-endian f32 blobs; JSON is text.

CREATE TABLE collections (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    name                 TEXT NOT NULL UNIQUE,
    -- Fixed by the first ingested chunk; a collection never mixes models or dimensions.
    embedding_model      TEXT,
    embedding_dimensions INTEGER,
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE documents (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id  INTEGER NOT NULL REFERENCES collections (id),
    sha256         TEXT NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    upload_id      TEXT NOT NULL,
    filename       TEXT NOT NULL,
    content_type   TEXT,
    size_bytes     INTEGER NOT NULL CHECK (size_bytes >= 0),
    storage_path   TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'ingested', 'no_text', 'failed', 'deleted')),
    failure_reason TEXT,
    chunk_count    INTEGER NOT NULL DEFAULT 0,
    metadata       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ingested_at    TEXT,
    deleted_at     TEXT,
    UNIQUE (collection_id, sha256)
);

CREATE INDEX documents_status_idx ON documents (collection_id, status);

-- A chunk id is also its FAISS id: AUTOINCREMENT never reuses an id, even after deletes.
-- SQLite has one writer at a time, so ids of a collection are allocated in commit order and
-- "id > watermark" is an exact catch-up query for an index snapshot.
CREATE TABLE chunks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id   INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    collection_id INTEGER NOT NULL REFERENCES collections (id),
    ordinal       INTEGER NOT NULL CHECK (ordinal >= 0),
    text          TEXT NOT NULL,
    token_count   INTEGER NOT NULL CHECK (token_count >= 0),
    char_start    INTEGER NOT NULL CHECK (char_start >= 0),
    char_end      INTEGER NOT NULL CHECK (char_end >= char_start),
    page_start    INTEGER,
    page_end      INTEGER,
    heading_path  TEXT,
    -- Little-endian f32 values, `dimensions * 4` bytes.
    embedding     BLOB NOT NULL,
    model         TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted_at    TEXT,
    UNIQUE (document_id, ordinal)
);

CREATE INDEX chunks_collection_id_idx ON chunks (collection_id, id);

CREATE TABLE query_log (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    collection       TEXT NOT NULL,
    query            TEXT NOT NULL,
    top_k            INTEGER NOT NULL,
    -- JSON arrays (PostgreSQL: bigint[] and real[]).
    result_chunk_ids TEXT NOT NULL DEFAULT '[]',
    scores           TEXT NOT NULL DEFAULT '[]',
    error_code       TEXT,
    latency_ms       INTEGER NOT NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX query_log_created_at_idx ON query_log (created_at);
