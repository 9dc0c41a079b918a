-- Awaitable results, progress, and the arguments of durable calls.

-- The last progress the job's handler reported, replaced by each report; NULL until the
-- first. `awaited` is set by `Queue::wait_for` (through `watch_job`) on an unfinished
-- job: its final write then sends a NOTIFY. Neither column is indexed; the constant
-- default adds `awaited` without rewriting the table.
ALTER TABLE {schema}.jobs
    ADD COLUMN progress jsonb,
    ADD COLUMN awaited boolean NOT NULL DEFAULT false;

-- The hash of a call's arguments (`fnv1a64:<hex>`), compared on replay. NULL for steps,
-- signals, children and every checkpoint written before this version, which are never
-- compared.
ALTER TABLE {schema}.checkpoints ADD COLUMN args_hash text;

-- An awaited job's final write (complete, fail, cancel, a stale lock's failure, a manual
-- finish) tells waiters in every process, on the schema's channel with the payload
-- `finished:<id>` (enqueue notifications carry none, so listeners tell them apart and
-- workers are not woken by it). A second channel would not fit: channel names are
-- identifiers of at most 63 bytes, which `durable_jobs:<schema>` nearly fills. The WHEN
-- clause keeps the hot path (jobs nobody waits on) free of it.
CREATE FUNCTION {schema}.notify_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, 'finished:' || NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_finished AFTER UPDATE OF status ON {schema}.jobs
    FOR EACH ROW
    WHEN (NEW.awaited
          AND NEW.status IN ('completed', 'failed', 'cancelled')
          AND OLD.status NOT IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION {schema}.notify_finished();
