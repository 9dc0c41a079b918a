//! The retention purge: bounded batches of finished workflow trees, oldest first, under
//! a transaction-scoped advisory lock so one batch runs at a time across processes.

use crate::error::db;
use crate::sql::render;
use crate::storage::PostgresStorage;
use durable_jobs::{Result, RetentionBatch, RetentionPurged};
use sqlx::{AssertSqlSafe, Row};

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

/// The rendered retention statements of one schema.
#[derive(Debug)]
pub(crate) struct RetentionSql {
    purge_batch: std::sync::Arc<str>,
    lock_name: String,
}

impl RetentionSql {
    pub(crate) fn new(schema: &str, now: &str) -> Self {
        RetentionSql {
            purge_batch: render(PURGE_BATCH, schema, now),
            lock_name: format!("durable_jobs.retention:{schema}"),
        }
    }
}

impl PostgresStorage {
    pub(crate) async fn purge_retained_rows(
        &self,
        batch: RetentionBatch,
    ) -> Result<RetentionPurged> {
        let sql = self.retention_sql();
        let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
        let mut tx = self.pool().begin().await.map_err(db)?;
        let locked: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(&sql.lock_name)
            .fetch_one(&mut *tx)
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
            .fetch_one(&mut *tx)
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
}
