-- Version 11: claims that never visit jobs behind a busy serial key.
--
-- A due job whose serial key has no free slot (as many of the key's jobs run as its
-- limit allows) cannot start until one of them stops. Claims used to skip such jobs row
-- by row, so a backlog of one busy key was read again by every claim. Now a claim that
-- meets such jobs parks them (`blocked`), and parked jobs leave the claim index. Whatever
-- may give a key room again (a running job of it stopping or deleted, its limit raised)
-- or takes away a claimable job of it (cancelled, deleted, moved later or elsewhere)
-- notes the key in `durable_jobs_key_room`; the next claim, in its own write
-- transaction and before it selects anything, unparks the next jobs of every noted key
-- that has room. So whenever a claim selects, a key with room has its first due jobs in
-- the claim index, as PostgreSQL's claims find them (its migration 13).
--
-- `blocked` is a cache of "this key was full when a claim met this job". Any change to a
-- parked job that matters to a claim (status, time, priority, queue, task, flags, key)
-- clears it. A constant default: adding the column rewrites no rows, and every existing
-- job starts unparked.
ALTER TABLE durable_jobs ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;

-- The claim index without the parked jobs.
DROP INDEX durable_jobs_claim;
CREATE INDEX durable_jobs_claim ON durable_jobs (queue, priority DESC, run_at, id)
    WHERE (status = 'pending' OR status = 'retrying' OR status = 'waiting') AND blocked = 0;

-- The claimable jobs that carry a serial key, in claim order: where a claim looks for
-- jobs to park, over the part of the claim index it walked. On a queue without keyed
-- jobs that is one empty probe, not a second walk of the claim's rows.
CREATE INDEX durable_jobs_claim_keyed ON durable_jobs (queue, priority DESC, run_at, id)
    WHERE serial_key IS NOT NULL
      AND (status = 'pending' OR status = 'retrying' OR status = 'waiting') AND blocked = 0;

-- Parked jobs by key, then by group (queue, task, flags: what a claimer filters on;
-- flags NULL as '' so the groups can be walked one index descent each), each group in
-- claim order: what unparking reads.
CREATE INDEX durable_jobs_blocked ON durable_jobs
    (serial_key, queue, task, ifnull(flags, ''), priority DESC, run_at, id)
    WHERE blocked = 1;

-- Keys that may have room for parked jobs, noted by the triggers below and emptied by
-- the next claim.
CREATE TABLE durable_jobs_key_room (
    serial_key TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;

-- A running job of a key stops running (or leaves the key): a slot is free.
CREATE TRIGGER durable_jobs_slot_freed AFTER UPDATE OF status, serial_key ON durable_jobs
    WHEN OLD.status = 'running' AND OLD.serial_key IS NOT NULL
     AND (NEW.status <> 'running' OR NEW.serial_key IS NOT OLD.serial_key)
BEGIN
    INSERT OR IGNORE INTO durable_jobs_key_room (serial_key) VALUES (OLD.serial_key);
END;

CREATE TRIGGER durable_jobs_slot_deleted AFTER DELETE ON durable_jobs
    WHEN OLD.status = 'running' AND OLD.serial_key IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO durable_jobs_key_room (serial_key) VALUES (OLD.serial_key);
END;

-- A limit set or raised (a lowered one never gives room; noting it costs one claim a
-- probe).
CREATE TRIGGER durable_jobs_key_limit_set AFTER INSERT ON durable_jobs_key_limits
BEGIN
    INSERT OR IGNORE INTO durable_jobs_key_room (serial_key) VALUES (NEW.serial_key);
END;

CREATE TRIGGER durable_jobs_key_limit_changed AFTER UPDATE ON durable_jobs_key_limits
BEGIN
    INSERT OR IGNORE INTO durable_jobs_key_room (serial_key) VALUES (NEW.serial_key);
END;

-- A claimable, unparked job of a key that stops being one without starting to run
-- (cancelled, finished or deleted by hand, moved later, to a lower priority, another
-- queue, task, flags or key) may have been the job a claimer was to take next while the
-- key has room: its key's next parked jobs come in. (Starting to run takes a slot
-- instead; being parked happens only while the key is full.)
CREATE TRIGGER durable_jobs_keyed_job_left
    AFTER UPDATE OF status, serial_key, queue, task, flags, priority, run_at ON durable_jobs
    WHEN OLD.serial_key IS NOT NULL AND OLD.blocked = 0 AND NEW.blocked = 0
     AND (OLD.status = 'pending' OR OLD.status = 'retrying' OR OLD.status = 'waiting')
     AND NEW.status <> 'running'
     AND (NOT (NEW.status = 'pending' OR NEW.status = 'retrying' OR NEW.status = 'waiting')
          OR NEW.serial_key IS NOT OLD.serial_key OR NEW.queue IS NOT OLD.queue
          OR NEW.task IS NOT OLD.task OR NEW.flags IS NOT OLD.flags
          OR NEW.priority < OLD.priority OR NEW.run_at > OLD.run_at)
BEGIN
    INSERT OR IGNORE INTO durable_jobs_key_room (serial_key) VALUES (OLD.serial_key);
END;

CREATE TRIGGER durable_jobs_keyed_job_deleted AFTER DELETE ON durable_jobs
    WHEN OLD.serial_key IS NOT NULL AND OLD.blocked = 0
     AND (OLD.status = 'pending' OR OLD.status = 'retrying' OR OLD.status = 'waiting')
BEGIN
    INSERT OR IGNORE INTO durable_jobs_key_room (serial_key) VALUES (OLD.serial_key);
END;

-- A parked job is one a claim met due, with a full key. Any change to what a claim
-- reads of it unparks it: it is then claimable as itself again, and a claim parks it
-- anew if its key is still full. This keeps every parked job due, claimable and in its
-- group's claim order, which unparking relies on. (The nested update changes only
-- `blocked`, which none of these triggers watch.)
CREATE TRIGGER durable_jobs_parked_job_changed
    AFTER UPDATE OF status, serial_key, queue, task, flags, priority, run_at ON durable_jobs
    WHEN OLD.blocked = 1 AND NEW.blocked = 1
     AND (NEW.status IS NOT OLD.status OR NEW.serial_key IS NOT OLD.serial_key
          OR NEW.queue IS NOT OLD.queue OR NEW.task IS NOT OLD.task
          OR NEW.flags IS NOT OLD.flags OR NEW.priority IS NOT OLD.priority
          OR NEW.run_at IS NOT OLD.run_at)
BEGIN
    UPDATE durable_jobs SET blocked = 0 WHERE id = NEW.id;
END;
