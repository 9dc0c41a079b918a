-- Job metadata: a JSON object of key/value pairs set at enqueue (a tenant, a request
-- id), matched by key and value in listings and deletes. A constant default: adding the
-- column rewrites no rows.
ALTER TABLE {schema}.jobs ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';

-- A metadata term is `metadata @> '{"key": value}'`, which this index answers
-- (jsonb_path_ops: containment only, a third of jsonb_ops' size). Partial, like the tag
-- index: jobs without metadata (most) cost it nothing, and the listing states the
-- predicate, which the planner cannot derive from `@>`.
CREATE INDEX jobs_metadata ON {schema}.jobs USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}';
