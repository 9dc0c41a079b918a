-- Design sketch, not shipped: a finished job moves to jobs_done (DELETE ... RETURNING
-- into an INSERT), so the live table holds only unfinished jobs. The foreign keys from
-- checkpoints and signals are dropped (their ON DELETE CASCADE checks would double the
-- completion's cost); a real version would clean those rows up with retention instead.
ALTER TABLE dj.checkpoints DROP CONSTRAINT checkpoints_job_id_fkey;
ALTER TABLE dj.signals DROP CONSTRAINT signals_job_id_fkey;
CREATE TABLE dj.jobs_done (LIKE dj.jobs INCLUDING DEFAULTS, PRIMARY KEY (id));
\ir dj_claim.sql
\ir dj_completion_arrays.sql
CREATE FUNCTION complete_batch(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE tokens bigint[] := completion_tokens(ids);
        results jsonb[] := completion_results(ids);
BEGIN
    WITH d AS (
        DELETE FROM dj.jobs AS j
        USING unnest(ids, tokens, results) AS r(id, token, result)
        WHERE j.id = ANY(ids) AND j.id = r.id
          AND CASE WHEN j.status = 'running' THEN j.lease_token = r.token ELSE false END
        RETURNING j.*, r.result AS new_result)
    INSERT INTO dj.jobs_done (id, task, payload, queue, priority, status, attempt, max_attempts,
        run_at, last_error, result, dedupe_key, timeout_ms, created_at, started_at, completed_at,
        updated_at, parent_id, serial_key, flags, tags)
    SELECT id, task, payload, queue, priority, 'completed', attempt, max_attempts,
        run_at, last_error, new_result, dedupe_key, timeout_ms, created_at, started_at,
        now(), now(), parent_id, serial_key, flags, tags
    FROM d;
END $$;
\ir measure.sql
CALL fill_timed('sketch: move to jobs_done');
ANALYZE;
CALL measure('sketch: move to jobs_done', :rounds);
