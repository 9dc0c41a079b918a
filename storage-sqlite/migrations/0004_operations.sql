-- Version 4: operations. Serial keys, flags and tags on jobs; schedules; paused queues.

-- At most one job per serial key runs at a time. NULL for most jobs.
ALTER TABLE durable_jobs ADD COLUMN serial_key TEXT;

-- Flags a worker may refuse to claim, as a JSON array of strings; NULL when none, so the
-- claim pays for the check only on flagged jobs (json_each over the array).
ALTER TABLE durable_jobs ADD COLUMN flags TEXT;

-- The running job of each serial key: a claim skips keys found here. Only running jobs
-- with a key enter it, so claiming and completing unkeyed jobs never writes to it.
CREATE INDEX durable_jobs_serial_running ON durable_jobs (serial_key)
    WHERE serial_key IS NOT NULL AND status = 'running';

-- Claimable jobs with a serial key, in claim order per key: a claim takes only the
-- first of each key. Jobs without a key never enter it, so unkeyed jobs pay nothing.
-- (Its WHERE must match the claim query's terms exactly.)
CREATE INDEX durable_jobs_serial_claim ON durable_jobs (serial_key, priority DESC, run_at, id)
    WHERE serial_key IS NOT NULL AND status IN ('pending', 'retrying', 'waiting');

-- Tags, one row per job and tag: a listing by tag walks (tag, job_id) instead of parsing
-- every job's JSON. Deleted with their job.
CREATE TABLE durable_jobs_tags (
    job_id INTEGER NOT NULL REFERENCES durable_jobs (id) ON DELETE CASCADE,
    tag    TEXT    NOT NULL,
    PRIMARY KEY (job_id, tag)
) WITHOUT ROWID;

CREATE INDEX durable_jobs_tags_tag ON durable_jobs_tags (tag, job_id);

-- Recurring schedules. The cursor (last tick handled) is RFC 3339 text with nanoseconds
-- in UTC: exact for the compare-and-set a scheduler does on it, and the fixed-width
-- form compares equal exactly when the times are equal.
CREATE TABLE durable_jobs_schedules (
    name        TEXT    PRIMARY KEY,
    definition  TEXT    NOT NULL,                 -- JSON: the serialized Schedule
    paused      INTEGER NOT NULL DEFAULT 0,
    cursor      TEXT    NOT NULL,
    last_job_id INTEGER,                          -- no foreign key: the job may be purged
    updated_at  INTEGER NOT NULL
);

-- Queues nothing is claimed from until resumed.
CREATE TABLE durable_jobs_paused_queues (
    queue     TEXT    PRIMARY KEY,
    paused_at INTEGER NOT NULL
) WITHOUT ROWID;
