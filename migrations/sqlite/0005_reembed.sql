-- Staged re-embeddings: the same meaning as migrations/postgres/0004_reembed.sql.
CREATE TABLE chunk_embeddings_next (
    chunk_id  INTEGER PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    model     TEXT NOT NULL,
    embedding BLOB NOT NULL
);
