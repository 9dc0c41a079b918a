-- fill() and claim_batch() on durable-jobs' own schema (dj): an earlier, simpler form of
-- storage-postgres/src/sql.rs CLAIM with LEASE (one scan in claim order; no walk per
-- priority, no parking of full keys, no rate limit), 1000 jobs under token 7, kept as the
-- common claim of the storage-design variants (current.sql, move.sql) so that only their
-- completions differ. It is no measure of the shipped claim: on this schema its scan
-- costs 53-61 us/job here, where `pgbench -M prepared -t 100` of the shipped claim
-- (rendered, 1000 jobs a call, 100,000 jobs) took 15.7 ms a call, about 16 us/job.
-- Included by current.sql and move.sql.
CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
    INSERT INTO dj.jobs (task, payload)
    SELECT 'noop', jsonb_build_object('id', i, 'data', 'test_' || i) FROM generate_series(1, 100000) i;
$$;
CREATE FUNCTION claim_batch() RETURNS bigint[] LANGUAGE sql AS $$
    WITH cand AS (
        SELECT id, serial_key, priority, run_at FROM dj.jobs
        WHERE status IN ('pending', 'retrying', 'waiting') AND queue = 'default'
          AND run_at <= now() AND NOT (flags && '{}'::text[])
          AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM dj.paused_queues p WHERE p.queue = 'default')
          AND (serial_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM dj.serial_slots s WHERE s.serial_key = jobs.serial_key))
        ORDER BY priority DESC, run_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED
    ), firsts AS (
        SELECT DISTINCT ON (serial_key) id, serial_key FROM cand WHERE serial_key IS NOT NULL
        ORDER BY serial_key, priority DESC, run_at, id
    ), slots AS (
        INSERT INTO dj.serial_slots (serial_key, slot, job_id) SELECT serial_key, 1, id FROM firsts
        ON CONFLICT (serial_key, slot) DO NOTHING RETURNING job_id
    ), c AS (
        SELECT id FROM cand WHERE serial_key IS NULL UNION ALL SELECT job_id FROM slots
    ), u AS (
        UPDATE dj.jobs AS j SET status = 'running', attempt = j.attempt + 1, lease_holder = 'w',
            lease_token = 7, lease_expires_at = now() + interval '30 s', wake_requested = false,
            started_at = now(), updated_at = now()
        WHERE j.id = ANY(ARRAY(SELECT id FROM c))
        RETURNING j.id, j.task, j.payload, j.queue, j.priority, j.status, j.attempt,
            j.max_attempts, j.run_at, j.lease_holder, j.lease_token, j.lease_expires_at,
            j.last_error, j.result, j.dedupe_key, j.timeout_ms, j.created_at, j.started_at,
            j.completed_at, j.updated_at
    )
    SELECT array_agg(id) FROM u;
$$;
