-- add_job takes the job's metadata (a JSON object, as NewJob::metadata and
-- JobOptions::metadata in Rust) as a last, defaulted argument.
--
-- The function is dropped and created again rather than overloaded: an overload with one
-- more defaulted argument would make every existing call that omits it ambiguous
-- ("function is not unique"). Existing calls, positional or named, keep their meaning:
-- the first seven arguments are unchanged. Triggers call add_job by name at run time,
-- so they pick the new function up. run_at defaults to the storage's clock
-- (clock_now(), which is now() outside tests).
DROP FUNCTION {schema}.add_job(text, json, text, timestamptz, integer, text, integer);

-- Enqueues one job and returns its row. Arguments follow graphile-worker's add_job
-- (identifier, payload, queue_name, run_at, max_attempts, job_key, priority), then the
-- job's metadata. A job_key held by an unfinished job returns that job unchanged
-- (dedupe), like the Rust API.
CREATE FUNCTION {schema}.add_job(
    identifier   text,
    payload      json        DEFAULT NULL,
    queue_name   text        DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer     DEFAULT NULL,
    job_key      text        DEFAULT NULL,
    priority     integer     DEFAULT NULL,
    metadata     jsonb       DEFAULT NULL
) RETURNS {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_job {schema}.jobs;
BEGIN
    IF identifier IS NULL OR length(identifier) = 0 OR length(identifier) > 128 THEN
        RAISE EXCEPTION 'add_job: identifier must be 1 to 128 characters, found %', quote_nullable(identifier)
            USING ERRCODE = '22023';
    END IF;
    IF queue_name IS NOT NULL AND queue_name !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
        RAISE EXCEPTION 'add_job: queue_name must be 1 to 128 characters from A-Z a-z 0-9 _ . : -, found %', quote_literal(queue_name)
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NOT NULL AND max_attempts < 1 THEN
        RAISE EXCEPTION 'add_job: max_attempts must be at least 1, found %', max_attempts
            USING ERRCODE = '22023';
    END IF;
    -- The same rules as the Rust API's (durable_jobs::metadata::validate_metadata).
    IF metadata IS NOT NULL AND jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION 'add_job: metadata must be a JSON object, found a JSON %', jsonb_typeof(metadata)
            USING ERRCODE = '22023';
    END IF;
    IF metadata IS NOT NULL AND metadata ? '' THEN
        RAISE EXCEPTION 'add_job: metadata keys must not be empty'
            USING ERRCODE = '22023';
    END IF;
    IF metadata IS NOT NULL AND octet_length(metadata::text) > 65536 THEN
        RAISE EXCEPTION 'add_job: metadata must be at most 65536 bytes serialized, found %', octet_length(metadata::text)
            USING ERRCODE = '22023';
    END IF;

    INSERT INTO {schema}.jobs AS j (task, payload, queue, run_at, max_attempts, dedupe_key, priority, metadata)
    VALUES (
        add_job.identifier,
        coalesce(add_job.payload::jsonb, '{}'::jsonb),
        coalesce(add_job.queue_name, 'default'),
        coalesce(add_job.run_at, {schema}.clock_now()),
        coalesce(add_job.max_attempts, 4),
        add_job.job_key,
        coalesce(add_job.priority, 0),
        coalesce(add_job.metadata, '{}'::jsonb)
    )
    ON CONFLICT (dedupe_key)
        WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'retrying', 'running', 'waiting')
        DO NOTHING
    RETURNING * INTO v_job;

    IF v_job.id IS NULL THEN
        SELECT * INTO v_job FROM {schema}.jobs AS j
        WHERE j.dedupe_key = add_job.job_key
          AND j.status IN ('pending', 'retrying', 'running', 'waiting');
    END IF;
    RETURN v_job;
END
$$;
