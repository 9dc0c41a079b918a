-- Design sketch, not shipped: a job's immutable body (task, payload, options) is written
-- once, in jobs_body; a narrow live row carries the state claims update; finishing deletes
-- the live row and appends a narrow row to jobs_done. Nothing wide is rewritten after
-- the enqueue, but the enqueue writes two rows (body and live), which this does not time.
-- The planner picks a hash join over a sequential scan of the live table for the
-- claim's UPDATE on a freshly filled table; a real version would pin the nested loop as
-- COMPLETE_MANY does, so the sketch turns hash and merge joins off.
SET enable_hashjoin = off;
SET enable_mergejoin = off;
CREATE TABLE jobs_body (id bigserial PRIMARY KEY, task text NOT NULL, payload jsonb NOT NULL,
  queue text NOT NULL DEFAULT 'default', priority int NOT NULL DEFAULT 0,
  max_attempts int NOT NULL DEFAULT 4, dedupe_key text, timeout_ms bigint, parent_id bigint,
  serial_key text, flags text[] NOT NULL DEFAULT '{}', tags text[] NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE jobs_live (id bigint PRIMARY KEY, task text NOT NULL,
  queue text NOT NULL DEFAULT 'default', priority int NOT NULL DEFAULT 0,
  status text NOT NULL DEFAULT 'pending', attempt int NOT NULL DEFAULT 0,
  run_at timestamptz NOT NULL DEFAULT now(), lease_holder text, lease_token bigint,
  lease_expires_at timestamptz, last_error text, started_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now(), wake_requested boolean NOT NULL DEFAULT false)
  WITH (fillfactor = 80);
CREATE INDEX jobs_live_claimable ON jobs_live (queue, priority DESC, run_at, id)
  WHERE status IN ('pending', 'retrying', 'waiting');
CREATE INDEX jobs_live_lease ON jobs_live (lease_expires_at) WHERE status = 'running';
CREATE TABLE jobs_done (id bigint PRIMARY KEY, status text NOT NULL, attempt int NOT NULL,
  result jsonb, last_error text, started_at timestamptz, completed_at timestamptz NOT NULL);
CREATE FUNCTION fill() RETURNS void LANGUAGE sql AS $$
    INSERT INTO jobs_body (task, payload)
    SELECT 'noop', jsonb_build_object('id', i, 'data', 'test_' || i) FROM generate_series(1, 100000) i;
    INSERT INTO jobs_live (id, task) SELECT id, task FROM jobs_body;
$$;
CREATE FUNCTION claim_batch() RETURNS bigint[] LANGUAGE sql AS $$
    WITH c AS (
        SELECT id FROM jobs_live
        WHERE status IN ('pending', 'retrying', 'waiting') AND queue = 'default' AND run_at <= now()
        ORDER BY priority DESC, run_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE jobs_live AS l SET status = 'running', attempt = l.attempt + 1, lease_holder = 'w',
            lease_token = 7, lease_expires_at = now() + interval '30 s', started_at = now(),
            updated_at = now(), wake_requested = false
        FROM c WHERE l.id = c.id RETURNING l.*
    ), r AS (
        SELECT u.*, b.payload, b.max_attempts, b.dedupe_key, b.timeout_ms, b.created_at
        FROM u JOIN jobs_body b ON b.id = u.id
    )
    SELECT array_agg(id) FROM r;
$$;
CREATE FUNCTION complete_batch(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE m jsonb := (SELECT jsonb_object_agg(x::text, jsonb_build_array(7, null)) FROM unnest(ids) x);
BEGIN
    WITH x AS (
        DELETE FROM jobs_live AS l
        WHERE l.id = ANY(ids)
          AND CASE WHEN l.status = 'running' THEN l.lease_token = (m -> l.id::text ->> 0)::bigint
                   ELSE false END
        RETURNING l.id, l.attempt, l.last_error, l.started_at)
    INSERT INTO jobs_done (id, status, attempt, result, last_error, started_at, completed_at)
    SELECT x.id, 'completed', x.attempt, m -> x.id::text -> 1, x.last_error, x.started_at, now()
    FROM x;
END $$;
\ir measure.sql
CALL fill_timed('sketch: body / live / done tables');
ANALYZE;
CALL measure('sketch: body / live / done tables', :rounds);
