-- graphile-worker's SQL API with graphile's semantics, in a schema of its own:
-- `{graphile_schema}` is the library's schema name followed by `_graphile` (for the
-- default schema: durable_jobs_graphile). Callers opt in by calling these functions
-- instead of graphile_worker.* (or by putting the schema on their search_path).
--
-- Why a schema of its own: graphile's add_job takes two more defaulted arguments (flags,
-- job_key_mode) than {schema}.add_job. An overload with defaults next to the existing
-- function would make every existing short call (add_job('task', '{..}')) ambiguous
-- ("function is not unique"), and changing {schema}.add_job in place would change what
-- existing callers' queue_name, max_attempts and job_key mean.
--
-- Mapping to the job table:
--   queue_name   -> serial_key (at most one running job per name, across all workers);
--                   the job stays on the routing queue 'default', which every worker serves.
--   priority     -> -priority (graphile runs smaller numbers first; here larger first).
--   max_attempts -> default 25.
--   job_key      -> dedupe_key (held by unfinished jobs only: pending, retrying, running,
--                   waiting), with job_key_mode replace (default), preserve_run_at or
--                   unsafe_dedupe. A key held by a running (or waiting) job is taken from
--                   it in replace and preserve_run_at modes: that job keeps running but
--                   will not retry (max_attempts = its attempt), and a new job gets the key.
--   A replaced job whose payload and the new payload are both JSON arrays gets the two
--   arrays concatenated (graphile's batch jobs); otherwise the new payload replaces it.
-- Bad input raises graphile's SQLSTATEs: GWBID (identifier), GWBQN (queue_name), GWBJK
-- (job_key), GWBMA (max_attempts), GWBKM (job_key_mode).
-- Admin functions leave running (and waiting) jobs alone, as graphile leaves locked ones.

CREATE SCHEMA IF NOT EXISTS {graphile_schema};

-- graphile's job_spec, for add_jobs.
CREATE TYPE {graphile_schema}.job_spec AS (
    identifier   text,
    payload      json,
    queue_name   text,
    run_at       timestamptz,
    max_attempts smallint,
    job_key      text,
    priority     smallint,
    flags        text[]
);

CREATE FUNCTION {graphile_schema}.add_job(
    identifier   text,
    payload      json        DEFAULT NULL,
    queue_name   text        DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer     DEFAULT NULL,
    job_key      text        DEFAULT NULL,
    priority     integer     DEFAULT NULL,
    flags        text[]      DEFAULT NULL,
    job_key_mode text        DEFAULT 'replace'
) RETURNS {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := {schema}.clock_now();
    v_job      {schema}.jobs;
    v_mode     text        := coalesce(add_job.job_key_mode, 'replace');
    v_task     text        := add_job.identifier;
    v_payload  jsonb       := coalesce(add_job.payload::jsonb, '{}'::jsonb);
    v_serial   text        := add_job.queue_name;
    v_run_at   timestamptz := coalesce(add_job.run_at, {schema}.clock_now());
    v_max      integer     := coalesce(add_job.max_attempts, 25);
    v_key      text        := add_job.job_key;
    v_priority integer     := -coalesce(add_job.priority, 0);
    v_flags    text[]      := coalesce(add_job.flags, '{}'::text[]);
BEGIN
    IF v_task IS NULL OR length(v_task) = 0 OR length(v_task) > 128 THEN
        RAISE EXCEPTION 'add_job: identifier must be 1 to 128 characters, found %', quote_nullable(v_task)
            USING ERRCODE = 'GWBID';
    END IF;
    IF v_serial IS NOT NULL AND (length(v_serial) = 0 OR length(v_serial) > 128) THEN
        RAISE EXCEPTION 'add_job: queue_name must be 1 to 128 characters, found %', quote_literal(v_serial)
            USING ERRCODE = 'GWBQN';
    END IF;
    IF v_max < 1 THEN
        RAISE EXCEPTION 'add_job: max_attempts must be at least 1, found %', v_max
            USING ERRCODE = 'GWBMA';
    END IF;
    IF v_mode NOT IN ('replace', 'preserve_run_at', 'unsafe_dedupe') THEN
        RAISE EXCEPTION 'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe'', found %', quote_literal(v_mode)
            USING ERRCODE = 'GWBKM';
    END IF;
    IF v_key IS NOT NULL AND (length(v_key) = 0 OR length(v_key) > 512) THEN
        RAISE EXCEPTION 'add_job: job_key must be 1 to 512 characters (NULL for no key), found % characters', length(v_key)
            USING ERRCODE = 'GWBJK';
    END IF;

    IF v_key IS NULL THEN
        INSERT INTO {schema}.jobs AS j
            (task, payload, queue, run_at, max_attempts, priority, serial_key, flags, created_at, updated_at)
        VALUES (v_task, v_payload, 'default', v_run_at, v_max, v_priority, v_serial, v_flags, v_now, v_now)
        RETURNING * INTO v_job;
        RETURN v_job;
    END IF;

    IF v_mode = 'unsafe_dedupe' THEN
        -- The unfinished job holding the key is returned unchanged.
        LOOP
            INSERT INTO {schema}.jobs AS j
                (task, payload, queue, run_at, max_attempts, priority, serial_key, flags, dedupe_key, created_at, updated_at)
            VALUES (v_task, v_payload, 'default', v_run_at, v_max, v_priority, v_serial, v_flags, v_key, v_now, v_now)
            ON CONFLICT (dedupe_key)
                WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'retrying', 'running', 'waiting')
                DO NOTHING
            RETURNING * INTO v_job;
            IF FOUND THEN
                RETURN v_job;
            END IF;
            SELECT * INTO v_job FROM {schema}.jobs AS j
            WHERE j.dedupe_key = v_key AND j.status IN ('pending', 'retrying', 'running', 'waiting');
            IF FOUND THEN
                RETURN v_job;
            END IF;
            -- The holder finished in between: try again.
        END LOOP;
    END IF;

    -- replace / preserve_run_at.
    LOOP
        -- A running (or suspended) holder keeps running without the key, and will not
        -- retry: graphile sets a locked holder's attempts to max_attempts.
        UPDATE {schema}.jobs AS j
        SET dedupe_key = NULL,
            max_attempts = CASE WHEN j.status = 'running' THEN greatest(j.attempt, 1) ELSE j.max_attempts END,
            updated_at = v_now
        WHERE j.dedupe_key = v_key AND j.status IN ('running', 'waiting');

        INSERT INTO {schema}.jobs AS j
            (task, payload, queue, run_at, max_attempts, priority, serial_key, flags, dedupe_key, created_at, updated_at)
        VALUES (v_task, v_payload, 'default', v_run_at, v_max, v_priority, v_serial, v_flags, v_key, v_now, v_now)
        ON CONFLICT (dedupe_key)
            WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'retrying', 'running', 'waiting')
        DO UPDATE SET
            task = excluded.task,
            payload = CASE WHEN jsonb_typeof(j.payload) = 'array' AND jsonb_typeof(excluded.payload) = 'array'
                           THEN j.payload || excluded.payload
                           ELSE excluded.payload END,
            queue = excluded.queue,
            serial_key = excluded.serial_key,
            max_attempts = excluded.max_attempts,
            run_at = CASE WHEN v_mode = 'preserve_run_at' THEN j.run_at ELSE excluded.run_at END,
            priority = excluded.priority,
            flags = excluded.flags,
            attempt = 0,
            status = 'pending',
            last_error = NULL,
            updated_at = v_now
        WHERE j.status IN ('pending', 'retrying')
        RETURNING * INTO v_job;
        IF FOUND THEN
            RETURN v_job;
        END IF;
        -- The holder was claimed in between: take the key from it and try again.
    END LOOP;
END
$$;

-- Adds many jobs; a job_key replaces (or, with job_key_preserve_run_at, keeps the run_at
-- of) its holder, as in graphile. Returns the rows in the order of specs.
CREATE FUNCTION {graphile_schema}.add_jobs(
    specs                   {graphile_schema}.job_spec[],
    job_key_preserve_run_at boolean DEFAULT false
) RETURNS SETOF {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_spec {graphile_schema}.job_spec;
BEGIN
    IF specs IS NULL THEN
        RETURN;
    END IF;
    FOREACH v_spec IN ARRAY specs LOOP
        RETURN NEXT {graphile_schema}.add_job(
            identifier   => v_spec.identifier,
            payload      => v_spec.payload,
            queue_name   => v_spec.queue_name,
            run_at       => v_spec.run_at,
            max_attempts => v_spec.max_attempts::integer,
            job_key      => v_spec.job_key,
            priority     => v_spec.priority::integer,
            flags        => v_spec.flags,
            job_key_mode => CASE WHEN coalesce(add_jobs.job_key_preserve_run_at, false)
                                 THEN 'preserve_run_at' ELSE 'replace' END
        );
    END LOOP;
END
$$;

-- Removes the job holding job_key: a pending or retrying job is cancelled (kept as a
-- cancelled row, where graphile deletes it); a running or waiting one keeps running
-- without the key and will not retry. Returns the row, or NULL when no unfinished job
-- holds the key.
CREATE FUNCTION {graphile_schema}.remove_job(job_key text) RETURNS {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := {schema}.clock_now();
    v_job {schema}.jobs;
BEGIN
    UPDATE {schema}.jobs AS j
    SET status = 'cancelled', last_error = 'removed by remove_job',
        completed_at = v_now, updated_at = v_now
    WHERE j.dedupe_key = remove_job.job_key AND j.status IN ('pending', 'retrying')
    RETURNING * INTO v_job;
    IF FOUND THEN
        RETURN v_job;
    END IF;
    UPDATE {schema}.jobs AS j
    SET dedupe_key = NULL,
        max_attempts = CASE WHEN j.status = 'running' THEN greatest(j.attempt, 1) ELSE j.max_attempts END,
        updated_at = v_now
    WHERE j.dedupe_key = remove_job.job_key AND j.status IN ('running', 'waiting')
    RETURNING * INTO v_job;
    RETURN v_job;
END
$$;

-- Marks jobs completed (graphile deletes them). Only pending, retrying and failed jobs
-- are touched; running and waiting ones are ignored. Returns the completed rows.
CREATE FUNCTION {graphile_schema}.complete_jobs(job_ids bigint[]) RETURNS SETOF {schema}.jobs
LANGUAGE sql AS $$
    UPDATE {schema}.jobs AS j
    SET status = 'completed', completed_at = {schema}.clock_now(), updated_at = {schema}.clock_now()
    WHERE j.id = ANY(complete_jobs.job_ids) AND j.status IN ('pending', 'retrying', 'failed')
    RETURNING j.*
$$;

-- Fails jobs for good with error_message (default 'Manually marked as failed'). Only
-- pending, retrying and failed jobs are touched. Returns the failed rows.
CREATE FUNCTION {graphile_schema}.permanently_fail_jobs(job_ids bigint[], error_message text DEFAULT NULL)
RETURNS SETOF {schema}.jobs
LANGUAGE sql AS $$
    UPDATE {schema}.jobs AS j
    SET status = 'failed',
        last_error = coalesce(permanently_fail_jobs.error_message, 'Manually marked as failed'),
        completed_at = {schema}.clock_now(), updated_at = {schema}.clock_now()
    WHERE j.id = ANY(permanently_fail_jobs.job_ids) AND j.status IN ('pending', 'retrying', 'failed')
    RETURNING j.*
$$;

-- Changes run_at, priority (graphile's order: smaller first), attempts and max_attempts
-- of pending, retrying and failed jobs; NULL keeps a value. As in graphile, a job whose
-- attempts reach max_attempts is failed, and a failed job given attempts left runs again
-- (as retrying). Running and waiting jobs are ignored. Returns the changed rows.
CREATE FUNCTION {graphile_schema}.reschedule_jobs(
    job_ids      bigint[],
    run_at       timestamptz DEFAULT NULL,
    priority     integer     DEFAULT NULL,
    attempts     integer     DEFAULT NULL,
    max_attempts integer     DEFAULT NULL
) RETURNS SETOF {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := {schema}.clock_now();
BEGIN
    IF reschedule_jobs.max_attempts IS NOT NULL AND reschedule_jobs.max_attempts < 1 THEN
        RAISE EXCEPTION 'reschedule_jobs: max_attempts must be at least 1, found %', reschedule_jobs.max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF reschedule_jobs.attempts IS NOT NULL AND reschedule_jobs.attempts < 0 THEN
        RAISE EXCEPTION 'reschedule_jobs: attempts must not be negative, found %', reschedule_jobs.attempts
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH v AS (
        SELECT j.id,
               coalesce(reschedule_jobs.attempts, j.attempt) AS attempt,
               coalesce(reschedule_jobs.max_attempts, j.max_attempts) AS max_attempts
        FROM {schema}.jobs AS j
        WHERE j.id = ANY(reschedule_jobs.job_ids) AND j.status IN ('pending', 'retrying', 'failed')
        FOR UPDATE OF j
    )
    UPDATE {schema}.jobs AS j
    SET run_at = coalesce(reschedule_jobs.run_at, j.run_at),
        priority = coalesce(-reschedule_jobs.priority, j.priority),
        attempt = v.attempt,
        max_attempts = v.max_attempts,
        status = CASE WHEN v.attempt >= v.max_attempts THEN 'failed'
                      WHEN j.status = 'failed' THEN 'retrying'
                      ELSE j.status END,
        completed_at = CASE WHEN v.attempt >= v.max_attempts THEN coalesce(j.completed_at, v_now) ELSE NULL END,
        updated_at = v_now
    FROM v
    WHERE j.id = v.id
    RETURNING j.*;
END
$$;
