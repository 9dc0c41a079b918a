-- durable-jobs as shipped: storage-postgres/src/sql.rs CLAIM (with LEASE) and
-- COMPLETE_MANY on the schema the migrations create. The completion keeps the row: an
-- UPDATE that writes a new version of the whole row.
\ir dj_claim.sql
\ir dj_complete_map.sql
CREATE FUNCTION complete_batch(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE m jsonb := completion_map(ids);
BEGIN
    UPDATE dj.jobs AS j
    SET status = 'completed', result = m -> j.id::text -> 1,
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
        completed_at = now(), updated_at = now()
    WHERE j.id = ANY(ids)
      AND CASE WHEN j.status = 'running' THEN j.lease_token = (m -> j.id::text ->> 0)::bigint
               ELSE false END;
END $$;
\ir measure.sql
CALL fill_timed('durable-jobs as shipped (update, row kept)');
ANALYZE;
CALL measure('durable-jobs as shipped (update, row kept)', :rounds);
