-- Claims that never visit jobs behind a busy serial key; counts read from indexes.
--
-- A due job whose serial key has no free slot (as many of the key's jobs run as its
-- limit allows) cannot start until one of them stops running. Claims used to skip such
-- jobs row by row, so a backlog of one busy key was read again by every claim. Now a
-- claim that meets such jobs parks them (`blocked`), and parked jobs leave the claim
-- index. Whatever gives the key room again (a slot freed, its limit raised) or takes
-- away a claimable job of the key unparks its next jobs in the same transaction, so a
-- key with room always has its first due jobs in the index.
--
-- `blocked` is a cache of "this key was full when a claim met this job": it is only
-- ever set under a share lock on all of the key's slots (so no slot frees before the
-- parking commits), and any change to a parked job that matters to a claim (status,
-- time, priority, queue, task, flags, key) clears it. A constant default: adding the
-- column rewrites no rows, and every existing job starts unparked.
ALTER TABLE {schema}.jobs ADD COLUMN blocked boolean NOT NULL DEFAULT false;

-- The claim index without the parked jobs. It carries each job's status (not a key
-- column: claims never search by it) so that `counts()`, which the metrics sampler runs
-- every few seconds, counts the unfinished jobs per queue and status from the index
-- alone instead of reading every row of the table.
DROP INDEX {schema}.jobs_claimable;
CREATE INDEX jobs_claimable ON {schema}.jobs (queue, priority DESC, run_at, id)
    INCLUDE (status)
    WHERE status IN ('pending', 'retrying', 'waiting') AND NOT blocked;

-- The claimable jobs that carry a serial key, in claim order: where a claim looks for
-- jobs to park, over the part of the claim index it walked. On a queue without keyed
-- jobs that is one empty index page, not a second walk of the claim's rows.
CREATE INDEX jobs_claimable_keyed ON {schema}.jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying', 'waiting') AND NOT blocked
      AND serial_key IS NOT NULL;

-- Parked jobs by key, then by group (queue, task, flags: what a claimer filters on),
-- each group in claim order: what unparking reads.
CREATE INDEX jobs_blocked ON {schema}.jobs
    (serial_key, queue, task, flags, priority DESC, run_at, id)
    INCLUDE (status)
    WHERE blocked;

-- The finished jobs' index (009) carries each job's queue, so `counts()` counts the
-- finished jobs (most of a table that keeps them) per queue and status from the index
-- alone. Rebuilt under its old name, as 009 did.
DROP INDEX {schema}.jobs_finished;
CREATE INDEX jobs_finished ON {schema}.jobs (status, completed_at)
    INCLUDE (queue)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- Unparks the next jobs of a key that has room: in each group of its parked jobs, as
-- many as the key has free slots, in claim order. Per group, because a claimer that
-- takes only some queues, tasks or flags must still find the first job it may take (a
-- key's first job overall may be one no running worker takes); as many as the free
-- slots, so a key whose limit was raised fills every slot, and a key left short by a
-- race (a limit raised while a claim parked its jobs) fills up at its next freed slot.
-- Unparking more than needed is harmless: a claim parks the surplus again.
-- Rows another transaction holds are passed over for the next ones (that transaction
-- is changing them, which unparks or ends them), so this never waits on a row lock,
-- and a batch that lost rows to concurrent changes is topped up with a fresh look.
CREATE FUNCTION {schema}.unblock_key(p_key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_free  bigint;
    v_group record;
    v_ids   bigint[];
    v_need  bigint;
BEGIN
    -- The common case (nothing of the key is parked) costs one index probe.
    IF p_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM {schema}.jobs b WHERE b.serial_key = p_key AND b.blocked) THEN
        RETURN;
    END IF;
    v_free := {schema}.key_limit(p_key)
              - (SELECT count(*) FROM {schema}.serial_slots s WHERE s.serial_key = p_key);
    IF v_free <= 0 THEN
        RETURN;
    END IF;
    -- The groups, one index descent each (a loose index scan).
    SELECT b.queue, b.task, b.flags INTO v_group FROM {schema}.jobs b
    WHERE b.serial_key = p_key AND b.blocked
    ORDER BY b.queue, b.task, b.flags
    LIMIT 1;
    WHILE FOUND LOOP
        v_need := v_free;
        LOOP
            SELECT array_agg(x.id) INTO v_ids FROM (
                SELECT b.id FROM {schema}.jobs b
                WHERE b.serial_key = p_key AND b.blocked
                  AND b.queue = v_group.queue AND b.task = v_group.task
                  AND b.flags = v_group.flags
                ORDER BY b.priority DESC, b.run_at, b.id
                LIMIT v_need
                FOR UPDATE SKIP LOCKED
            ) x;
            EXIT WHEN v_ids IS NULL;
            UPDATE {schema}.jobs SET blocked = false WHERE id = ANY(v_ids);
            v_need := v_need - cardinality(v_ids);
            EXIT WHEN v_need <= 0;
        END LOOP;
        SELECT b.queue, b.task, b.flags INTO v_group FROM {schema}.jobs b
        WHERE b.serial_key = p_key AND b.blocked
          AND (b.queue, b.task, b.flags) > (v_group.queue, v_group.task, v_group.flags)
        ORDER BY b.queue, b.task, b.flags
        LIMIT 1;
    END LOOP;
END
$$;

-- A slot going away, whatever removed it (a job leaving `running` through the
-- jobs_free_serial_slot trigger, or a row deleted by hand), gives its key room.
CREATE FUNCTION {schema}.serial_slot_freed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.unblock_key(OLD.serial_key);
    RETURN NULL;
END
$$;

CREATE TRIGGER serial_slots_unblock AFTER DELETE ON {schema}.serial_slots
    FOR EACH ROW EXECUTE FUNCTION {schema}.serial_slot_freed();

-- A raised limit gives the key room (a lowered or cleared one never does: limits are at
-- least 1, the default).
CREATE FUNCTION {schema}.key_limit_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.unblock_key(NEW.serial_key);
    RETURN NULL;
END
$$;

CREATE TRIGGER key_limits_unblock AFTER INSERT OR UPDATE ON {schema}.key_limits
    FOR EACH ROW EXECUTE FUNCTION {schema}.key_limit_changed();

-- A claimable, unparked job of a key that stops being one without starting to run
-- (cancelled, finished or deleted by hand, moved later, to a lower priority, another
-- queue, task, flags or key) may have been the job a claimer was to take next while the
-- key has room: its key's next parked jobs come in. (Starting to run takes a slot
-- instead; being parked happens only while the key is full.)
CREATE FUNCTION {schema}.claimable_keyed_job_left() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {schema}.unblock_key(OLD.serial_key);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_unblock_on_update AFTER UPDATE ON {schema}.jobs
    FOR EACH ROW
    WHEN (OLD.serial_key IS NOT NULL AND NOT OLD.blocked AND NOT NEW.blocked
          AND OLD.status IN ('pending', 'retrying', 'waiting')
          AND NEW.status <> 'running'
          AND (NEW.status NOT IN ('pending', 'retrying', 'waiting')
               OR NEW.serial_key IS DISTINCT FROM OLD.serial_key
               OR NEW.queue <> OLD.queue OR NEW.task <> OLD.task OR NEW.flags <> OLD.flags
               OR NEW.priority < OLD.priority OR NEW.run_at > OLD.run_at))
    EXECUTE FUNCTION {schema}.claimable_keyed_job_left();

CREATE TRIGGER jobs_unblock_on_delete AFTER DELETE ON {schema}.jobs
    FOR EACH ROW
    WHEN (OLD.serial_key IS NOT NULL AND NOT OLD.blocked
          AND OLD.status IN ('pending', 'retrying', 'waiting'))
    EXECUTE FUNCTION {schema}.claimable_keyed_job_left();

-- A parked job is one a claim met due, with a full key. Any change to what a claim
-- reads of it (status, time, priority, queue, task, flags, key) unparks it: it is then
-- claimable as itself again, and a claim parks it anew if its key is still full. This
-- keeps every parked job due and in its group's claim order, which unparking relies on.
CREATE FUNCTION {schema}.parked_job_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.blocked := false;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_unpark_changed BEFORE UPDATE ON {schema}.jobs
    FOR EACH ROW
    WHEN (OLD.blocked AND NEW.blocked
          AND (NEW.status, NEW.run_at, NEW.priority, NEW.queue, NEW.task, NEW.flags,
               NEW.serial_key)
              IS DISTINCT FROM (OLD.status, OLD.run_at, OLD.priority, OLD.queue, OLD.task,
                                OLD.flags, OLD.serial_key))
    EXECUTE FUNCTION {schema}.parked_job_changed();

-- The SQL worker's claim (011) reads the same index: it skips parked jobs like every
-- claim (jobs of a full key row by row, as before, without parking them).
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
        WHERE j.status IN ('pending', 'retrying', 'waiting') AND NOT j.blocked
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
