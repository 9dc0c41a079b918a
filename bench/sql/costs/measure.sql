-- Shared by every variant: fills the variant's table with 100,000 jobs through its
-- `fill()` (one INSERT ... SELECT, timed as the enqueue's server cost), then runs :rounds claims of 1000 jobs through `claim_batch()`, each followed
-- by that batch's completion through `complete_batch(ids)`, committing after each
-- statement as a worker does (so pruning and visibility behave as in a real run), and
-- reports server microseconds per job for each half. Commits do not wait for the WAL
-- flush, so fsync latency is not in the figures.
SET synchronous_commit = off;
CREATE PROCEDURE fill_timed(label text) LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
  PERFORM fill();
  COMMIT;
  RAISE NOTICE '%', format('%-44s enqueue %5s us/job (one INSERT of 100,000)', label,
      round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / 100000, 1));
END $$;
CREATE PROCEDURE measure(label text, n int) LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; t0 timestamptz; tc interval := '0'; td interval := '0';
BEGIN
  FOR i IN 1..n LOOP
    t0 := clock_timestamp();
    ids := claim_batch();
    tc := tc + (clock_timestamp() - t0);
    COMMIT;
    t0 := clock_timestamp();
    PERFORM complete_batch(ids);
    td := td + (clock_timestamp() - t0);
    COMMIT;
  END LOOP;
  RAISE NOTICE '%', format('%-44s claim %5s us/job, complete %5s us/job, total %5s',
      label,
      round(extract(epoch FROM tc) * 1e6 / (n * 1000), 1),
      round(extract(epoch FROM td) * 1e6 / (n * 1000), 1),
      round(extract(epoch FROM tc + td) * 1e6 / (n * 1000), 1));
END $$;
