-- Retention and claims that never visit rows they cannot take.

-- The retention purge takes, per final status, the oldest jobs finished before that
-- status's cut-off: one index range per status that stops at the cut-off or the batch
-- size. Led by the finish time alone, the completed purge walked every failed job kept
-- longer (7 days against 1 by default) on each batch. `finished_counts(since)` reads
-- one range per status of the same index. Rebuilt under its old name, so a table
-- carries no second index on the finish time (each one costs every completion a write).
DROP INDEX {schema}.jobs_finished;
CREATE INDEX jobs_finished ON {schema}.jobs (status, completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
