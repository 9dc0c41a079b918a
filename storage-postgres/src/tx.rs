//! Enqueue inside the caller's own transaction, and the bulk insert every enqueue uses.
//!
//! ```no_run
//! # async fn example(storage: durable_jobs_postgres::PostgresStorage) -> durable_jobs::Result<()> {
//! use durable_jobs::NewJob;
//! let mut tx = storage.pool().begin().await.map_err(durable_jobs::Error::storage)?;
//! sqlx::query("INSERT INTO users (email) VALUES ('a@b.c')")
//!     .execute(&mut *tx).await.map_err(durable_jobs::Error::storage)?;
//! storage.enqueue_in_tx(&mut tx, NewJob::new("welcome_email", serde_json::json!({"email": "a@b.c"}))).await?;
//! // The job exists only if this commits; workers are woken by NOTIFY at commit.
//! tx.commit().await.map_err(durable_jobs::Error::storage)?;
//! # Ok(()) }
//! ```

use crate::error::db;
use crate::sql::Sql;
use crate::storage::{micros, PostgresStorage};
use durable_jobs::{Enqueued, Error, NewJob, Result};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::collections::HashMap;

impl PostgresStorage {
    /// Enqueues a job on the caller's connection or transaction (`&mut tx` for a
    /// `sqlx::Transaction`): the job exists only if that transaction commits, and workers
    /// in every process are woken by the NOTIFY PostgreSQL delivers at commit.
    ///
    /// # Errors
    /// [`Error::Storage`] when the statement fails (the caller's transaction is then
    /// aborted, as with any failed statement).
    pub async fn enqueue_in_tx(&self, conn: &mut PgConnection, job: NewJob) -> Result<Enqueued> {
        let mut out = insert_jobs(conn, self.sql(), vec![job]).await?;
        out.pop()
            .ok_or_else(|| Error::Storage("enqueue returned no row".into()))
    }

    /// Enqueues many jobs in one statement on the caller's connection or transaction, with
    /// the same order and dedupe rules as [`durable_jobs::Storage::enqueue_many`].
    ///
    /// # Errors
    /// As [`Self::enqueue_in_tx`].
    pub async fn enqueue_many_in_tx(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        insert_jobs(conn, self.sql(), jobs).await
    }
}

/// Batches up to this size reuse the prepared (possibly generic) plan.
const SMALL_BATCH: usize = 16;

/// Inserts `jobs` in one statement, in order; a dedupe key held by an unfinished job, or
/// by an earlier job of the same batch, yields that job's id with `created: false`.
pub(crate) async fn insert_jobs(
    conn: &mut PgConnection,
    sql: &Sql,
    jobs: Vec<NewJob>,
) -> Result<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let n = jobs.len();
    let mut task = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut queue = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut delay_us = Vec::with_capacity(n);
    let mut dedupe_key = Vec::with_capacity(n);
    let mut timeout_ms = Vec::with_capacity(n);
    let mut parent_id = Vec::with_capacity(n);
    for j in jobs {
        payload.push(serde_json::to_string(&j.payload)?);
        task.push(j.task);
        queue.push(j.queue);
        priority.push(j.priority);
        max_attempts.push(j.max_attempts);
        run_at.push(j.run_at);
        delay_us.push(j.delay.map(micros));
        dedupe_key.push(j.dedupe_key);
        timeout_ms.push(j.timeout_ms);
        parent_id.push(j.parent_id);
    }
    // A prepared statement switches to a generic plan after a few runs, and a generic
    // plan assumes every unnest yields 10 rows: for a 10,000-job batch it picks nested
    // loops and turns quadratic (seconds instead of milliseconds). Large batches are
    // therefore planned with their actual arrays each time; small ones, where any plan
    // is fast, keep the cached statement.
    let rows = sqlx::query(AssertSqlSafe(sql.enqueue.clone()))
        .persistent(n <= SMALL_BATCH)
        .bind(&task)
        .bind(&payload)
        .bind(&queue)
        .bind(&priority)
        .bind(&max_attempts)
        .bind(&run_at)
        .bind(&delay_us)
        .bind(&dedupe_key)
        .bind(&timeout_ms)
        .bind(&parent_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    if rows.len() != n {
        return Err(Error::Storage(format!(
            "enqueue of {n} jobs returned {} rows",
            rows.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    let mut missing = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let id: Option<i64> = row.try_get("id").map_err(db)?;
        let created: bool = row.try_get("created").map_err(db)?;
        if id.is_none() {
            missing.push(i);
        }
        out.push((id, created));
    }
    if !missing.is_empty() {
        // A concurrent transaction committed a job with the same dedupe key after this
        // statement's snapshot was taken: the insert skipped it, but the statement could
        // not see its id. A new statement can.
        let keys: Vec<&str> = missing
            .iter()
            .filter_map(|&i| dedupe_key[i].as_deref())
            .collect();
        let found: HashMap<String, i64> = sqlx::query(AssertSqlSafe(sql.by_dedupe_keys.clone()))
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((r.try_get("dedupe_key")?, r.try_get("id")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)?;
        for i in missing {
            let key = dedupe_key[i].as_deref().unwrap_or_default();
            match found.get(key) {
                Some(&id) => out[i].0 = Some(id),
                None => {
                    return Err(Error::Storage(format!(
                        "dedupe key `{key}` was taken by a concurrent enqueue whose job \
                         finished before its id could be read; enqueue again"
                    )))
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(id, created)| Enqueued {
            id: id.unwrap_or_default(),
            created,
        })
        .collect())
}
