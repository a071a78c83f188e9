-- The embedded queue (no RabbitMQ): durable jobs with leases, dead letters, an event log that
-- other processes on the machine follow, and the consumers' heartbeats. Times are Unix
-- milliseconds.

-- A job is available when `visible_at <= now`. Leasing it sets `lease_owner`, bumps `attempts`
-- and moves `visible_at` to the lease's expiry (renewed while the consumer works), so a job
-- whose consumer died becomes available again by itself. Acknowledging deletes the row.
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT NOT NULL,
    body        BLOB NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    visible_at  INTEGER NOT NULL,
    lease_owner TEXT,
    enqueued_at INTEGER NOT NULL
);

CREATE INDEX jobs_ready_idx ON jobs (queue, visible_at, id);

CREATE TABLE dead_letters (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    queue     TEXT NOT NULL,
    body      BLOB NOT NULL,
    code      TEXT NOT NULL,
    reason    TEXT NOT NULL,
    retryable INTEGER NOT NULL,
    attempts  INTEGER NOT NULL,
    dead_at   INTEGER NOT NULL
);

-- Events in publish order; subscribers read `id > cursor`. Old rows are pruned.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    routing_key  TEXT NOT NULL,
    body         BLOB NOT NULL,
    published_at INTEGER NOT NULL
);

-- One row per live consumer, refreshed with its leases: `ragpipe ingest` looks here to see
-- whether a worker will take its jobs or it must process them itself.
CREATE TABLE consumers (
    id           TEXT PRIMARY KEY,
    queue        TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
