-- Version 7: retention and claims that never visit rows they cannot take.

-- The retention purge takes, per final status, the oldest jobs finished before that
-- status's cut-off: one index range per status that stops at the cut-off or the batch
-- size, never walking jobs of a status kept longer. (Its WHERE must match the purge's
-- status term word for word.)
CREATE INDEX durable_jobs_retention ON durable_jobs (status, completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
