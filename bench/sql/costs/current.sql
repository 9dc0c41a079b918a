-- durable-jobs as shipped: storage-postgres/src/sql.rs CLAIM (with LEASE) and
-- COMPLETE_MANY on the schema the migrations create. The completion keeps the row: an
-- UPDATE that writes a new version of the whole row.
\ir dj_claim.sql
\ir dj_completion_arrays.sql
CREATE FUNCTION complete_batch(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE tokens bigint[] := completion_tokens(ids);
        results jsonb[] := completion_results(ids);
BEGIN
    UPDATE dj.jobs AS j
    SET status = 'completed', result = d.result,
        attempts = array_append(coalesce(attempts, '{}'), ROW(attempt, lease_holder,
            coalesce(started_at, now()), now(), 'completed'::text, NULL)::dj.attempt),
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
        completed_at = now(), updated_at = now()
    FROM unnest(ids, tokens, results) AS d(id, token, result)
    WHERE j.id = ANY(ARRAY(SELECT unnest(ids))) AND j.id = d.id
      AND CASE WHEN j.status = 'running' THEN j.lease_token = d.token ELSE false END;
END $$;
\ir measure.sql
CALL fill_timed('durable-jobs as shipped (update, row kept)');
ANALYZE;
CALL measure('durable-jobs as shipped (update, row kept)', :rounds);
