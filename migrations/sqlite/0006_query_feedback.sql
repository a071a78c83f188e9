-- Every reply carries a query id; the log keeps it with the mode, the cache layer that answered,
-- token usage and cost, and clients' thumbs up/down on an answer are stored beside it.
ALTER TABLE query_log ADD COLUMN query_id TEXT;
ALTER TABLE query_log ADD COLUMN mode TEXT;
ALTER TABLE query_log ADD COLUMN cache_layer TEXT;
ALTER TABLE query_log ADD COLUMN input_tokens INTEGER;
ALTER TABLE query_log ADD COLUMN output_tokens INTEGER;
ALTER TABLE query_log ADD COLUMN cost_usd REAL;
CREATE UNIQUE INDEX query_log_query_id_idx ON query_log (query_id);

CREATE TABLE query_feedback (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id   TEXT NOT NULL,
    rating     TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment    TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX query_feedback_query_id_idx ON query_feedback (query_id);
