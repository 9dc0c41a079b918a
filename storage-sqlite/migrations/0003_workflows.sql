-- Version 3: durable workflows. Parents and children, wake requests, durable signals,
-- and waiting jobs in the claim path.

-- The job that spawned this one (a workflow child or a bundle member). No foreign key:
-- deleting a finished parent leaves its children (and their history) in place, and a
-- wake aimed at a parent that is gone simply changes nothing.
ALTER TABLE durable_jobs ADD COLUMN parent_id INTEGER;

-- 1 when the job was woken while running: its next suspend makes it due at once, so a
-- wake between the handler's last check and its suspend is never lost. Cleared by a claim.
ALTER TABLE durable_jobs ADD COLUMN wake_requested INTEGER NOT NULL DEFAULT 0;

-- Children by parent: waking a parent, listing children, cancelling a subtree.
CREATE INDEX durable_jobs_parent ON durable_jobs (parent_id) WHERE parent_id IS NOT NULL;

-- Waiting jobs become claimable when due, like pending ones: the claim index now holds
-- them too (its WHERE must match the claim query's, term for term).
DROP INDEX durable_jobs_claim;
CREATE INDEX durable_jobs_claim ON durable_jobs (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying', 'waiting');

-- The lease sweep heals waiting parents; this keeps it from scanning every job.
CREATE INDEX durable_jobs_waiting ON durable_jobs (id) WHERE status = 'waiting';

-- Signals sent to a job and not yet consumed, oldest first (by id).
CREATE TABLE durable_jobs_signals (
    -- AUTOINCREMENT: ids only grow, so id order is send order even after deletes.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     INTEGER NOT NULL REFERENCES durable_jobs (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,                  -- JSON
    created_at INTEGER NOT NULL
);

CREATE INDEX durable_jobs_signals_job ON durable_jobs_signals (job_id, name, id);
