-- The index change log: every persist and every delete appends an entry, in the same
-- transaction, naming the chunk ids it adds or removes. A vector index snapshot records the last
-- sequence it contains; catch-up replays the entries after it (adds and removes).
--
-- Gap safety: an entry's sequence is taken under a per-collection advisory lock acquired just
-- before the entry is written, as the transaction's last step, and held until commit. So a
-- later-numbered entry of a collection cannot commit before an earlier one: a reader of
-- `seq > applied` never skips an entry that commits late. Other collections' entries may
-- interleave in the sequence; readers filter by collection.
CREATE TABLE index_log (
    seq           BIGSERIAL PRIMARY KEY,
    collection_id BIGINT NOT NULL REFERENCES collections (id),
    op            TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    chunk_ids     BIGINT[] NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX index_log_collection_seq_idx ON index_log (collection_id, seq);

-- Which store this is: a snapshot made from another store (a recreated database, another
-- environment) must never be loaded here, since chunk ids there mean other chunks.
CREATE TABLE store_identity (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    id         TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO store_identity (id) VALUES (gen_random_uuid()::text);

-- Existing chunks become one 'add' entry per document, so replicas can start from the log.
INSERT INTO index_log (collection_id, op, chunk_ids)
SELECT d.collection_id, 'add', array_agg(c.id ORDER BY c.id)
FROM chunks c JOIN documents d ON d.id = c.document_id
WHERE c.deleted_at IS NULL
GROUP BY d.id, d.collection_id
ORDER BY min(c.id);
