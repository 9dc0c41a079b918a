-- Operations: serial keys, flags, tags, paused queues, schedules.

ALTER TABLE {schema}.jobs
    ADD COLUMN serial_key text,
    ADD COLUMN flags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN tags  text[] NOT NULL DEFAULT '{}';

CREATE INDEX jobs_tags ON {schema}.jobs USING gin (tags) WHERE cardinality(tags) > 0;

-- The one running job of each serial key. A claim takes the slot with
-- INSERT ... ON CONFLICT DO NOTHING, which waits for a racing claimer's commit, so two
-- workers can never both start a job of one key.
CREATE TABLE {schema}.serial_slots (
    serial_key text PRIMARY KEY,
    job_id     bigint NOT NULL
);

-- A job leaving `running` (complete, fail, retry, release, suspend, reclaim, cancel)
-- frees its slot.
CREATE FUNCTION {schema}.free_serial_slot() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.serial_slots WHERE serial_key = OLD.serial_key AND job_id = OLD.id;
    PERFORM pg_notify({channel}, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_free_serial_slot AFTER UPDATE OF status ON {schema}.jobs
    FOR EACH ROW
    WHEN (OLD.serial_key IS NOT NULL AND OLD.status = 'running' AND NEW.status <> 'running')
    EXECUTE FUNCTION {schema}.free_serial_slot();

CREATE TABLE {schema}.paused_queues (
    queue text COLLATE "C" PRIMARY KEY
);

CREATE TABLE {schema}.schedules (
    name        text COLLATE "C" PRIMARY KEY,
    definition  jsonb       NOT NULL,
    paused      boolean     NOT NULL DEFAULT false,
    cursor      timestamptz NOT NULL,
    last_job_id bigint
);
