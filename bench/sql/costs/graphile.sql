-- graphile_worker 0.x: its jobs table as its migrations create it, its batch_get_jobs
-- claim (no job queues) and its batched completion, a DELETE.
CREATE SCHEMA g;
CREATE TABLE g.jobs (
    id bigserial PRIMARY KEY, job_queue_id integer, task_id integer NOT NULL,
    payload json DEFAULT '{}'::json NOT NULL, priority smallint DEFAULT 0 NOT NULL,
    run_at timestamptz DEFAULT now() NOT NULL, attempts smallint DEFAULT 0 NOT NULL,
    max_attempts smallint DEFAULT 25 NOT NULL, last_error text,
    created_at timestamptz DEFAULT now() NOT NULL, updated_at timestamptz DEFAULT now() NOT NULL,
    key text UNIQUE, locked_at timestamptz, locked_by text, revision integer DEFAULT 0 NOT NULL,
    flags jsonb,
    is_available boolean GENERATED ALWAYS AS ((locked_at IS NULL) AND (attempts < max_attempts)) STORED NOT NULL);
CREATE INDEX jobs_main_index ON g.jobs (priority, run_at) INCLUDE (id, task_id, job_queue_id)
    WHERE is_available = true;
CREATE INDEX jobs_no_queue_index ON g.jobs (priority, run_at) INCLUDE (id, task_id)
    WHERE is_available = true AND job_queue_id IS NULL;
CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
    INSERT INTO g.jobs (task_id, payload)
    SELECT 1, json_build_object('id', i, 'data', 'test_' || i) FROM generate_series(1, 100000) i;
$$;
CREATE FUNCTION claim_batch() RETURNS bigint[] LANGUAGE sql AS $$
    WITH j_raw AS (
        SELECT jobs.job_queue_id, jobs.priority, jobs.run_at, jobs.id FROM g.jobs AS jobs
        WHERE jobs.is_available = true AND run_at <= now() AND task_id = ANY('{1}'::int[])
          AND job_queue_id IS NULL
        ORDER BY priority ASC, run_at ASC LIMIT 1000 FOR UPDATE SKIP LOCKED
    ), j AS (
        SELECT DISTINCT ON (job_queue_id, CASE WHEN job_queue_id IS NULL THEN id END)
            job_queue_id, priority, run_at, id FROM j_raw
        ORDER BY job_queue_id, CASE WHEN job_queue_id IS NULL THEN id END,
            priority ASC, run_at ASC, id ASC
    ), u AS (
        UPDATE g.jobs AS jobs SET attempts = jobs.attempts + 1, locked_by = 'worker',
            locked_at = now()
        FROM j WHERE jobs.id = j.id RETURNING jobs.*
    )
    SELECT array_agg(u.id) FROM u;
$$;
CREATE FUNCTION complete_batch(ids bigint[]) RETURNS void LANGUAGE sql AS $$
    DELETE FROM g.jobs WHERE id = ANY(ids);
$$;
\ir measure.sql
CALL fill_timed('graphile_worker (delete)');
ANALYZE;
CALL measure('graphile_worker (delete)', :rounds);
