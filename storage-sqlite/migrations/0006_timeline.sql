-- Version 6: a job's timeline. When each checkpoint was written, each job's attempt
-- history, its tags on the job row, and an index on the finish time.

-- When storage wrote the checkpoint (the storage clock's now); NULL for checkpoints
-- written before this version.
ALTER TABLE durable_jobs_checkpoints ADD COLUMN created_at INTEGER;

-- The job's ended attempts, oldest first, as a JSON array of objects
-- {"attempt", "worker", "started_at", "finished_at", "outcome", "error"} (times in
-- microseconds). NULL until an attempt ends. Appended (json_insert '$[#]') by the very
-- statement that ends the attempt (complete, fail, release, suspend, the stale-lock
-- sweep, cancel), so recording it costs no extra statement; claims and job reads never
-- select it. It lives on the job row, so it goes with the job on delete and purge.
ALTER TABLE durable_jobs ADD COLUMN attempts TEXT;

-- The job's tags as a JSON array, in the order given (NULL when none): every read and
-- claim returns them with one column read. durable_jobs_tags stays the index that
-- listings by tag walk.
ALTER TABLE durable_jobs ADD COLUMN tags TEXT;

UPDATE durable_jobs SET tags = (
    SELECT json_group_array(tag ORDER BY tag) FROM durable_jobs_tags t
    WHERE t.job_id = durable_jobs.id)
WHERE id IN (SELECT job_id FROM durable_jobs_tags);

-- Finished jobs by finish time: counts of jobs finished since a time read only this
-- index (it covers queue and status), and purging old jobs walks it instead of the table.
-- (Its WHERE must match the queries' status term word for word.)
CREATE INDEX durable_jobs_finished ON durable_jobs (completed_at, queue, status)
    WHERE status IN ('completed', 'failed', 'cancelled');
