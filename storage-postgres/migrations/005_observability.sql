-- Observability: the trace context carried with each job, and the worker registry.

-- The W3C traceparent of the span that enqueued the job, so its attempts' spans join the
-- enqueuer's trace. Nullable without a default: adding it rewrites no rows. Jobs added
-- through add_job or a trigger carry none.
ALTER TABLE {schema}.jobs ADD COLUMN trace_context text;

-- One row per live worker, renewed by its heartbeat. `last_seen` comes from the storage
-- clock; a worker not seen for `lease_ms` is dead, and old rows are pruned.
CREATE TABLE {schema}.workers (
    name       text COLLATE "C" PRIMARY KEY,
    host       text        NOT NULL,
    pid        bigint      NOT NULL,
    -- [{"name": <queue>, "concurrency": <n>}, ...]
    queues     jsonb       NOT NULL DEFAULT '[]',
    version    text        NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    lease_ms   bigint      NOT NULL
);
