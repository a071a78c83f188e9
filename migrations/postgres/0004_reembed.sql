-- `ragpipe reindex --re-embed`: new vectors of a collection's chunks under another model, staged
-- here until every live chunk has one; then one transaction moves them into `chunks` and switches
-- the collection's model (see PgStore::switch_model). Resumable: staged rows survive a restart.
CREATE TABLE chunk_embeddings_next (
    chunk_id  BIGINT PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    model     TEXT NOT NULL,
    embedding BYTEA NOT NULL
);
