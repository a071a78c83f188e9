-- ragpipe schema, version 1.
-- PostgreSQL is the source of truth: every chunk keeps its embedding so the FAISS index can be
-- rebuilt without calling the embedding API again.

CREATE TABLE collections (
    id                   BIGSERIAL PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    -- Fixed by the first ingested chunk; a collection never mixes models or dimensions.
    embedding_model      TEXT,
    embedding_dimensions INTEGER,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    id             BIGSERIAL PRIMARY KEY,
    collection_id  BIGINT NOT NULL REFERENCES collections (id),
    sha256         TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    upload_id      TEXT NOT NULL,
    filename       TEXT NOT NULL,
    content_type   TEXT,
    size_bytes     BIGINT NOT NULL CHECK (size_bytes >= 0),
    storage_path   TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'ingested', 'no_text', 'failed', 'deleted')),
    failure_reason TEXT,
    chunk_count    INTEGER NOT NULL DEFAULT 0,
    metadata       JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    ingested_at    TIMESTAMPTZ,
    deleted_at     TIMESTAMPTZ,
    UNIQUE (collection_id, sha256)
);

CREATE INDEX documents_status_idx ON documents (collection_id, status);

-- A chunk id is also its FAISS id. Ids of one collection are allocated in commit order (the
-- persist transaction holds a per-collection advisory lock), so "id > watermark" is an exact
-- catch-up query for an index snapshot.
CREATE TABLE chunks (
    id            BIGSERIAL PRIMARY KEY,
    document_id   BIGINT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    collection_id BIGINT NOT NULL REFERENCES collections (id),
    ordinal       INTEGER NOT NULL CHECK (ordinal >= 0),
    text          TEXT NOT NULL,
    token_count   INTEGER NOT NULL CHECK (token_count >= 0),
    char_start    INTEGER NOT NULL CHECK (char_start >= 0),
    char_end      INTEGER NOT NULL CHECK (char_end >= char_start),
    page_start    INTEGER,
    page_end      INTEGER,
    heading_path  TEXT,
    -- Little-endian f32 values, `dimensions * 4` bytes.
    embedding     BYTEA NOT NULL,
    model         TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at    TIMESTAMPTZ,
    UNIQUE (document_id, ordinal)
);

CREATE INDEX chunks_collection_id_idx ON chunks (collection_id, id);

CREATE TABLE query_log (
    id               BIGSERIAL PRIMARY KEY,
    collection       TEXT NOT NULL,
    query            TEXT NOT NULL,
    top_k            INTEGER NOT NULL,
    result_chunk_ids BIGINT[] NOT NULL DEFAULT '{}',
    scores           REAL[] NOT NULL DEFAULT '{}',
    error_code       TEXT,
    latency_ms       INTEGER NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX query_log_created_at_idx ON query_log (created_at);
