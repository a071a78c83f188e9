-- The original bytes of a small upload, kept in its row (committed with the claim) instead of
-- a file of the blob store; storage_path is then empty. See [storage] in_database_max_bytes.
ALTER TABLE documents ADD COLUMN content bytea;
