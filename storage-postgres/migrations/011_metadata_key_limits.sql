-- Job metadata: a JSON object of key/value pairs set at enqueue (a tenant, a request
-- id), matched by key and value in listings and deletes. A constant default: adding the
-- column rewrites no rows.
ALTER TABLE {schema}.jobs ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';

-- A metadata term is `metadata @> '{"key": value}'`, which this index answers
-- (jsonb_path_ops: containment only, a third of jsonb_ops' size). Partial, like the tag
-- index: jobs without metadata (most) cost it nothing, and the listing states the
-- predicate, which the planner cannot derive from `@>`.
CREATE INDEX jobs_metadata ON {schema}.jobs USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}';

-- Flow control: how many jobs of a serial key may run at once, where not 1 (a key with
-- no row runs one job at a time, as before).
CREATE TABLE {schema}.key_limits (
    serial_key  text    PRIMARY KEY,
    max_running integer NOT NULL CHECK (max_running >= 1)
);

-- A key's limit. A one-SELECT SQL function, inlined into the claim that calls it.
CREATE FUNCTION {schema}.key_limit(p_key text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT l.max_running FROM {schema}.key_limits l
                     WHERE l.serial_key = p_key), 1)
$$;

-- A key now has up to its limit of slots, numbered from 1: a claim takes a free number
-- with INSERT ... ON CONFLICT DO NOTHING, which waits for a racing claimer's commit, so
-- however claims race, no more jobs of a key run than it has numbers. Existing slots
-- (one per key) become number 1. The trigger frees a slot by key and job, unchanged.
ALTER TABLE {schema}.serial_slots ADD COLUMN slot integer NOT NULL DEFAULT 1;
ALTER TABLE {schema}.serial_slots DROP CONSTRAINT serial_slots_pkey;
ALTER TABLE {schema}.serial_slots ADD PRIMARY KEY (serial_key, slot);

-- The SQL worker's claim (007) under the same rule: a key takes a job while it has a
-- free slot number.
CREATE OR REPLACE FUNCTION {schema}.get_job(
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
    LOOP
        SELECT j.id, j.serial_key INTO v_id, v_key FROM {schema}.jobs AS j
        WHERE j.status IN ('pending', 'retrying', 'waiting')
          AND j.run_at <= v_now
          AND (queue_names IS NULL OR j.queue = ANY(queue_names))
          AND (coalesce(cardinality(task_identifiers), 0) = 0 OR j.task = ANY(task_identifiers))
          AND NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = j.queue)
          AND (j.serial_key IS NULL OR (j.serial_key <> ALL(v_skipped) AND (
              SELECT count(*) FROM {schema}.serial_slots s WHERE s.serial_key = j.serial_key)
              < {schema}.key_limit(j.serial_key)))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT 1
        FOR UPDATE OF j SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF v_key IS NOT NULL THEN
            -- Waits for a racing claimer's commit; a key whose slots were taken meanwhile
            -- is skipped.
            v_slot := NULL;
            INSERT INTO {schema}.serial_slots (serial_key, slot, job_id)
            SELECT v_key, n, v_id FROM generate_series(1, {schema}.key_limit(v_key)) AS n
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.serial_slots x
                              WHERE x.serial_key = v_key AND x.slot = n)
            LIMIT 1
            ON CONFLICT (serial_key, slot) DO NOTHING
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

-- Flow control: at most max_starts claims per period from a queue. One row per limited
-- queue holds its current (fixed) window: opened at the first start after the previous
-- one closed, with the starts the claims counted in it. The claim locks the row, so
-- claimers of a limited queue take turns; queues without a row claim as before.
CREATE TABLE {schema}.queue_rate_limits (
    queue      text COLLATE "C" PRIMARY KEY,
    max_starts integer NOT NULL CHECK (max_starts >= 1),
    period_us  bigint  NOT NULL CHECK (period_us >= 1),
    opened_at  timestamptz,
    starts     integer NOT NULL DEFAULT 0
);
