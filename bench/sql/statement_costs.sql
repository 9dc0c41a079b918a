-- See statement_costs.sh. Expects schema dj migrated; creates schema g (graphile_worker's
-- jobs table, as its migrations create it) and fills both with 100,000 jobs.
\set rounds 100
INSERT INTO dj.jobs (task, payload)
SELECT 'noop', jsonb_build_object('id', i, 'data', 'test_' || i) FROM generate_series(1, 100000) i;
VACUUM ANALYZE dj.jobs;

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
INSERT INTO g.jobs (task_id, payload)
SELECT 1, json_build_object('id', i, 'data', 'test_' || i) FROM generate_series(1, 100000) i;
VACUUM ANALYZE g.jobs;

CREATE FUNCTION pg_temp.ours(n int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; m jsonb; t0 timestamptz; tc interval := '0'; td interval := '0';
BEGIN
  FOR i IN 1..n LOOP
    t0 := clock_timestamp();
    -- storage-postgres/src/sql.rs CLAIM with LEASE, 1000 jobs, token 7.
    WITH cand AS (
        SELECT id, serial_key, priority, run_at FROM dj.jobs
        WHERE status IN ('pending', 'retrying', 'waiting') AND queue = 'default'
          AND run_at <= now() AND NOT (flags && '{}'::text[])
          AND NOT EXISTS (SELECT 1 FROM dj.paused_queues p WHERE p.queue = 'default')
          AND (serial_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM dj.serial_slots s WHERE s.serial_key = jobs.serial_key))
        ORDER BY priority DESC, run_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED
    ), firsts AS (
        SELECT DISTINCT ON (serial_key) id, serial_key FROM cand WHERE serial_key IS NOT NULL
        ORDER BY serial_key, priority DESC, run_at, id
    ), slots AS (
        INSERT INTO dj.serial_slots (serial_key, job_id) SELECT serial_key, id FROM firsts
        ON CONFLICT (serial_key) DO NOTHING RETURNING job_id
    ), c AS (
        SELECT id FROM cand WHERE serial_key IS NULL UNION ALL SELECT job_id FROM slots
    ), u AS (
        UPDATE dj.jobs AS j SET status = 'running', attempt = j.attempt + 1, lease_holder = 'w',
            lease_token = 7, lease_expires_at = now() + interval '30 s', wake_requested = false,
            started_at = now(), updated_at = now()
        FROM c WHERE j.id = c.id RETURNING j.*
    )
    SELECT array_agg(id), jsonb_object_agg(id::text, jsonb_build_array(lease_token, null))
    INTO ids, m FROM u;
    tc := tc + (clock_timestamp() - t0);
    t0 := clock_timestamp();
    -- COMPLETE_MANY.
    UPDATE dj.jobs AS j
    SET status = 'completed', result = m -> j.id::text -> 1,
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
        completed_at = now(), updated_at = now()
    WHERE j.id = ANY(ids)
      AND CASE WHEN j.status = 'running' THEN j.lease_token = (m -> j.id::text ->> 0)::bigint
               ELSE false END;
    td := td + (clock_timestamp() - t0);
  END LOOP;
  RETURN format('durable-jobs     claim %s us/job, complete (update, row kept) %s us/job',
                round(extract(epoch FROM tc) * 1e6 / (n * 1000)),
                round(extract(epoch FROM td) * 1e6 / (n * 1000)));
END $$;

CREATE FUNCTION pg_temp.graphile(n int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; t0 timestamptz; tc interval := '0'; td interval := '0';
BEGIN
  FOR i IN 1..n LOOP
    t0 := clock_timestamp();
    -- graphile_worker_queries batch_get_jobs, 1000 jobs, no job queues.
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
    SELECT array_agg(u.id) INTO ids FROM u;
    tc := tc + (clock_timestamp() - t0);
    t0 := clock_timestamp();
    -- graphile_worker's batched completion.
    DELETE FROM g.jobs WHERE id = ANY(ids);
    td := td + (clock_timestamp() - t0);
  END LOOP;
  RETURN format('graphile_worker  claim %s us/job, complete (delete)          %s us/job',
                round(extract(epoch FROM tc) * 1e6 / (n * 1000)),
                round(extract(epoch FROM td) * 1e6 / (n * 1000)));
END $$;

\pset tuples_only on
\pset format unaligned
SELECT pg_temp.ours(:rounds);
SELECT pg_temp.graphile(:rounds);
