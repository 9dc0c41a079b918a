-- Version 2: durable-call checkpoints, and an index for the expired-lease sweep.
CREATE TABLE durable_jobs_checkpoints (
    job_id  INTEGER NOT NULL REFERENCES durable_jobs (id) ON DELETE CASCADE,
    key     TEXT    NOT NULL,                     -- hierarchical position, e.g. 2/0
    name    TEXT    NOT NULL,                     -- the call's name, checked on replay
    ok      INTEGER NOT NULL,                     -- 1: value is the JSON result; 0: value is the error message
    value   TEXT    NOT NULL,
    PRIMARY KEY (job_id, key)
) WITHOUT ROWID;

CREATE INDEX durable_jobs_lease_expiry ON durable_jobs (lease_expires_at)
    WHERE status = 'running';
