-- The index change log and the store's identity: the same meaning as
-- migrations/postgres/0002_index_log.sql. SQLite has one writer at a time, so sequences commit
-- in order without a lock; chunk id lists are JSON arrays.
CREATE TABLE index_log (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id INTEGER NOT NULL REFERENCES collections (id),
    op            TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    chunk_ids     TEXT NOT NULL CHECK (json_valid(chunk_ids)),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX index_log_collection_seq_idx ON index_log (collection_id, seq);

CREATE TABLE store_identity (
    singleton  INTEGER PRIMARY KEY DEFAULT 1 CHECK (singleton = 1),
    id         TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO store_identity (id) VALUES (lower(hex(randomblob(16))));

INSERT INTO index_log (collection_id, op, chunk_ids)
SELECT d.collection_id, 'add', json_group_array(c.id)
FROM documents d JOIN chunks c ON c.document_id = d.id
WHERE c.deleted_at IS NULL
GROUP BY d.id
ORDER BY min(c.id);
