-- Version 7: retention and claims that never visit rows they cannot take.

-- The retention purge takes, per final status, the oldest jobs finished before that
-- status's cut-off: one index range per status that stops at the cut-off or the batch
-- size, never walking jobs of a status kept longer. The finished index now leads with
-- the status; counts of jobs finished since a time read one range per status, still
-- from the index alone (it covers the queue). (Its WHERE must match the queries'
-- status term word for word.)
DROP INDEX durable_jobs_finished;
CREATE INDEX durable_jobs_finished ON durable_jobs (status, completed_at, queue)
    WHERE status IN ('completed', 'failed', 'cancelled');
