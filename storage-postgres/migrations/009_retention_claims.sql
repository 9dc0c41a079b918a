-- Retention and claims that never visit rows they cannot take.

-- The retention purge takes, per final status, the oldest jobs finished before that
-- status's cut-off: one index range per status that stops at the cut-off or the batch
-- size. `jobs_finished` (completed_at) alone would make the completed purge walk every
-- failed job kept longer (7 days against 1 by default) on each batch.
CREATE INDEX jobs_retention ON {schema}.jobs (status, completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
