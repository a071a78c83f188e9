-- Index generations: every rebuild of a collection's vector index (nightly or `ragpipe reindex`)
-- records what it built and whether it passed verification. Replicas and `ragpipe status` read
-- the newest row; a failed row keeps the previous generation in service.
CREATE TABLE index_generations (
    id            BIGSERIAL PRIMARY KEY,
    collection_id BIGINT NOT NULL REFERENCES collections (id),
    generation    BIGINT NOT NULL,
    ok            BOOLEAN NOT NULL,
    kind          TEXT NOT NULL,
    vectors       BIGINT NOT NULL,
    expected      BIGINT NOT NULL,
    recall        DOUBLE PRECISION,
    log_seq       BIGINT NOT NULL,
    reason        TEXT,
    timings       JSONB NOT NULL DEFAULT '{}',
    finished_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX index_generations_collection_idx ON index_generations (collection_id, id);

-- Scheduled runs: one row per job and trigger time. Inserting it is how one scheduler among
-- several becomes the leader of that run; a claim whose holder died unfinished can be taken
-- over after its lease.
CREATE TABLE scheduled_runs (
    job           TEXT NOT NULL,
    scheduled_for TIMESTAMPTZ NOT NULL,
    holder        TEXT NOT NULL,
    claimed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    PRIMARY KEY (job, scheduled_for)
);
