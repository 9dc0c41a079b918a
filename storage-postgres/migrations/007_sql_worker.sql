-- The SQL worker protocol: workers in any language take and finish jobs through SQL.
--
--   get_job(worker_id, task_identifiers, job_expiry, queue_names) claims one job with a
--     lease held by worker_id, or returns no row;
--   complete_job(worker_id, job_id, result) and fail_job(worker_id, job_id, error_message)
--     end the attempt, fenced: they succeed only while the job runs under a live lease
--     held by worker_id. Otherwise they raise SQLSTATE 'DJ001' (lease lost; the message
--     names the job, the worker and what became of the job) and change nothing; a job
--     that does not exist raises 'P0002' (no_data_found).
--
-- A worker id must be unique per running worker (for example host:pid:n): the fence is
-- the holder's name, so two workers sharing one id could finish each other's jobs.

-- The clock these functions read: `now()`. The test harness (feature `testing`)
-- replaces it with the schema's test clock, so SQL workers see the same time as the
-- storage's own statements in tests; nothing else should replace it.
CREATE FUNCTION {schema}.clock_now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT now() $$;

-- Claims one due job, in the Rust claim's order (priority desc, run_at, id) and under its
-- rules: status pending, retrying or waiting with run_at passed; not in a paused queue;
-- at most one running job per serial key (the claim takes the key's slot in
-- serial_slots). task_identifiers NULL or empty: any task. queue_names NULL: any queue
-- (a SQL worker then sorts every due job; name queues to walk the claim index instead).
-- Rows other claimers hold are skipped (FOR UPDATE SKIP LOCKED). The job becomes running
-- with attempt + 1, lease_holder = worker_id, a fresh lease_token and
-- lease_expires_at = now + job_expiry; its row is returned.
CREATE FUNCTION {schema}.get_job(
    worker_id        text,
    task_identifiers text[]   DEFAULT NULL,
    job_expiry       interval DEFAULT interval '4 hours',
    queue_names      text[]   DEFAULT NULL
) RETURNS SETOF {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := {schema}.clock_now();
    v_id      bigint;
    v_key     text;
    v_slot    bigint;
    v_skipped text[] := '{}';
BEGIN
    IF worker_id IS NULL OR length(worker_id) = 0 THEN
        RAISE EXCEPTION 'get_job: worker_id must not be empty' USING ERRCODE = '22023';
    END IF;
    IF job_expiry IS NULL OR job_expiry <= interval '0' THEN
        RAISE EXCEPTION 'get_job: job_expiry must be positive, found %', job_expiry
            USING ERRCODE = '22023';
    END IF;
    -- One row per step (LIMIT 1), not a FOR loop over the query: PL/pgSQL fetches a
    -- loop's rows ten at a time, which would lock up to ten jobs for the caller's whole
    -- transaction.
    LOOP
        SELECT j.id, j.serial_key INTO v_id, v_key FROM {schema}.jobs AS j
        WHERE j.status IN ('pending', 'retrying', 'waiting')
          AND j.run_at <= v_now
          AND (queue_names IS NULL OR j.queue = ANY(queue_names))
          AND (coalesce(cardinality(task_identifiers), 0) = 0 OR j.task = ANY(task_identifiers))
          AND NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = j.queue)
          AND (j.serial_key IS NULL OR (j.serial_key <> ALL(v_skipped) AND NOT EXISTS (
              SELECT 1 FROM {schema}.serial_slots s WHERE s.serial_key = j.serial_key)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT 1
        FOR UPDATE OF j SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF v_key IS NOT NULL THEN
            -- Waits for a racing claimer's commit; a key taken meanwhile is skipped.
            v_slot := NULL;
            INSERT INTO {schema}.serial_slots (serial_key, job_id)
            VALUES (v_key, v_id)
            ON CONFLICT (serial_key) DO NOTHING
            RETURNING job_id INTO v_slot;
            IF v_slot IS NULL THEN
                v_skipped := v_skipped || v_key;
                CONTINUE;
            END IF;
        END IF;
        RETURN QUERY
        UPDATE {schema}.jobs AS j
        SET status = 'running',
            attempt = j.attempt + 1,
            lease_holder = get_job.worker_id,
            -- 63 random bits: tokens only need to differ between leases of one job.
            lease_token = (floor(random() * 4294967296)::bigint << 31)
                          # floor(random() * 2147483648)::bigint,
            lease_expires_at = v_now + get_job.job_expiry,
            wake_requested = false,
            started_at = v_now,
            updated_at = v_now
        WHERE j.id = v_id
        RETURNING j.*;
        RETURN;
    END LOOP;
END
$$;

-- Raises the fencing error for job_id (called when a fenced update matched no row).
CREATE FUNCTION {schema}.sql_worker_refuse(fn text, worker_id text, job_id bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_job {schema}.jobs;
BEGIN
    SELECT * INTO v_job FROM {schema}.jobs AS j WHERE j.id = sql_worker_refuse.job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: no job with id %', fn, job_id USING ERRCODE = 'P0002';
    END IF;
    RAISE EXCEPTION '%: lease lost: job % is not held by worker %', fn, job_id, quote_literal(worker_id)
        USING ERRCODE = 'DJ001',
              DETAIL = format('The job is %s (holder %s, lease expires %s, attempt %s); its lease expired or was reclaimed, so this attempt''s outcome is discarded.',
                              v_job.status, coalesce(quote_literal(v_job.lease_holder), 'none'),
                              coalesce(v_job.lease_expires_at::text, 'never'), v_job.attempt),
              HINT = 'Do not retry this call: the job runs again (or ran) under another lease.';
END
$$;

-- Completes a job the worker holds, with its result, appending the attempt as completed
-- (as the Rust completion does). A parent is woken by jobs_wake_parent. Returns the row.
CREATE FUNCTION {schema}.complete_job(worker_id text, job_id bigint, result jsonb DEFAULT NULL)
RETURNS {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := {schema}.clock_now();
    v_job {schema}.jobs;
BEGIN
    UPDATE {schema}.jobs AS j
    SET status = 'completed',
        result = complete_job.result,
        attempts = array_append(coalesce(j.attempts, '{}'), ROW(j.attempt, j.lease_holder,
            coalesce(j.started_at, v_now), v_now, 'completed'::text, NULL::text)::{schema}.attempt),
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
        completed_at = v_now, updated_at = v_now
    WHERE j.id = complete_job.job_id
      AND j.status = 'running'
      AND j.lease_holder = complete_job.worker_id
      AND j.lease_expires_at > v_now
    RETURNING j.* INTO v_job;
    IF NOT FOUND THEN
        PERFORM {schema}.sql_worker_refuse('complete_job', worker_id, job_id);
    END IF;
    RETURN v_job;
END
$$;

-- Fails the attempt of a job the worker holds. With attempts left the job retries after
-- least(2^attempt seconds, 1 hour) (attempt being the one that failed: 2 s, 4 s, 8 s, ...),
-- recorded as retrying; otherwise it fails for good, recorded as failed, and a parent is
-- woken by jobs_wake_parent. Returns the row.
CREATE FUNCTION {schema}.fail_job(worker_id text, job_id bigint, error_message text)
RETURNS {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := {schema}.clock_now();
    v_job {schema}.jobs;
BEGIN
    UPDATE {schema}.jobs AS j
    SET status = CASE WHEN j.attempt < j.max_attempts THEN 'retrying' ELSE 'failed' END,
        run_at = CASE WHEN j.attempt < j.max_attempts
                      THEN v_now + least(power(2, least(j.attempt, 12)) * interval '1 second', interval '1 hour')
                      ELSE j.run_at END,
        completed_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE v_now END,
        last_error = fail_job.error_message,
        attempts = array_append(coalesce(j.attempts, '{}'), ROW(j.attempt, j.lease_holder,
            coalesce(j.started_at, v_now), v_now,
            CASE WHEN j.attempt < j.max_attempts THEN 'retrying' ELSE 'failed' END,
            fail_job.error_message)::{schema}.attempt),
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = v_now
    WHERE j.id = fail_job.job_id
      AND j.status = 'running'
      AND j.lease_holder = fail_job.worker_id
      AND j.lease_expires_at > v_now
    RETURNING j.* INTO v_job;
    IF NOT FOUND THEN
        PERFORM {schema}.sql_worker_refuse('fail_job', worker_id, job_id);
    END IF;
    RETURN v_job;
END
$$;
