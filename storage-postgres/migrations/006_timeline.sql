-- Timeline: when each checkpoint was written, each job's attempt history, and an index
-- on finished jobs' end times.

-- Set from the storage clock by every checkpoint write. Nullable without a default:
-- adding it rewrites no rows, and checkpoints written before this version stay NULL.
ALTER TABLE {schema}.checkpoints ADD COLUMN created_at timestamptz;

-- The ended attempts of the job, oldest first, as a JSON array of
-- {"attempt", "worker", "started_at", "finished_at", "outcome", "error"} objects. Each
-- is appended by the statement that ends the attempt (complete, fail, release, suspend,
-- a stale lock's release, a cancel of a running job), so the history costs no extra
-- statement or round trip, never touches the claim, and goes with its job on delete and
-- purge. No index reads it. NULL until the first attempt ends; nullable without a
-- default, so adding it rewrites no rows (jobs that ran before this version have none).
ALTER TABLE {schema}.jobs ADD COLUMN attempts jsonb;

-- Finished jobs by end time: what `finished_counts(since)` and the retention purge
-- (`completed_at < cut-off`) read, instead of a scan of the whole table. Partial, so
-- unfinished jobs are not in it.
CREATE INDEX jobs_finished ON {schema}.jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
