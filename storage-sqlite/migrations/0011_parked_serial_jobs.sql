-- Version 11: claims that never visit jobs behind a busy serial key.
--
-- A due job whose serial key has no free slot (as many of the key's jobs run as its
-- limit allows) cannot start until one of them stops. Claims used to skip such jobs row
-- by row, so a backlog of one busy key was read again by every claim. Now a claim that
-- meets such jobs parks them (`blocked`), and parked jobs leave the claim index. Every
-- claim, in its write transaction and before it selects anything, looks at each key
-- that has parked jobs (one probe per key along the parked index) and unparks the first
-- due ones of each key with room. So whenever a claim selects, a key with room has its
-- first due jobs in the claim index, as PostgreSQL's claims find them (its migration 13),
-- whatever gave the key room: a job finished, failed, was cancelled or deleted (by the
-- library or by hand), a limit was raised.
--
-- No triggers keep this up, unlike on PostgreSQL: on SQLite any trigger on a job's
-- status makes every completion open a statement journal inside the writer's savepoint,
-- which tripled what a completion costs. The price of looking instead is one probe per
-- key with parked jobs per claim, on a table that has only busy keys' backlogs parked.
--
-- `blocked` is a cache of "this key was full when a claim met this job". The library's
-- statements that change what a claim reads of a job that is not running (replace,
-- retry, reschedule, finish, cancel) clear it (a wake only moves a job that is not due
-- yet, which no claim parked); one a hand edit leaves set is harmless: unparking only
-- takes due, claimable jobs. A constant default: adding the
-- column rewrites no rows, and every existing job starts unparked.
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
