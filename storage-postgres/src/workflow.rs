//! Workflow storage: suspend and wake, children, durable signals, subtree cancel and
//! deletion (the [`durable_jobs::Storage`] workflow calls).
//!
//! A waiting job sits in the claim index with its wake time as `run_at` (far in the
//! future when it waits only for a signal or its children). Anything that wakes it moves
//! `run_at` to now, or, while it runs, sets `wake_requested` so its next suspend is due
//! at once. A child's final write wakes its parent through a trigger, in the child's
//! transaction.

use crate::error::{db, storage};
use crate::exec::{Exec, Fetch};
use crate::sql::{render, with_history};
use crate::storage::PostgresStorage;
use chrono::{DateTime, Utc};
use durable_jobs::job::far_future;
use durable_jobs::{
    AttemptOutcome, CheckpointOutcome, CheckpointWrite, Error, JobId, Lease, Result,
    SpawnChildrenParams, StorageErrorKind, TakeSignalsParams,
};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Suspends a running job; its attempt is recorded as `suspended` under the number it ran
/// as (it resumes under that number). $1 id, $2 token, $3 wake time.
const SUSPEND: &str = "
WITH u AS (
    UPDATE {schema}.jobs
    SET status = 'waiting',
        attempts = {history},
        attempt = attempt - 1,
        run_at = CASE WHEN wake_requested THEN {now} ELSE $3 END,
        wake_requested = false,
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = {now}
    WHERE id = $1 AND status = 'running' AND lease_token = $2
    RETURNING run_at <= {now} AS due
)
SELECT due, CASE WHEN due THEN pg_notify({channel}, '')::text END AS notified FROM u";

/// Holds the lease for the rest of the transaction. $1 id, $2 token.
const HOLD: &str = "
SELECT id FROM {schema}.jobs WHERE id = $1 AND status = 'running' AND lease_token = $2
FOR SHARE";

/// Stores a checkpoint, written now (the lease is already held). $1 job, $2 key, $3 name,
/// $4 value.
const PUT_CHECKPOINT: &str = "
INSERT INTO {schema}.checkpoints (job_id, key, name, ok, created_at)
VALUES ($1, $2, $3, $4::jsonb, {now})
ON CONFLICT (job_id, key) DO UPDATE
SET name = excluded.name, ok = excluded.ok, err = NULL, created_at = excluded.created_at";

/// Stores many checkpoints in one statement, each fenced by its own lease: the rows of
/// the batch's running jobs are share-locked (in id order, so two batches never lock in
/// opposite orders) and only items whose token is the row's current one are written.
/// Returns the locked rows' ids and tokens, from which each item's result follows.
/// $1 job ids, $2 tokens, $3 keys, $4 names, $5 ok values (JSON text), $6 errors, $7
/// argument hashes; one element per item, no (job, key) twice.
const CHECKPOINT_MANY: &str = "
WITH held AS (
    SELECT j.id, j.lease_token FROM {schema}.jobs AS j
    WHERE j.id = ANY($1::bigint[]) AND j.status = 'running'
    ORDER BY j.id
    FOR SHARE
),
ins AS (
    INSERT INTO {schema}.checkpoints (job_id, key, name, ok, err, created_at, args_hash)
    SELECT d.job_id, d.key, d.name, d.ok::jsonb, d.err, {now}, d.args_hash
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[])
        AS d(job_id, token, key, name, ok, err, args_hash)
    JOIN held ON held.id = d.job_id AND held.lease_token = d.token
    ON CONFLICT (job_id, key) DO UPDATE
    SET name = excluded.name, ok = excluded.ok, err = excluded.err,
        created_at = excluded.created_at, args_hash = excluded.args_hash
)
SELECT id, lease_token FROM held";

/// $1 job, $2 name, $3 payload (JSON text).
const SEND_SIGNAL: &str = "SELECT {schema}.send_signal($1, $2, $3::jsonb) AS status";

/// Consumes up to $4 of the leased job's oldest signals named $3 and checkpoints them
/// at $5, fenced. $1 id, $2 token.
const TAKE_SIGNALS: &str = "
WITH held AS (
    SELECT id FROM {schema}.jobs WHERE id = $1 AND status = 'running' AND lease_token = $2
    FOR SHARE
),
taken AS (
    DELETE FROM {schema}.signals AS s
    WHERE s.id IN (
        SELECT s2.id FROM {schema}.signals AS s2 JOIN held ON s2.job_id = held.id
        WHERE s2.name = $3
        ORDER BY s2.id
        LIMIT $4
        FOR UPDATE OF s2
    )
    RETURNING s.id, s.payload
),
cp AS (
    INSERT INTO {schema}.checkpoints (job_id, key, name, ok, created_at)
    SELECT $1, $5, 'signal:' || $3, jsonb_agg(payload ORDER BY id), {now} FROM taken
    HAVING count(*) > 0
    ON CONFLICT (job_id, key) DO UPDATE
    SET name = excluded.name, ok = excluded.ok, err = NULL, created_at = excluded.created_at
)
SELECT EXISTS (SELECT 1 FROM held) AS held,
       coalesce((SELECT jsonb_agg(payload ORDER BY id) FROM taken), '[]'::jsonb) AS payloads";

/// $1 job, $2 name.
const PEEK_SIGNAL: &str = "
SELECT payload FROM {schema}.signals WHERE job_id = $1 AND name = $2 ORDER BY id LIMIT 1";

/// Deletes a job that is not running (checkpoints and signals cascade; its attempt
/// history is a column of the row). $1 id.
const DELETE_JOB: &str = "DELETE FROM {schema}.jobs WHERE id = $1 AND status <> 'running'";

const JOB_STATUS: &str = "SELECT status FROM {schema}.jobs WHERE id = $1";

/// Heals one window of parents (after parent id $1, at most $2 of them, walking the
/// `jobs_parent` index, so only jobs that have children are looked at): a waiting parent
/// not yet due, one of whose children finished after the parent last changed, becomes
/// due now. Only a write from outside the library can leave that state (a child's final
/// write wakes its parent in its own transaction, through `jobs_wake_parent`); a parent
/// healed needlessly re-runs and suspends again. Returns how many were healed and the
/// window's last parent id (NULL when the window was empty: the next sweep wraps around).
const HEAL: &str = "
WITH win AS (
    SELECT DISTINCT parent_id AS id FROM {schema}.jobs
    WHERE parent_id > $1
    ORDER BY parent_id
    LIMIT $2
),
healed AS (
    UPDATE {schema}.jobs AS p
    SET run_at = {now}, updated_at = {now}
    FROM win
    WHERE p.id = win.id AND p.status = 'waiting' AND p.run_at > {now}
      AND EXISTS (
          SELECT 1 FROM {schema}.jobs AS c
          WHERE c.parent_id = p.id AND c.status IN ('completed', 'failed', 'cancelled')
            AND c.completed_at > p.updated_at)
    RETURNING p.id
)
SELECT (SELECT count(*) FROM healed), (SELECT max(id) FROM win)";

/// How many parents one sweep examines for healing.
const HEAL_WINDOW: i64 = 1000;

/// The workflow statements for one schema.
#[derive(Debug, Clone)]
pub(crate) struct WorkflowSql {
    suspend: Arc<str>,
    hold: Arc<str>,
    put_checkpoint: Arc<str>,
    checkpoint_many: Arc<str>,
    send_signal: Arc<str>,
    take_signals: Arc<str>,
    peek_signal: Arc<str>,
    delete_job: Arc<str>,
    job_status: Arc<str>,
    heal: Arc<str>,
}

impl WorkflowSql {
    pub fn new(schema: &str, now: &str) -> Self {
        let r = |t: &str| render(t, schema, now);
        WorkflowSql {
            suspend: r(&with_history(SUSPEND, AttemptOutcome::Suspended, "NULL")),
            hold: r(HOLD),
            put_checkpoint: r(PUT_CHECKPOINT),
            checkpoint_many: r(CHECKPOINT_MANY),
            send_signal: r(SEND_SIGNAL),
            take_signals: r(TAKE_SIGNALS),
            peek_signal: r(PEEK_SIGNAL),
            delete_job: r(DELETE_JOB),
            job_status: r(JOB_STATUS),
            heal: r(HEAL),
        }
    }
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        job_id: lease.job_id,
    }
}

impl PostgresStorage {
    /// Heals the next window of waiting parents (see [`HEAL`]), moving the storage's heal
    /// cursor on; returns how many parents it woke.
    pub(crate) async fn heal_waiting_parents(&self) -> Result<u64> {
        let after = self.heal_cursor().load(Ordering::Relaxed);
        let row = sqlx::query(AssertSqlSafe(self.wf().heal.clone()))
            .bind(after)
            .bind(HEAL_WINDOW)
            .fetch_one_on(self.db())
            .await
            .map_err(db)?;
        let healed: i64 = row.try_get(0).map_err(db)?;
        let last: Option<i64> = row.try_get(1).map_err(db)?;
        // Concurrent sweeps of one storage may both read the cursor; each heals what it
        // finds, and healing twice is harmless.
        self.heal_cursor()
            .store(last.unwrap_or(0), Ordering::Relaxed);
        if healed > 0 {
            self.wake_local();
        }
        Ok(u64::try_from(healed).unwrap_or(0))
    }

    pub(crate) async fn suspend_job(
        &self,
        lease: &Lease,
        wake_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let due: Option<bool> = sqlx::query_scalar(AssertSqlSafe(self.wf().suspend.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(wake_at.unwrap_or_else(far_future))
            .fetch_optional_on(self.db())
            .await
            .map_err(db)?;
        match due {
            None => Err(lease_lost(lease)),
            Some(due) => {
                if due {
                    self.wake_local();
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn spawn_child_jobs(
        &self,
        params: SpawnChildrenParams<'_>,
    ) -> Result<Vec<JobId>> {
        let SpawnChildrenParams {
            lease,
            key,
            name,
            jobs,
        } = params;
        let mut tx = self.begin().await.map_err(db)?;
        // The share lock keeps a reclaim or cancel from ending the lease before commit.
        let held = sqlx::query(AssertSqlSafe(self.wf().hold.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .fetch_optional_on(self.on(&mut tx))
            .await
            .map_err(db)?;
        if held.is_none() {
            return Err(lease_lost(lease));
        }
        let jobs = jobs
            .into_iter()
            .map(|mut j| {
                j.parent_id = Some(lease.job_id);
                j
            })
            .collect();
        let ids: Vec<JobId> = crate::tx::insert_jobs(self.on(&mut tx), self.sql(), jobs)
            .await?
            .iter()
            .map(|e| e.id)
            .collect();
        sqlx::query(AssertSqlSafe(self.wf().put_checkpoint.clone()))
            .bind(lease.job_id)
            .bind(key)
            .bind(name)
            .bind(serde_json::to_string(&ids)?)
            .execute_on(self.on(&mut tx))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.wake_local();
        Ok(ids)
    }

    pub(crate) async fn signal_job(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        let status: Option<String> =
            sqlx::query_scalar(AssertSqlSafe(self.wf().send_signal.clone()))
                .bind(job_id)
                .bind(name)
                .bind(serde_json::to_string(&payload)?)
                .fetch_one_on(self.db())
                .await
                .map_err(db)?;
        match status.as_deref() {
            None => Err(Error::JobNotFound(job_id)),
            Some(s @ ("completed" | "failed" | "cancelled")) => Err(Error::JobFinished {
                job_id,
                status: s.to_string(),
            }),
            Some(_) => {
                self.wake_local();
                Ok(())
            }
        }
    }

    pub(crate) async fn take_job_signals(
        &self,
        params: TakeSignalsParams<'_>,
    ) -> Result<Vec<Value>> {
        let TakeSignalsParams {
            lease,
            name,
            limit,
            key,
        } = params;
        let row = sqlx::query(AssertSqlSafe(self.wf().take_signals.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(name)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(key)
            .fetch_one_on(self.db())
            .await
            .map_err(db)?;
        let held: bool = row.try_get("held").map_err(db)?;
        if !held {
            return Err(lease_lost(lease));
        }
        match row.try_get::<Value, _>("payloads").map_err(db)? {
            Value::Array(v) => Ok(v),
            other => Err(storage(
                StorageErrorKind::Other,
                format!("take_signals returned {other} instead of an array"),
            )),
        }
    }

    pub(crate) async fn peek_job_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        sqlx::query_scalar(AssertSqlSafe(self.wf().peek_signal.clone()))
            .bind(job_id)
            .bind(name)
            .fetch_optional_on(self.db())
            .await
            .map_err(db)
    }

    pub(crate) async fn delete_one_job(&self, job_id: JobId) -> Result<bool> {
        let deleted = sqlx::query(AssertSqlSafe(self.wf().delete_job.clone()))
            .bind(job_id)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected();
        if deleted > 0 {
            return Ok(true);
        }
        let status: Option<String> =
            sqlx::query_scalar(AssertSqlSafe(self.wf().job_status.clone()))
                .bind(job_id)
                .fetch_optional_on(self.db())
                .await
                .map_err(db)?;
        match status {
            None => Ok(false),
            Some(status) => Err(Error::InvalidState {
                job_id,
                status,
                operation: "delete",
            }),
        }
    }

    /// [`durable_jobs::Storage::checkpoint_many`]: one statement, one commit.
    pub(crate) async fn checkpoint_jobs(
        &self,
        items: Vec<CheckpointWrite>,
    ) -> Result<Vec<Result<()>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // One row per (job, token, key): a later item replaces an earlier one, as
        // sequential writes would, and the upsert never meets one row twice.
        let mut slot: HashMap<(JobId, i64, &str), usize> = HashMap::with_capacity(items.len());
        let mut rows: Vec<&CheckpointWrite> = Vec::with_capacity(items.len());
        for item in &items {
            let k = (
                item.lease.job_id,
                item.lease.token,
                item.checkpoint.key.as_str(),
            );
            match slot.get(&k) {
                Some(&i) => rows[i] = item,
                None => {
                    slot.insert(k, rows.len());
                    rows.push(item);
                }
            }
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut tokens = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        let mut names = Vec::with_capacity(rows.len());
        let mut oks: Vec<Option<String>> = Vec::with_capacity(rows.len());
        let mut errs: Vec<Option<String>> = Vec::with_capacity(rows.len());
        let mut hashes: Vec<Option<&str>> = Vec::with_capacity(rows.len());
        for item in rows {
            hashes.push(item.checkpoint.args_hash.as_deref());
            ids.push(item.lease.job_id);
            tokens.push(item.lease.token);
            keys.push(item.checkpoint.key.as_str());
            names.push(item.checkpoint.name.as_str());
            match &item.checkpoint.outcome {
                CheckpointOutcome::Ok(v) => {
                    oks.push(Some(serde_json::to_string(v)?));
                    errs.push(None);
                }
                CheckpointOutcome::Err(e) => {
                    oks.push(None);
                    errs.push(Some(e.clone()));
                }
            }
        }
        let held = sqlx::query(AssertSqlSafe(self.wf().checkpoint_many.clone()))
            .bind(&ids)
            .bind(&tokens)
            .bind(&keys)
            .bind(&names)
            .bind(&oks)
            .bind(&errs)
            .bind(&hashes)
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        let mut current = HashMap::with_capacity(held.len());
        for row in &held {
            let id: i64 = row.try_get(0).map_err(db)?;
            let token: Option<i64> = row.try_get(1).map_err(db)?;
            current.insert(id, token);
        }
        Ok(items
            .iter()
            .map(|item| match current.get(&item.lease.job_id) {
                Some(&Some(token)) if token == item.lease.token => Ok(()),
                _ => Err(lease_lost(&item.lease)),
            })
            .collect())
    }
}
