-- Version 8: what handlers report while they run, and the arguments of durable calls.

-- The last progress the job's handler reported (JSON text), replaced by each report;
-- NULL until the first. Nullable without a default: adding it rewrites no rows.
ALTER TABLE durable_jobs ADD COLUMN progress TEXT;

-- The hash of a call's arguments (`fnv1a64:<hex>`), compared on replay. NULL for steps,
-- signals, children and every checkpoint written before this version, which are never
-- compared.
ALTER TABLE durable_jobs_checkpoints ADD COLUMN args_hash TEXT;
