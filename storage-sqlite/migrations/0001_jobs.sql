-- Version 1: the jobs table and its claim, lease and dedupe indexes.
-- Times are integer microseconds since the Unix epoch (UTC), from the storage's clock.
CREATE TABLE durable_jobs (
    -- AUTOINCREMENT: ids are never reused after a retention policy deletes old jobs.
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    task             TEXT    NOT NULL,
    payload          TEXT    NOT NULL,            -- JSON
    queue            TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    status           TEXT    NOT NULL,            -- pending|retrying|running|waiting|completed|failed|cancelled
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    lease_holder     TEXT,
    lease_token      INTEGER,
    lease_expires_at INTEGER,
    last_error       TEXT,
    result           TEXT,                        -- JSON
    dedupe_key       TEXT,
    timeout_ms       INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER,
    updated_at       INTEGER NOT NULL
);

-- Claims walk this index in claim order and stop at LIMIT; only claimable rows are in it.
CREATE INDEX durable_jobs_claim ON durable_jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying');

-- A dedupe key is unique among unfinished jobs.
CREATE UNIQUE INDEX durable_jobs_dedupe ON durable_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'retrying', 'running', 'waiting');
