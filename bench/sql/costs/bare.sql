-- The raw SQL yardstick's table (bench/src/raw_sql.rs): eleven columns, one partial
-- claim index, no triggers or constraints, and plain claim and completion statements in
-- our claim order, the completion keeping the row. The gap to `current` is what our
-- schema and statements cost on top of the bare update pattern.
CREATE SCHEMA r;
CREATE TABLE r.jobs (
    id bigserial PRIMARY KEY, queue text NOT NULL DEFAULT 'default', task text NOT NULL,
    payload jsonb NOT NULL, priority int NOT NULL DEFAULT 0,
    status text NOT NULL DEFAULT 'pending', attempt int NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(), lease_token bigint,
    lease_expires_at timestamptz, completed_at timestamptz);
CREATE INDEX ON r.jobs (queue, priority DESC, run_at, id) WHERE status = 'pending';
CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
    INSERT INTO r.jobs (task, payload)
    SELECT 'noop', jsonb_build_object('id', i, 'data', 'test_' || i) FROM generate_series(1, 100000) i;
$$;
CREATE FUNCTION claim_batch() RETURNS bigint[] LANGUAGE sql AS $$
    WITH c AS (
        SELECT id FROM r.jobs WHERE status = 'pending' AND queue = 'default' AND run_at <= now()
        ORDER BY priority DESC, run_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE r.jobs j SET status = 'running', attempt = j.attempt + 1, lease_token = 7,
            lease_expires_at = now() + interval '30 seconds'
        WHERE j.id = ANY(ARRAY(SELECT id FROM c)) RETURNING j.id, j.lease_token, j.payload)
    SELECT array_agg(id) FROM u;
$$;
CREATE FUNCTION complete_batch(ids bigint[]) RETURNS void LANGUAGE sql AS $$
    UPDATE r.jobs j SET status = 'completed', completed_at = now(), lease_token = NULL,
        lease_expires_at = NULL
    WHERE j.id = ANY(ids)
      AND CASE WHEN j.status = 'running' THEN j.lease_token = 7 ELSE false END;
$$;
\ir measure.sql
CALL fill_timed('bare yardstick table (update, row kept)');
ANALYZE;
CALL measure('bare yardstick table (update, row kept)', :rounds);
