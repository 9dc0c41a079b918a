//! The operations calls: schedules, paused queues, the management calls (retry,
//! reschedule, finish by hand, purge) and the worker registry. Job-key modes, serial keys
//! and flags live in the enqueue and claim statements (`sql.rs`, `tx.rs`).

use crate::error::{db, storage};
use crate::exec::{Exec, Fetch};
use crate::sql::render;
use crate::storage::PostgresStorage;
use chrono::{DateTime, Utc};
use durable_jobs::StorageErrorKind;
use durable_jobs::{
    AdvanceScheduleParams, Error, JobId, ManualOutcome, Result, ScheduleRecord, WorkerQueue,
    WorkerRecord,
};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};
use std::sync::Arc;

/// $1 name, $2 definition, $3 cursor for a new schedule.
const UPSERT_SCHEDULE: &str = "
INSERT INTO {schema}.schedules (name, definition, cursor) VALUES ($1, $2::jsonb, $3)
ON CONFLICT (name) DO UPDATE SET definition = excluded.definition";

const SCHEDULES: &str = "
SELECT name, definition, paused, cursor, last_job_id FROM {schema}.schedules ORDER BY name";

const PAUSE_SCHEDULE: &str = "UPDATE {schema}.schedules SET paused = $2 WHERE name = $1";

const DELETE_SCHEDULE: &str = "DELETE FROM {schema}.schedules WHERE name = $1";

/// Compare-and-set of the cursor; racing schedulers queue on the row lock and the
/// losers find the cursor moved. $1 name, $2 from, $3 to.
const MOVE_CURSOR: &str = "
UPDATE {schema}.schedules SET cursor = $3 WHERE name = $1 AND cursor = $2 RETURNING name";

const SET_LAST_JOB: &str = "UPDATE {schema}.schedules SET last_job_id = $2 WHERE name = $1";

/// Requeues one failed or cancelled job from scratch; its key comes back only if no
/// other unfinished job took it meanwhile. $1 id.
const RETRY_JOB: &str = "
UPDATE {schema}.jobs AS j
SET status = 'pending', attempt = 0, run_at = {now}, completed_at = NULL, result = NULL,
    dedupe_key = CASE WHEN EXISTS (
        SELECT 1 FROM {schema}.jobs o
        WHERE o.dedupe_key = j.dedupe_key AND o.status IN {unfinished}) THEN NULL
        ELSE j.dedupe_key END,
    wake_requested = false, updated_at = {now}
WHERE j.id = $1 AND j.status IN ('failed', 'cancelled')";

/// $1 id, $2 new run_at.
const RESCHEDULE: &str = "
UPDATE {schema}.jobs SET run_at = $2, updated_at = {now}
WHERE id = $1 AND status IN ('pending', 'retrying', 'waiting')";

/// $1 ids, $2 result (JSON text) or NULL, $3 error or NULL.
const FINISH_JOBS: &str = "
UPDATE {schema}.jobs
SET status = CASE WHEN $3::text IS NULL THEN 'completed' ELSE 'failed' END,
    result = CASE WHEN $3::text IS NULL THEN $2::jsonb ELSE result END,
    last_error = coalesce($3, last_error),
    completed_at = {now}, updated_at = {now}
WHERE id = ANY($1::bigint[]) AND status IN ('pending', 'retrying', 'waiting')";

/// Finished jobs that ended before $1, found through the `jobs_finished` partial index
/// (their checkpoints and signals cascade; the attempt history is part of the row).
pub(crate) const PURGE: &str = "
DELETE FROM {schema}.jobs
WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < $1";

const PAUSE_QUEUE: &str =
    "INSERT INTO {schema}.paused_queues (queue) VALUES ($1) ON CONFLICT DO NOTHING";

/// Resuming wakes workers of every process. $1 queue.
const RESUME_QUEUE: &str = "
WITH d AS (DELETE FROM {schema}.paused_queues WHERE queue = $1 RETURNING queue)
SELECT pg_notify({channel}, '')::text FROM d";

const PAUSED_QUEUES: &str = "SELECT queue FROM {schema}.paused_queues ORDER BY queue";

/// Records a worker or replaces the record of one with the same name; `last_seen` is the
/// storage clock's now, whatever the record says. $1 name, $2 host, $3 pid, $4 queues
/// (JSON text), $5 version, $6 started_at, $7 lease (ms).
const REGISTER_WORKER: &str = "
INSERT INTO {schema}.workers
    (name, host, pid, queues, version, started_at, last_seen, lease_ms)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, {now}, $7)
ON CONFLICT (name) DO UPDATE
SET host = excluded.host, pid = excluded.pid, queues = excluded.queues,
    version = excluded.version, started_at = excluded.started_at,
    last_seen = excluded.last_seen, lease_ms = excluded.lease_ms";

/// $1 name.
const TOUCH_WORKER: &str = "UPDATE {schema}.workers SET last_seen = {now} WHERE name = $1";

/// $1 name.
const DEREGISTER_WORKER: &str = "DELETE FROM {schema}.workers WHERE name = $1";

/// Read by position in this order (see `worker_from_row`).
const LIST_WORKERS: &str = "
SELECT name, host, pid, queues, version, started_at, last_seen, lease_ms
FROM {schema}.workers ORDER BY name";

/// $1 cut-off.
const PRUNE_WORKERS: &str = "DELETE FROM {schema}.workers WHERE last_seen < $1";

/// The operations statements for one schema.
#[derive(Debug, Clone)]
pub(crate) struct OperationsSql {
    upsert_schedule: Arc<str>,
    schedules: Arc<str>,
    pause_schedule: Arc<str>,
    delete_schedule: Arc<str>,
    move_cursor: Arc<str>,
    set_last_job: Arc<str>,
    retry_job: Arc<str>,
    reschedule: Arc<str>,
    finish_jobs: Arc<str>,
    purge: Arc<str>,
    pause_queue: Arc<str>,
    resume_queue: Arc<str>,
    paused_queues: Arc<str>,
    register_worker: Arc<str>,
    touch_worker: Arc<str>,
    deregister_worker: Arc<str>,
    list_workers: Arc<str>,
    prune_workers: Arc<str>,
}

impl OperationsSql {
    pub fn new(schema: &str, now: &str) -> Self {
        let r = |t: &str| render(t, schema, now);
        OperationsSql {
            upsert_schedule: r(UPSERT_SCHEDULE),
            schedules: r(SCHEDULES),
            pause_schedule: r(PAUSE_SCHEDULE),
            delete_schedule: r(DELETE_SCHEDULE),
            move_cursor: r(MOVE_CURSOR),
            set_last_job: r(SET_LAST_JOB),
            retry_job: r(RETRY_JOB),
            reschedule: r(RESCHEDULE),
            finish_jobs: r(FINISH_JOBS),
            purge: r(PURGE),
            pause_queue: r(PAUSE_QUEUE),
            resume_queue: r(RESUME_QUEUE),
            paused_queues: r(PAUSED_QUEUES),
            register_worker: r(REGISTER_WORKER),
            touch_worker: r(TOUCH_WORKER),
            deregister_worker: r(DEREGISTER_WORKER),
            list_workers: r(LIST_WORKERS),
            prune_workers: r(PRUNE_WORKERS),
        }
    }
}

impl PostgresStorage {
    pub(crate) async fn upsert_schedule_row(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(AssertSqlSafe(self.ops().upsert_schedule.clone()))
            .bind(name)
            .bind(serde_json::to_string(&definition)?)
            .bind(now)
            .execute_on(self.db())
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(crate) async fn schedule_rows(&self) -> Result<Vec<ScheduleRecord>> {
        let rows = sqlx::query(AssertSqlSafe(self.ops().schedules.clone()))
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(ScheduleRecord {
                    name: r.try_get("name").map_err(db)?,
                    definition: r.try_get("definition").map_err(db)?,
                    paused: r.try_get("paused").map_err(db)?,
                    cursor: r.try_get("cursor").map_err(db)?,
                    last_job_id: r.try_get("last_job_id").map_err(db)?,
                })
            })
            .collect()
    }

    pub(crate) async fn pause_schedule_row(&self, name: &str, paused: bool) -> Result<bool> {
        Ok(
            sqlx::query(AssertSqlSafe(self.ops().pause_schedule.clone()))
                .bind(name)
                .bind(paused)
                .execute_on(self.db())
                .await
                .map_err(db)?
                .rows_affected()
                > 0,
        )
    }

    pub(crate) async fn delete_schedule_row(&self, name: &str) -> Result<bool> {
        Ok(
            sqlx::query(AssertSqlSafe(self.ops().delete_schedule.clone()))
                .bind(name)
                .execute_on(self.db())
                .await
                .map_err(db)?
                .rows_affected()
                > 0,
        )
    }

    pub(crate) async fn advance_schedule_row(
        &self,
        params: AdvanceScheduleParams<'_>,
    ) -> Result<Option<Vec<JobId>>> {
        let AdvanceScheduleParams {
            name,
            from,
            to,
            jobs,
        } = params;
        let mut tx = self.begin().await.map_err(db)?;
        let moved = sqlx::query(AssertSqlSafe(self.ops().move_cursor.clone()))
            .bind(name)
            .bind(from)
            .bind(to)
            .fetch_optional_on(self.on(&mut tx))
            .await
            .map_err(db)?;
        if moved.is_none() {
            return Ok(None);
        }
        let ids: Vec<JobId> = crate::tx::insert_jobs(self.on(&mut tx), self.sql(), jobs)
            .await?
            .iter()
            .map(|e| e.id)
            .collect();
        if let Some(last) = ids.last() {
            sqlx::query(AssertSqlSafe(self.ops().set_last_job.clone()))
                .bind(name)
                .bind(last)
                .execute_on(self.on(&mut tx))
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        if !ids.is_empty() {
            self.wake_local();
        }
        Ok(Some(ids))
    }

    pub(crate) async fn retry_job_rows(
        &self,
        ids: &[JobId],
        keep_checkpoints: bool,
    ) -> Result<u64> {
        let mut n = 0;
        let mut tx = self.begin().await.map_err(db)?;
        // One job per statement: two retried jobs with one key must not both take it.
        for &id in ids {
            let done = sqlx::query(AssertSqlSafe(self.ops().retry_job.clone()))
                .bind(id)
                .execute_on(self.on(&mut tx))
                .await
                .map_err(db)?
                .rows_affected();
            if done > 0 && !keep_checkpoints {
                sqlx::query(AssertSqlSafe(self.sql().delete_checkpoints.clone()))
                    .bind(id)
                    .execute_on(self.on(&mut tx))
                    .await
                    .map_err(db)?;
            }
            n += done;
        }
        tx.commit().await.map_err(db)?;
        if n > 0 {
            self.notify_all().await?;
        }
        Ok(n)
    }

    pub(crate) async fn reschedule_row(
        &self,
        job_id: JobId,
        run_at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(AssertSqlSafe(self.ops().reschedule.clone()))
            .bind(job_id)
            .bind(run_at)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected();
        if done > 0 {
            self.notify_all().await?;
            return Ok(true);
        }
        let exists: bool = sqlx::query_scalar(AssertSqlSafe(self.sql().job_exists.clone()))
            .bind(job_id)
            .fetch_one_on(self.db())
            .await
            .map_err(db)?;
        if exists {
            Ok(false)
        } else {
            Err(Error::JobNotFound(job_id))
        }
    }

    pub(crate) async fn finish_job_rows(
        &self,
        ids: &[JobId],
        outcome: ManualOutcome,
    ) -> Result<u64> {
        let (result, error) = match outcome {
            ManualOutcome::Complete(v) => (Some(serde_json::to_string(&v)?), None),
            ManualOutcome::Fail(e) => (None, Some(e)),
        };
        Ok(sqlx::query(AssertSqlSafe(self.ops().finish_jobs.clone()))
            .bind(ids)
            .bind(result)
            .bind(error)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected())
    }

    pub(crate) async fn purge_rows(&self, older_than: DateTime<Utc>) -> Result<u64> {
        Ok(sqlx::query(AssertSqlSafe(self.ops().purge.clone()))
            .bind(older_than)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected())
    }

    pub(crate) async fn pause_queue_row(&self, queue: &str, paused: bool) -> Result<()> {
        let sql = if paused {
            &self.ops().pause_queue
        } else {
            &self.ops().resume_queue
        };
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(queue)
            .execute_on(self.db())
            .await
            .map_err(db)?;
        if !paused {
            self.wake_local();
        }
        Ok(())
    }

    pub(crate) async fn set_key_limit_row(
        &self,
        key: &str,
        max_running: Option<u32>,
    ) -> Result<()> {
        let table = format!("{}.key_limits", crate::options::quote_ident(self.schema()));
        match max_running {
            Some(n) => {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} (serial_key, max_running) VALUES ($1, $2) \
                     ON CONFLICT (serial_key) DO UPDATE SET max_running = excluded.max_running"
                )))
                .bind(key)
                .bind(i32::try_from(n).unwrap_or(i32::MAX))
                .execute_on(self.db())
                .await
                .map_err(db)?;
                // A raised limit may make jobs claimable now.
                self.wake_local();
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE serial_key = $1"
                )))
                .bind(key)
                .execute_on(self.db())
                .await
                .map_err(db)?;
            }
        }
        Ok(())
    }

    pub(crate) async fn key_limit_rows(&self) -> Result<Vec<(String, u32)>> {
        let table = format!("{}.key_limits", crate::options::quote_ident(self.schema()));
        let rows: Vec<(String, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT serial_key, max_running FROM {table} ORDER BY serial_key"
        )))
        .fetch_all_on(self.db())
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(k, n)| (k, u32::try_from(n).unwrap_or(1)))
            .collect())
    }

    pub(crate) async fn paused_queue_rows(&self) -> Result<Vec<String>> {
        sqlx::query_scalar(AssertSqlSafe(self.ops().paused_queues.clone()))
            .fetch_all_on(self.db())
            .await
            .map_err(db)
    }

    pub(crate) async fn register_worker_row(&self, worker: WorkerRecord) -> Result<()> {
        sqlx::query(AssertSqlSafe(self.ops().register_worker.clone()))
            .bind(&worker.name)
            .bind(&worker.host)
            .bind(i64::from(worker.pid))
            .bind(serde_json::to_string(&worker.queues)?)
            .bind(&worker.version)
            .bind(worker.started_at)
            .bind(worker.lease_ms)
            .execute_on(self.db())
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(crate) async fn touch_worker_row(&self, name: &str) -> Result<bool> {
        Ok(sqlx::query(AssertSqlSafe(self.ops().touch_worker.clone()))
            .bind(name)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected()
            > 0)
    }

    pub(crate) async fn deregister_worker_row(&self, name: &str) -> Result<bool> {
        Ok(
            sqlx::query(AssertSqlSafe(self.ops().deregister_worker.clone()))
                .bind(name)
                .execute_on(self.db())
                .await
                .map_err(db)?
                .rows_affected()
                > 0,
        )
    }

    pub(crate) async fn worker_rows(&self) -> Result<Vec<WorkerRecord>> {
        sqlx::query(AssertSqlSafe(self.ops().list_workers.clone()))
            .fetch_all_on(self.db())
            .await
            .map_err(db)?
            .iter()
            .map(worker_from_row)
            .collect()
    }

    pub(crate) async fn prune_worker_rows(&self, before: DateTime<Utc>) -> Result<u64> {
        Ok(sqlx::query(AssertSqlSafe(self.ops().prune_workers.clone()))
            .bind(before)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected())
    }

    /// Wakes workers in every process (after a change that made jobs due).
    async fn notify_all(&self) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(self.channel())
            .execute_on(self.db())
            .await
            .map_err(db)?;
        self.wake_local();
        Ok(())
    }
}

/// Decodes a worker from a row of [`LIST_WORKERS`], by position.
fn worker_from_row(row: &PgRow) -> Result<WorkerRecord> {
    let pid: i64 = row.try_get(2).map_err(db)?;
    let queues: Json<Vec<WorkerQueue>> = row.try_get(3).map_err(db)?;
    Ok(WorkerRecord {
        name: row.try_get(0).map_err(db)?,
        host: row.try_get(1).map_err(db)?,
        pid: u32::try_from(pid).map_err(|_| {
            storage(
                StorageErrorKind::Corrupt,
                format!("worker pid {pid} in storage is not a process id"),
            )
        })?,
        queues: queues.0,
        version: row.try_get(4).map_err(db)?,
        started_at: row.try_get(5).map_err(db)?,
        last_seen: row.try_get(6).map_err(db)?,
        lease_ms: row.try_get(7).map_err(db)?,
    })
}
