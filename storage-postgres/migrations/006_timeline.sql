-- Timeline: when each checkpoint was written, each job's attempt history, and an index
-- on finished jobs' end times.

-- Set from the storage clock by every checkpoint write. Nullable without a default:
-- adding it rewrites no rows, and checkpoints written before this version stay NULL.
ALTER TABLE {schema}.checkpoints ADD COLUMN created_at timestamptz;

-- One ended attempt of a job. A type of this schema (every use names it qualified), so
-- it goes with the schema on `DROP SCHEMA ... CASCADE` and each schema has its own.
CREATE TYPE {schema}.attempt AS (
    attempt     integer,
    worker      text,
    started_at  timestamptz,
    finished_at timestamptz,
    outcome     text,
    error       text
);

-- The ended attempts of the job, oldest first. Each is appended by the statement that
-- ends the attempt (complete, fail, release, suspend, a stale lock's release, a cancel
-- of a running job), so the history costs no extra statement or round trip, never
-- touches the claim, and goes with its job on delete and purge. No index reads it. An
-- array of a composite type rather than `jsonb`: appending a row value builds no JSON
-- object, so the history adds about 1.5 µs of server time per job to the batch
-- completion where a `jsonb` array of objects added about 5.5 (best runs of a
-- bench/sql/statement_costs.sh variant). Read it with `unnest(attempts)` or
-- `(attempts[n]).outcome`. NULL until the first attempt ends; nullable without a
-- default, so adding it rewrites no rows (jobs that ran before this version have none).
ALTER TABLE {schema}.jobs ADD COLUMN attempts {schema}.attempt[];

-- Finished jobs by end time: what `finished_counts(since)` and the retention purge
-- (`completed_at < cut-off`) read, instead of a scan of the whole table. Partial, so
-- unfinished jobs are not in it.
CREATE INDEX jobs_finished ON {schema}.jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
