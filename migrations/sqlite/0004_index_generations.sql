-- Index generations and scheduled runs: the same meaning as
-- migrations/postgres/0003_index_generations.sql. Times are Unix milliseconds.
CREATE TABLE index_generations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id INTEGER NOT NULL REFERENCES collections (id),
    generation    INTEGER NOT NULL,
    ok            INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    vectors       INTEGER NOT NULL,
    expected      INTEGER NOT NULL,
    recall        REAL,
    log_seq       INTEGER NOT NULL,
    reason        TEXT,
    timings       TEXT NOT NULL DEFAULT '{}',
    finished_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX index_generations_collection_idx ON index_generations (collection_id, id);

CREATE TABLE scheduled_runs (
    job           TEXT NOT NULL,
    scheduled_for INTEGER NOT NULL,
    holder        TEXT NOT NULL,
    claimed_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    PRIMARY KEY (job, scheduled_for)
);
