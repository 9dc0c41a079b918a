-- The SQL API: add_job (callable from SQL, functions and triggers) and a row trigger
-- that enqueues a job per changed row.

-- Enqueues one job and returns its row. Arguments follow graphile-worker's add_job
-- (identifier, payload, queue_name, run_at, max_attempts, job_key, priority). A job_key
-- held by an unfinished job returns that job unchanged (dedupe), like the Rust API.
CREATE FUNCTION {schema}.add_job(
    identifier   text,
    payload      json        DEFAULT NULL,
    queue_name   text        DEFAULT NULL,
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer     DEFAULT NULL,
    job_key      text        DEFAULT NULL,
    priority     integer     DEFAULT NULL
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

    INSERT INTO {schema}.jobs AS j (task, payload, queue, run_at, max_attempts, dedupe_key, priority)
    VALUES (
        add_job.identifier,
        coalesce(add_job.payload::jsonb, '{}'::jsonb),
        coalesce(add_job.queue_name, 'default'),
        coalesce(add_job.run_at, now()),
        coalesce(add_job.max_attempts, 4),
        add_job.job_key,
        coalesce(add_job.priority, 0)
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

-- A row trigger that enqueues one job per row. Arguments (set by CREATE TRIGGER, or by
-- attach_job_trigger below):
--   TG_ARGV[0]  task name
--   TG_ARGV[1]  payload mode: 'id' ({"id": <row id>}), 'row' (the whole row as JSON) or
--               'fields' (an object of the fields named by the remaining arguments)
--   TG_ARGV[2:] field names, for mode 'fields'
-- The payload is built with to_jsonb; no SQL is built from row data.
CREATE FUNCTION {schema}.job_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_row     jsonb;
    v_payload jsonb;
    v_mode    text;
    v_field   text;
    i         integer;
BEGIN
    IF TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'job_trigger must be a FOR EACH ROW trigger' USING ERRCODE = '22023';
    END IF;
    IF TG_NARGS < 1 THEN
        RAISE EXCEPTION 'job_trigger on %: expected a task name argument', TG_TABLE_NAME USING ERRCODE = '22023';
    END IF;
    IF TG_OP = 'DELETE' THEN
        v_row := to_jsonb(OLD);
    ELSE
        v_row := to_jsonb(NEW);
    END IF;
    v_mode := CASE WHEN TG_NARGS >= 2 THEN TG_ARGV[1] ELSE 'row' END;
    IF v_mode = 'row' THEN
        v_payload := v_row;
    ELSIF v_mode = 'id' THEN
        IF NOT v_row ? 'id' THEN
            RAISE EXCEPTION 'job_trigger on %: payload mode ''id'' needs a column named id', TG_TABLE_NAME USING ERRCODE = '22023';
        END IF;
        v_payload := jsonb_build_object('id', v_row -> 'id');
    ELSIF v_mode = 'fields' THEN
        v_payload := '{}'::jsonb;
        FOR i IN 2 .. TG_NARGS - 1 LOOP
            v_field := TG_ARGV[i];
            IF NOT v_row ? v_field THEN
                RAISE EXCEPTION 'job_trigger on %: no column named %', TG_TABLE_NAME, quote_ident(v_field) USING ERRCODE = '22023';
            END IF;
            v_payload := v_payload || jsonb_build_object(v_field, v_row -> v_field);
        END LOOP;
    ELSE
        RAISE EXCEPTION 'job_trigger on %: payload mode must be id, row or fields, found %', TG_TABLE_NAME, quote_literal(v_mode) USING ERRCODE = '22023';
    END IF;
    PERFORM {schema}.add_job(identifier => TG_ARGV[0], payload => v_payload::json);
    RETURN NULL;
END
$$;

-- Attaches job_trigger to a table: AFTER <events> ... FOR EACH ROW. Every identifier and
-- value is quoted with format('%I' / '%L'); events are checked against a fixed list.
CREATE FUNCTION {schema}.attach_job_trigger(
    target        regclass,
    task          text,
    payload_mode  text    DEFAULT 'row',
    fields        text[]  DEFAULT '{}',
    events        text[]  DEFAULT ARRAY['INSERT'],
    trigger_name  text    DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_events text;
    v_args   text;
    v_name   text;
BEGIN
    IF payload_mode NOT IN ('id', 'row', 'fields') THEN
        RAISE EXCEPTION 'attach_job_trigger: payload_mode must be id, row or fields, found %', quote_nullable(payload_mode) USING ERRCODE = '22023';
    END IF;
    IF payload_mode = 'fields' AND coalesce(cardinality(fields), 0) = 0 THEN
        RAISE EXCEPTION 'attach_job_trigger: payload_mode fields needs at least one field' USING ERRCODE = '22023';
    END IF;
    IF events IS NULL OR cardinality(events) = 0
       OR EXISTS (SELECT 1 FROM unnest(events) e WHERE e IS NULL OR upper(e) NOT IN ('INSERT', 'UPDATE', 'DELETE')) THEN
        RAISE EXCEPTION 'attach_job_trigger: events must be INSERT, UPDATE or DELETE, found %', events USING ERRCODE = '22023';
    END IF;
    SELECT string_agg(DISTINCT upper(e), ' OR ') INTO v_events FROM unnest(events) e;
    SELECT string_agg(format('%L', a), ', ' ORDER BY n) INTO v_args
    FROM unnest(ARRAY[task, payload_mode] || CASE WHEN payload_mode = 'fields' THEN fields ELSE '{}'::text[] END)
         WITH ORDINALITY AS t(a, n);
    v_name := coalesce(trigger_name, 'durable_jobs_' || task);
    EXECUTE format(
        'CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION %I.job_trigger(%s)',
        v_name, v_events, target, {schema_lit}, v_args
    );
END
$$;
