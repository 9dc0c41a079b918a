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

use crate::error::{db, storage};
use crate::exec::{Db, Exec, Fetch};
use crate::sql::Sql;
use crate::storage::{micros, PostgresStorage};
use durable_jobs::job::KeyMode;
use durable_jobs::{Enqueued, NewJob, Result, StorageErrorKind};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::collections::HashMap;

impl PostgresStorage {
    /// Enqueues a job on the caller's connection or transaction (`&mut tx` for a
    /// `sqlx::Transaction`): the job exists only if that transaction commits, and workers
    /// in every process are woken by the NOTIFY PostgreSQL delivers at commit. Behind a
    /// transaction-mode pooler
    /// ([`crate::PostgresOptions::pgbouncer_transaction_mode`]) pass a transaction: its
    /// statements then run unnamed on the transaction's server connection.
    ///
    /// # Errors
    /// [`durable_jobs::Error::Storage`] when the statement fails (the caller's
    /// transaction is then aborted, as with any failed statement).
    pub async fn enqueue_in_tx(&self, conn: &mut PgConnection, job: NewJob) -> Result<Enqueued> {
        let mut out = insert_jobs(self.on(conn), self.sql(), vec![job]).await?;
        out.pop()
            .ok_or_else(|| storage(StorageErrorKind::Other, "enqueue returned no row"))
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
        insert_jobs(self.on(conn), self.sql(), jobs).await
    }
}

/// Batches up to this size reuse the prepared (possibly generic) plan.
const SMALL_BATCH: usize = 16;

/// True when `job` replaces an unfinished holder of its key (debounce or throttle)
/// rather than deduplicating to it; such jobs are written one statement each.
pub(crate) fn replaces(job: &NewJob) -> bool {
    job.dedupe_key.is_some() && job.key_mode != KeyMode::Dedupe
}

/// Inserts `jobs` in order. Jobs that deduplicate (the usual case) go in as few bulk
/// statements as possible; a replace-mode keyed job is written by itself, so each job
/// sees the effect of the ones before it, as sequential enqueues would. A duplicate key
/// inside a bulk statement maps to its first occurrence; a key held by an unfinished job
/// maps to that job.
pub(crate) async fn insert_jobs(
    mut conn: Db<'_>,
    sql: &Sql,
    jobs: Vec<NewJob>,
) -> Result<Vec<Enqueued>> {
    if !jobs.iter().any(replaces) {
        return insert_bulk(conn.re(), sql, jobs).await;
    }
    let mut out = Vec::with_capacity(jobs.len());
    let mut run = Vec::new();
    for job in jobs {
        if replaces(&job) {
            if !run.is_empty() {
                out.extend(insert_bulk(conn.re(), sql, std::mem::take(&mut run)).await?);
            }
            out.push(replace_one(conn.re(), sql, job).await?);
        } else {
            run.push(job);
        }
    }
    if !run.is_empty() {
        out.extend(insert_bulk(conn.re(), sql, run).await?);
    }
    Ok(out)
}

/// A JSON array of strings for the bulk statement, or NULL for none (the common case).
fn json_list(items: &[String]) -> Result<Option<String>> {
    if items.is_empty() {
        Ok(None)
    } else {
        Ok(Some(serde_json::to_string(items)?))
    }
}

/// True when `job` can take the plain insert: no dedupe key (nothing to look up or
/// conflict with), no flags or tags (no per-row array to unpack) and no metadata.
fn is_plain(job: &NewJob) -> bool {
    job.dedupe_key.is_none()
        && job.flags.is_empty()
        && job.tags.is_empty()
        && job.metadata.is_empty()
}

/// Metadata for the bulk statement: a JSON object, or NULL for none (the common case).
fn metadata_json(job: &NewJob) -> Result<Option<String>> {
    if job.metadata.is_empty() {
        Ok(None)
    } else {
        Ok(Some(serde_json::to_string(&job.metadata)?))
    }
}

/// Inserts `jobs` in one statement, in order (see [`insert_jobs`]).
async fn insert_bulk(mut conn: Db<'_>, sql: &Sql, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    if jobs.iter().all(is_plain) {
        return insert_plain(conn.re(), sql, jobs).await;
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
    let mut serial_key = Vec::with_capacity(n);
    let mut flags = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    let mut trace_context = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for j in jobs {
        metadata.push(metadata_json(&j)?);
        trace_context.push(j.trace_context);
        flags.push(json_list(&j.flags)?);
        tags.push(json_list(&j.tags)?);
        serial_key.push(j.serial_key);
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
        .bind(&serial_key)
        .bind(&flags)
        .bind(&tags)
        .bind(&trace_context)
        .bind(&metadata)
        .fetch_all_on(conn.re())
        .await
        .map_err(db)?;
    if rows.len() != n {
        return Err(storage(
            StorageErrorKind::Other,
            format!("enqueue of {n} jobs returned {} rows", rows.len()),
        ));
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
            .fetch_all_on(conn.re())
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
                    // A lost race: enqueueing again finds the key free or held.
                    return Err(storage(
                        StorageErrorKind::Busy,
                        format!(
                            "dedupe key `{key}` was taken by a concurrent enqueue whose job \
                             finished before its id could be read; enqueue again"
                        ),
                    ));
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

/// Inserts plain jobs (see [`is_plain`]) with the lean statement; every job is created.
async fn insert_plain(mut conn: Db<'_>, sql: &Sql, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
    let n = jobs.len();
    if let Some(first) = jobs.first() {
        if jobs.iter().all(|j| same_columns(first, j)) {
            return insert_uniform(conn.re(), sql, jobs).await;
        }
    }
    let mut task = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut queue = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut delay_us = Vec::with_capacity(n);
    let mut timeout_ms = Vec::with_capacity(n);
    let mut parent_id = Vec::with_capacity(n);
    let mut serial_key = Vec::with_capacity(n);
    let mut trace_context = Vec::with_capacity(n);
    for j in jobs {
        payload.push(serde_json::to_string(&j.payload)?);
        task.push(j.task);
        queue.push(j.queue);
        priority.push(j.priority);
        max_attempts.push(j.max_attempts);
        run_at.push(j.run_at);
        delay_us.push(j.delay.map(micros));
        timeout_ms.push(j.timeout_ms);
        parent_id.push(j.parent_id);
        serial_key.push(j.serial_key);
        trace_context.push(j.trace_context);
    }
    let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.enqueue_plain.clone()))
        .bind(&task)
        .bind(&payload)
        .bind(&queue)
        .bind(&priority)
        .bind(&max_attempts)
        .bind(&run_at)
        .bind(&delay_us)
        .bind(&timeout_ms)
        .bind(&parent_id)
        .bind(&serial_key)
        .bind(&trace_context)
        .fetch_all_on(conn.re())
        .await
        .map_err(db)?;
    plain_ids(n, ids)
}

/// True when two plain jobs would store the same values in every column but the
/// payload, so a batch of them can bind those columns once. (The jobs of one
/// `enqueue_many` come from one span, so they share their trace context too.)
fn same_columns(a: &NewJob, b: &NewJob) -> bool {
    a.task == b.task
        && a.queue == b.queue
        && a.priority == b.priority
        && a.max_attempts == b.max_attempts
        && a.run_at == b.run_at
        && a.delay == b.delay
        && a.timeout_ms == b.timeout_ms
        && a.parent_id == b.parent_id
        && a.serial_key == b.serial_key
        && a.trace_context == b.trace_context
}

/// Inserts plain jobs that differ only in their payload (see [`same_columns`]).
async fn insert_uniform(mut conn: Db<'_>, sql: &Sql, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
    let n = jobs.len();
    let payload = jobs
        .iter()
        .map(|j| serde_json::to_string(&j.payload))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let Some(first) = jobs.into_iter().next() else {
        return Ok(Vec::new());
    };
    let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.enqueue_uniform.clone()))
        .bind(&payload)
        .bind(&first.task)
        .bind(&first.queue)
        .bind(first.priority)
        .bind(first.max_attempts)
        .bind(first.run_at)
        .bind(first.delay.map(micros))
        .bind(first.timeout_ms)
        .bind(first.parent_id)
        .bind(&first.serial_key)
        .bind(&first.trace_context)
        .fetch_all_on(conn.re())
        .await
        .map_err(db)?;
    plain_ids(n, ids)
}

/// The result of a plain insert of `n` jobs: every one created, in input order.
fn plain_ids(n: usize, mut ids: Vec<i64>) -> Result<Vec<Enqueued>> {
    if ids.len() != n {
        return Err(storage(
            StorageErrorKind::Other,
            format!("enqueue of {n} jobs returned {} ids", ids.len()),
        ));
    }
    // Ids were drawn in input order; RETURNING promises no order, so restore it.
    ids.sort_unstable();
    Ok(ids
        .into_iter()
        .map(|id| Enqueued { id, created: true })
        .collect())
}

/// Writes one replace-mode keyed job: a claimable holder of the key takes the new
/// payload and options (and run_at, unless preserved) and keeps its id; a holder that
/// runs or waits mid-workflow gives up its key and a new job is created.
async fn replace_one(mut conn: Db<'_>, sql: &Sql, job: NewJob) -> Result<Enqueued> {
    let payload = serde_json::to_string(&job.payload)?;
    // Twice at most: a holder that is not claimable gives up its key, then the insert
    // meets no conflict (or a claimable job that a racing enqueue just created).
    for _ in 0..3 {
        let row = sqlx::query(AssertSqlSafe(sql.replace_keyed.clone()))
            .bind(&job.task)
            .bind(&payload)
            .bind(&job.queue)
            .bind(job.priority)
            .bind(job.max_attempts)
            .bind(job.run_at)
            .bind(job.delay.map(micros))
            .bind(&job.dedupe_key)
            .bind(job.timeout_ms)
            .bind(job.parent_id)
            .bind(&job.serial_key)
            .bind(&job.flags)
            .bind(&job.tags)
            .bind(job.key_mode == KeyMode::PreserveRunAt)
            .bind(&job.trace_context)
            .bind(sqlx::types::Json(&job.metadata))
            .fetch_optional_on(conn.re())
            .await
            .map_err(db)?;
        if let Some(row) = row {
            return Ok(Enqueued {
                id: row.try_get("id").map_err(db)?,
                created: row.try_get("created").map_err(db)?,
            });
        }
        sqlx::query(AssertSqlSafe(sql.release_key.clone()))
            .bind(&job.dedupe_key)
            .execute_on(conn.re())
            .await
            .map_err(db)?;
    }
    // Lost races every time: another try later can win.
    Err(storage(
        StorageErrorKind::Busy,
        format!(
            "job key `{}` kept changing hands during a replace; enqueue again",
            job.dedupe_key.as_deref().unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::same_columns;
    use durable_jobs::NewJob;
    use serde_json::json;
    use std::time::Duration;

    /// One way a job can differ from another, named for the failure message.
    type Change = (&'static str, fn(&mut NewJob));

    /// A batch takes the one-array insert only when every column but the payload agrees;
    /// any other difference keeps it on the per-row arrays.
    #[test]
    fn uniform_batches_differ_only_in_payload() {
        let base = NewJob::new("t", json!(1));
        assert!(same_columns(
            &base,
            &NewJob::new("t", json!({ "other": 2 }))
        ));
        let changes: Vec<Change> = vec![
            ("task", |j| j.task = "u".into()),
            ("queue", |j| j.queue = "q".into()),
            ("priority", |j| j.priority = 5),
            ("max_attempts", |j| j.max_attempts = 9),
            ("run_at", |j| j.run_at = Some(chrono::Utc::now())),
            ("delay", |j| j.delay = Some(Duration::from_secs(1))),
            ("timeout", |j| j.timeout_ms = Some(10)),
            ("parent", |j| j.parent_id = Some(3)),
            ("serial key", |j| j.serial_key = Some("k".into())),
            ("trace context", |j| {
                j.trace_context = Some("00-1-2-01".into())
            }),
        ];
        for (what, change) in changes {
            let mut other = NewJob::new("t", json!(1));
            change(&mut other);
            assert!(!same_columns(&base, &other), "{what} differs");
        }
    }
}
