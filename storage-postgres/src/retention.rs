//! The retention purge: bounded batches of finished workflow trees, oldest first, under
//! a transaction-scoped advisory lock so one batch runs at a time across processes.

use crate::error::db;
use crate::exec::Fetch;
use crate::options::quote_ident;
use crate::sql::render;
use crate::storage::PostgresStorage;
use durable_jobs::storage::share::{BackgroundShare, ShareRamp};
use durable_jobs::{Result, RetentionBatch, RetentionPurged};
use sqlx::{AssertSqlSafe, Row};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Takes the retention lock for the rest of the transaction, or returns false when
/// another batch holds it. Transaction-scoped (never session-level): a pooler in
/// transaction mode (pgBouncer) may hand the next statement another server session, and
/// a session lock would then be held by a connection nobody uses. $1 the lock's name.
const TRY_LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))";

/// One batch. `roots` takes, per final status, the oldest jobs finished before that
/// status's cut-off along `jobs_finished` (status, completed_at): each branch is one
/// index range that stops at its cut-off or its limit, whatever else the table holds.
/// A root is a job without a parent, or whose parent is gone (deleted by hand). `tree`
/// adds every descendant through `jobs_parent`; a tree with an unfinished member is
/// kept whole. The DELETE rechecks the status, so a job requeued by hand meanwhile
/// stays. Checkpoints and signals go by their foreign keys' ON DELETE CASCADE; attempt
/// history lives on the job row. $1, $2, $3 the completed, failed and cancelled cut-offs
/// (NULL: keep), $4 the most roots.
const PURGE_BATCH: &str = "
WITH RECURSIVE roots AS (
    SELECT id FROM (
        (SELECT j.id, j.completed_at FROM {schema}.jobs AS j
         WHERE j.status = 'completed' AND j.completed_at < $1
           AND (j.parent_id IS NULL
                OR NOT EXISTS (SELECT 1 FROM {schema}.jobs AS p WHERE p.id = j.parent_id))
         ORDER BY j.completed_at LIMIT $4)
        UNION ALL
        (SELECT j.id, j.completed_at FROM {schema}.jobs AS j
         WHERE j.status = 'failed' AND j.completed_at < $2
           AND (j.parent_id IS NULL
                OR NOT EXISTS (SELECT 1 FROM {schema}.jobs AS p WHERE p.id = j.parent_id))
         ORDER BY j.completed_at LIMIT $4)
        UNION ALL
        (SELECT j.id, j.completed_at FROM {schema}.jobs AS j
         WHERE j.status = 'cancelled' AND j.completed_at < $3
           AND (j.parent_id IS NULL
                OR NOT EXISTS (SELECT 1 FROM {schema}.jobs AS p WHERE p.id = j.parent_id))
         ORDER BY j.completed_at LIMIT $4)
    ) AS due
    ORDER BY completed_at, id
    LIMIT $4
),
tree AS (
    SELECT id AS root, id FROM roots
    UNION ALL
    SELECT t.root, c.id FROM tree AS t JOIN {schema}.jobs AS c ON c.parent_id = t.id
),
kept AS (
    SELECT DISTINCT t.root FROM tree AS t JOIN {schema}.jobs AS k ON k.id = t.id
    WHERE k.status NOT IN ('completed', 'failed', 'cancelled')
),
gone AS (
    DELETE FROM {schema}.jobs AS j USING tree AS t
    WHERE j.id = t.id
      AND j.status IN ('completed', 'failed', 'cancelled')
      AND t.root NOT IN (SELECT root FROM kept)
    RETURNING j.status, j.id = t.root AS is_root
)
SELECT count(*) FILTER (WHERE is_root),
       count(*) FILTER (WHERE status = 'completed'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'cancelled')
FROM gone";

/// How many rows of `jobs` the planner believes there are (`reltuples`: set by the last
/// vacuum or analyze; -1, read as 0, before the first). $1 the table, schema-qualified.
const ESTIMATED_ROWS: &str =
    "SELECT greatest(c.reltuples, 0)::float8 FROM pg_class AS c WHERE c.oid = to_regclass($1)";

/// Deleted rows a vacuum waits for, besides [`VACUUM_SCALE_FACTOR`] of the table:
/// autovacuum's own base threshold (`autovacuum_vacuum_threshold`).
const VACUUM_THRESHOLD: f64 = 50.0;

/// The share of the table's rows deleted before a vacuum: the `jobs` table's own
/// `autovacuum_vacuum_scale_factor` (`001_jobs.sql`), so the purge vacuums as often as
/// autovacuum would, only without waiting for its naptime.
const VACUUM_SCALE_FACTOR: f64 = 0.05;

/// The rendered retention statements of one schema.
#[derive(Debug)]
pub(crate) struct RetentionSql {
    purge_batch: std::sync::Arc<str>,
    lock_name: String,
    /// `jobs`, schema-qualified and quoted, for [`ESTIMATED_ROWS`].
    jobs: String,
    /// The vacuum of every table a purge deletes from: `jobs`, and the checkpoints and
    /// signals that go with their jobs by cascade. `SKIP_LOCKED`: a table another vacuum
    /// (autovacuum, another worker's purge) holds is passed over, never waited for.
    /// `TRUNCATE false`: giving empty pages at a table's end back to the file system
    /// takes an exclusive lock that claims, completions and enqueues would queue behind,
    /// and the next jobs would only grow the table back.
    vacuum: String,
}

impl RetentionSql {
    pub(crate) fn new(schema: &str, now: &str) -> Self {
        let q = quote_ident(schema);
        RetentionSql {
            purge_batch: render(PURGE_BATCH, schema, now),
            lock_name: format!("durable_jobs.retention:{schema}"),
            jobs: format!("{q}.jobs"),
            vacuum: format!(
                "VACUUM (SKIP_LOCKED, TRUNCATE false) {q}.jobs, {q}.checkpoints, {q}.signals"
            ),
        }
    }
}

/// What the retention purge keeps between batches: how it makes way for this storage's
/// other work, and the rows it deleted since it last vacuumed (see
/// [`crate::PostgresOptions::vacuum_after_purge`]).
///
/// The purge makes way for this storage's other work as the embedded backends' purges do (see [`durable_jobs::storage::share`]): while claims,
/// completions, enqueues or any other statement of this storage ran since the last
/// batch ended, a batch waits until the purge has had no more than its share of the
/// time (a tenth when a pass starts, growing to half over 10 s without a break, so it
/// keeps up with a busy queue); when nothing else ran, batches go back to back.
///
/// Why: a batch takes no lock a claim or completion waits for, but it takes the
/// server's CPU and disk. Run back to back beside a drain on the benchmark's 2-core VM,
/// a purge of 1M finished jobs held the drain to a median of 0.78x of its rate over
/// eleven runs (bench `retention`; 0.87x over five interleaved runs with this pacing). Only this storage's statements are seen: another process's work on the
/// same server is not, so a process that only purges goes back to back.
#[derive(Debug)]
pub(crate) struct PurgeState {
    /// Statements and transactions begun for anything but the purge (see
    /// [`PostgresStorage::db`]).
    foreground: AtomicU64,
    state: Mutex<PaceState>,
    /// Rows this storage's purge deleted since its last vacuum.
    deleted_since_vacuum: AtomicU64,
}

#[derive(Debug)]
struct PaceState {
    share: BackgroundShare,
    /// `foreground` when the last batch ended.
    seen: u64,
}

impl Default for PurgeState {
    fn default() -> Self {
        PurgeState {
            foreground: AtomicU64::new(0),
            state: Mutex::new(PaceState {
                share: BackgroundShare::new(ShareRamp::default()),
                seen: 0,
            }),
            deleted_since_vacuum: AtomicU64::new(0),
        }
    }
}

impl PurgeState {
    /// Counts one statement or transaction of other work.
    pub(crate) fn foreground(&self) {
        self.foreground.fetch_add(1, Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PaceState> {
        // The state is two plain values, consistent whenever the lock is released.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a batch arriving at `now` waits before it runs: nothing when no other
    /// work ran since the last batch ended, else what the purge owes for its share.
    pub(crate) fn wait(&self, now: Instant) -> Duration {
        let foreground = self.foreground.load(Ordering::Relaxed);
        let mut st = self.state();
        st.share.arrived(now);
        if foreground == st.seen {
            Duration::ZERO
        } else {
            st.share.wait(now)
        }
    }

    /// Records a batch that ran from `start` to `end`.
    pub(crate) fn ran(&self, start: Instant, end: Instant) {
        let foreground = self.foreground.load(Ordering::Relaxed);
        let mut st = self.state();
        st.share.ran(start, end);
        st.seen = foreground;
    }

    /// Counts `n` deleted rows; returns all deleted since the last vacuum.
    fn deleted(&self, n: u64) -> u64 {
        self.deleted_since_vacuum.fetch_add(n, Ordering::Relaxed) + n
    }

    /// Takes `n` rows, now vacuumed, off the count (not a reset: another batch of this
    /// storage may have counted more meanwhile).
    fn vacuumed(&self, n: u64) {
        self.deleted_since_vacuum.fetch_sub(n, Ordering::Relaxed);
    }
}

impl PostgresStorage {
    pub(crate) async fn purge_retained_rows(
        &self,
        batch: RetentionBatch,
    ) -> Result<RetentionPurged> {
        let state = self.purge_state();
        let wait = state.wait(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let start = Instant::now();
        let purged = self.purge_batch(batch).await;
        state.ran(start, Instant::now());
        let purged = purged?;
        let since = state.deleted(purged.jobs());
        // A batch short of its limit is the last of its pass (nothing more was due): the
        // moment to hand the pass's deleted rows back for reuse, not between batches.
        if self.options().vacuum_after_purge && purged.roots < batch.limit as u64 && since > 0 {
            self.vacuum_if_due(since).await;
        }
        Ok(purged)
    }

    /// One batch under the retention lock.
    async fn purge_batch(&self, batch: RetentionBatch) -> Result<RetentionPurged> {
        let sql = self.retention_sql();
        let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
        let mut tx = self.begin_background().await?;
        let locked: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(&sql.lock_name)
            .fetch_one_on(self.on(&mut tx))
            .await
            .map_err(db)?;
        if !locked {
            return Ok(RetentionPurged {
                busy: true,
                ..RetentionPurged::default()
            });
        }
        let row = sqlx::query(AssertSqlSafe(sql.purge_batch.clone()))
            .bind(batch.completed_before)
            .bind(batch.failed_before)
            .bind(batch.cancelled_before)
            .bind(limit)
            .fetch_one_on(self.on(&mut tx))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let n = |i: usize| -> Result<u64> {
            let v: i64 = row.try_get(i).map_err(db)?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        Ok(RetentionPurged {
            busy: false,
            roots: n(0)?,
            completed: n(1)?,
            failed: n(2)?,
            cancelled: n(3)?,
        })
    }

    /// Vacuums the purged tables when `deleted` rows (this storage's deletions since its
    /// last vacuum) reach autovacuum's threshold for `jobs`, so the next jobs fill the
    /// space the purge freed instead of growing the table (see
    /// [`crate::PostgresOptions::vacuum_after_purge`]). The batch has committed: a failure
    /// here is logged, and the deletions stay counted for the next pass to try again.
    async fn vacuum_if_due(&self, deleted: u64) {
        let sql = self.retention_sql();
        let rows: Result<Option<f64>> = sqlx::query_scalar(ESTIMATED_ROWS)
            .bind(&sql.jobs)
            .fetch_optional_on(self.background_db())
            .await
            .map_err(db);
        let rows = match rows {
            Ok(rows) => rows.unwrap_or(0.0),
            Err(e) => {
                tracing::warn!(error = %e, "durable-jobs could not read the jobs table's size to decide on a vacuum after the retention purge");
                return;
            }
        };
        if (deleted as f64) < VACUUM_THRESHOLD + VACUUM_SCALE_FACTOR * rows {
            return;
        }
        // The simple query protocol: one exchange, outside any transaction (VACUUM
        // refuses to run in one), which a transaction-mode pooler passes through as is.
        match sqlx::raw_sql(AssertSqlSafe(sql.vacuum.clone()))
            .execute(self.pool())
            .await
        {
            Ok(_) => self.purge_state().vacuumed(deleted),
            Err(e) => {
                tracing::warn!(error = %e, "durable-jobs could not vacuum its tables after the retention purge; their freed space waits for autovacuum");
            }
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod plan_tests {
    use super::PURGE_BATCH;
    use crate::sql::render;
    use crate::testing::TestSchema;
    use sqlx::{AssertSqlSafe, Row};

    /// A batch that deletes the few completed jobs past their retention reads a bounded
    /// number of buffers on a table holding 100,000 failed jobs that finished just as long
    /// ago but are kept longer (7 days against 1 by default): each status is its own
    /// range of `jobs_finished`. Led by the finish time alone, the index made the batch
    /// walk every one of those failures.
    #[tokio::test]
    async fn a_batch_reads_only_the_ranges_of_its_statuses() {
        let t = TestSchema::new().await.expect("schema");
        let q = crate::options::quote_ident(t.schema());
        let mut conn = t.storage().pool().acquire().await.expect("conn");
        let seed = format!(
            "INSERT INTO {q}.jobs (task, payload, status, completed_at)
             SELECT 't', '{{}}', CASE WHEN i <= 5 THEN 'completed' ELSE 'failed' END,
                    now() - interval '2 days' - i * interval '1 ms'
             FROM generate_series(1, 100000) AS i"
        );
        // (VACUUM refuses to run in the implicit transaction of a multi-statement call.)
        for sql in [seed, format!("VACUUM ANALYZE {q}.jobs")] {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .expect("seed");
        }
        let stmt = render(PURGE_BATCH, t.schema(), "now()");
        let explain = format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) {}",
            stmt.replace("$1", "now() - interval '1 day'")
                .replace("$2", "now() - interval '7 days'")
                .replace("$3", "now() - interval '1 day'")
                .replace("$4", "1000")
        );
        let plan: Vec<String> = sqlx::query(AssertSqlSafe(explain))
            .fetch_all(&mut *conn)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        let plan = plan.join("\n");
        let line = plan
            .lines()
            .find(|l| l.trim_start().starts_with("Buffers: shared"))
            .unwrap_or_else(|| panic!("no buffers:\n{plan}"));
        let touched: u64 = ["hit=", "read="]
            .iter()
            .filter_map(|k| line.split(k).nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        assert!(touched < 200, "{touched} buffers:\n{plan}");
        assert!(plan.contains("jobs_finished"), "{plan}");
        let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {q}.jobs WHERE status = 'completed'"
        )))
        .fetch_one(&mut *conn)
        .await
        .expect("count");
        assert_eq!(left, 0, "the completed jobs went");
        drop(conn);
        t.drop_schema().await.expect("drop");
    }
}

#[cfg(all(test, feature = "testing"))]
mod pace_tests {
    use super::PurgeState;
    use crate::testing::TestSchema;
    use chrono::Utc;
    use durable_jobs::{RetentionBatch, Storage};
    use std::time::{Duration, Instant};

    /// Records a batch that took `took` and just ended: at the starting share of a tenth,
    /// the next owes nine times that while other work runs. Returns when that is over.
    fn a_batch_just_ended(pace: &PurgeState, took: Duration) -> Instant {
        let end = Instant::now();
        let start = end.checked_sub(took).unwrap_or(end);
        pace.ran(start, end);
        end + took * 9
    }

    fn nothing_due() -> RetentionBatch {
        RetentionBatch {
            completed_before: Some(Utc::now() - chrono::Duration::days(1)),
            failed_before: None,
            cancelled_before: None,
            limit: 10,
        }
    }

    #[tokio::test]
    async fn the_purge_waits_its_share_only_while_other_work_runs() {
        let t = TestSchema::new().await.expect("schema");
        let s = t.storage();
        let pace = s.purge_state();
        let second = Duration::from_secs(1);
        // Nothing ran yet: the first batch owes nothing.
        assert_eq!(pace.wait(Instant::now()), Duration::ZERO);
        // No other statement since the last batch: batches go back to back.
        a_batch_just_ended(pace, second);
        assert_eq!(pace.wait(Instant::now()), Duration::ZERO);
        // A read is other work: the next batch owes its share.
        a_batch_just_ended(pace, second);
        s.get_job(1).await.expect("get");
        let owed = pace.wait(Instant::now());
        assert!(
            owed > Duration::from_secs(8) && owed <= Duration::from_secs(9),
            "{owed:?}"
        );
        // The purge's own statements (a batch, the vacuum's size check) are not.
        a_batch_just_ended(pace, second);
        let purged = s.purge_batch(nothing_due()).await.expect("batch");
        assert_eq!(purged.jobs(), 0);
        s.vacuum_if_due(1_000_000).await;
        assert_eq!(pace.wait(Instant::now()), Duration::ZERO);
        t.drop_schema().await.expect("drop");
    }

    /// The storage call itself waits what it owes (a lower bound, which a slow machine
    /// cannot break: a sleep never ends early).
    #[tokio::test]
    async fn a_batch_after_other_work_starts_no_sooner_than_its_share_allows() {
        let t = TestSchema::new().await.expect("schema");
        let s = t.storage();
        let owed_until = a_batch_just_ended(s.purge_state(), Duration::from_millis(20));
        s.get_job(1).await.expect("get");
        s.purge_retained(nothing_due()).await.expect("purge");
        assert!(Instant::now() >= owed_until);
        t.drop_schema().await.expect("drop");
    }
}
