-- A key's jobs in claim order, among those a claim could take: a claim lets a keyed job
-- through only when no claimable job of its key comes before it (see `CLAIM`), which
-- this index answers with one short descent per key. Without that check two racing
-- claims could start a key's second job: the first claim holds the key's first job
-- locked, the second skips it (`SKIP LOCKED`), takes the second job and its slot, and
-- the first claim then finds the slot taken.
CREATE INDEX jobs_serial_order ON {schema}.jobs (serial_key, priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying', 'waiting') AND NOT blocked
      AND serial_key IS NOT NULL;
