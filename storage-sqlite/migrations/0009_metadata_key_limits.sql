-- Job metadata: a JSON object of key/value pairs set at enqueue, as text (NULL when
-- empty, like flags and tags, so jobs without metadata cost one NULL column). Listings
-- and deletes match a key and value with json_each over this column: no index serves an
-- arbitrary key, so a metadata term narrows what the other terms (status, queue, time,
-- the id order) already select.
ALTER TABLE durable_jobs ADD COLUMN metadata TEXT;

-- Flow control: how many jobs of a serial key may run at once, where not 1 (a key with
-- no row runs one job at a time). The claim counts the key's running jobs through
-- durable_jobs_serial_running and compares with this.
CREATE TABLE durable_jobs_key_limits (
    serial_key  TEXT    PRIMARY KEY,
    max_running INTEGER NOT NULL CHECK (max_running >= 1)
);

-- Flow control: at most max_starts claims per period from a queue. One row per limited
-- queue holds its current (fixed) window: opened at the first start after the previous
-- one closed, with the starts counted in it by the claims' own transactions.
CREATE TABLE durable_jobs_rate_limits (
    queue      TEXT    PRIMARY KEY,
    max_starts INTEGER NOT NULL CHECK (max_starts >= 1),
    period_us  INTEGER NOT NULL CHECK (period_us >= 1),
    opened_at  INTEGER,
    starts     INTEGER NOT NULL DEFAULT 0
);
