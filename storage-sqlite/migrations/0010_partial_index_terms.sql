-- Version 10: partial-index conditions written as ORs of equalities instead of IN lists.

-- SQLite checks a partial index's WHERE against the old and the new row on every write
-- that changes a column it names (here: every status change). A constant IN list of
-- three or more values in that check is built into a temporary b-tree each time it runs,
-- per row and per index, which was a large share of what a claim and a completion cost.
-- The same conditions as ORs of equalities are plain comparisons. The queries that use
-- these indexes repeat each condition word for word, so the planner still picks them.
DROP INDEX durable_jobs_claim;
CREATE INDEX durable_jobs_claim ON durable_jobs (queue, priority DESC, run_at, id)
    WHERE (status = 'pending' OR status = 'retrying' OR status = 'waiting');

DROP INDEX durable_jobs_serial_claim;
CREATE INDEX durable_jobs_serial_claim ON durable_jobs (serial_key, priority DESC, run_at, id)
    WHERE serial_key IS NOT NULL
      AND (status = 'pending' OR status = 'retrying' OR status = 'waiting');

DROP INDEX durable_jobs_dedupe;
CREATE UNIQUE INDEX durable_jobs_dedupe ON durable_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL
      AND (status = 'pending' OR status = 'retrying' OR status = 'running' OR status = 'waiting');

DROP INDEX durable_jobs_finished;
CREATE INDEX durable_jobs_finished ON durable_jobs (status, completed_at, queue)
    WHERE (status = 'completed' OR status = 'failed' OR status = 'cancelled');
