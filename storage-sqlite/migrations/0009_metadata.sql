-- Job metadata: a JSON object of key/value pairs set at enqueue, as text (NULL when
-- empty, like flags and tags, so jobs without metadata cost one NULL column). Listings
-- and deletes match a key and value with json_each over this column: no index serves an
-- arbitrary key, so a metadata term narrows what the other terms (status, queue, time,
-- the id order) already select.
ALTER TABLE durable_jobs ADD COLUMN metadata TEXT;
