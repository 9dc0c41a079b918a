-- Version 5: observability. The trace context each job carries from the span that
-- enqueued it, and the registry of live workers.

-- The W3C traceparent of the enqueuing span; NULL when there was none (and for every job
-- enqueued before this version).
ALTER TABLE durable_jobs ADD COLUMN trace_context TEXT;

-- One row per worker, replaced when a worker registers again under its name and
-- renewed by its heartbeat. A worker whose last_seen is older than its lease_ms is dead;
-- prune removes the records of long-dead ones.
CREATE TABLE durable_jobs_workers (
    name       TEXT    PRIMARY KEY,
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    queues     TEXT    NOT NULL,                  -- JSON: [{"name": ..., "concurrency": ...}]
    version    TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,                  -- set from the storage's clock
    lease_ms   INTEGER NOT NULL
) WITHOUT ROWID;
