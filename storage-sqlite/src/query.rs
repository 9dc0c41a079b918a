//! The SQL behind each storage call, run synchronously on a connection (the writer
//! thread's inside its transaction, or a reader's). Times are integer microseconds since
//! the Unix epoch, from the storage's clock.

use crate::error::{bad_json, QResult};
use chrono::{DateTime, Utc};
use durable_jobs::{
    Checkpoint, CheckpointOutcome, ClaimedJob, Completion, DequeueParams, Enqueued, Error, Failure,
    Job, JobFilter, JobId, JobStatus, Lease, LeaseInfo, NewJob, QueueCount,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde_json::Value;
use std::time::Duration;

/// Every job column, in the order [`job_from_row`] reads them.
const JOB_COLUMNS: &str = "id, task, payload, queue, priority, status, attempt, max_attempts, \
     run_at, lease_holder, lease_token, lease_expires_at, last_error, result, dedupe_key, \
     timeout_ms, created_at, started_at, completed_at, updated_at";

pub(crate) const UNFINISHED: &str = "('pending', 'retrying', 'running', 'waiting')";

const INSERT_JOB: &str = "INSERT INTO durable_jobs (task, payload, queue, priority, status, \
     max_attempts, run_at, dedupe_key, timeout_ms, created_at, updated_at, parent_id) \
     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?9, ?9, ?10)";

const FIND_DEDUPE: &str = "SELECT id FROM durable_jobs WHERE dedupe_key = ?1 \
     AND status IN ('pending', 'retrying', 'running', 'waiting')";

/// The fence every lease-holding write carries: same job, running, same token.
pub(crate) const FENCE: &str = "id = ?1 AND status = 'running' AND lease_token = ?2";

const COMPLETE: &str = "UPDATE durable_jobs SET status = 'completed', result = ?3, \
     completed_at = ?4, updated_at = ?4, lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2 \
     RETURNING parent_id";

const FAIL_RETRY: &str = "UPDATE durable_jobs SET status = 'retrying', last_error = ?3, \
     run_at = ?5, updated_at = ?4, lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2";

const FAIL_TERMINAL: &str = "UPDATE durable_jobs SET status = 'failed', last_error = ?3, \
     completed_at = ?4, updated_at = ?4, lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2 \
     RETURNING parent_id";

const RELEASE: &str = "UPDATE durable_jobs SET attempt = attempt - 1, \
     status = CASE WHEN attempt - 1 > 0 THEN 'retrying' ELSE 'pending' END, \
     run_at = ?3, updated_at = ?3, lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2";

const HEARTBEAT: &str = "UPDATE durable_jobs SET lease_expires_at = ?3, updated_at = ?4 \
     WHERE id = ?1 AND status = 'running' AND lease_token = ?2";

const RECLAIM: &str = "UPDATE durable_jobs SET \
     status = CASE WHEN attempt < max_attempts THEN 'retrying' ELSE 'failed' END, \
     run_at = CASE WHEN attempt < max_attempts THEN ?1 ELSE run_at END, \
     completed_at = CASE WHEN attempt < max_attempts THEN NULL ELSE ?1 END, \
     last_error = 'lease expired: the worker stopped heartbeating', \
     updated_at = ?1, lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL \
     WHERE status = 'running' AND lease_expires_at <= ?1 \
     RETURNING status, parent_id";

const SAVE_CHECKPOINT: &str = "INSERT OR REPLACE INTO durable_jobs_checkpoints \
     (job_id, key, name, ok, value) VALUES (?1, ?2, ?3, ?4, ?5)";

/// A time as stored: microseconds since the Unix epoch.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(column: &str, us: i64) -> QResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| {
        Error::Storage(format!(
            "sqlite: column `{column}` holds an out-of-range time {us}"
        ))
        .into()
    })
}

fn opt_time(column: &str, us: Option<i64>) -> QResult<Option<DateTime<Utc>>> {
    us.map(|us| time(column, us)).transpose()
}

fn after(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn json_text(v: &Value) -> QResult<String> {
    Ok(serde_json::to_string(v).map_err(Error::from)?)
}

fn parse_json(column: &str, text: &str) -> QResult<Value> {
    Ok(serde_json::from_str(text).map_err(|e| bad_json(column, e))?)
}

fn job_from_row(row: &Row<'_>) -> QResult<Job> {
    let payload: String = row.get(2)?;
    let status: String = row.get(5)?;
    let holder: Option<String> = row.get(9)?;
    let token: Option<i64> = row.get(10)?;
    let expires: Option<i64> = row.get(11)?;
    let result: Option<String> = row.get(13)?;
    let lease = match (holder, token, expires) {
        (Some(holder), Some(token), Some(exp)) => Some(LeaseInfo {
            holder,
            token,
            expires_at: time("lease_expires_at", exp)?,
        }),
        _ => None,
    };
    Ok(Job {
        id: row.get(0)?,
        task: row.get(1)?,
        payload: parse_json("payload", &payload)?,
        queue: row.get(3)?,
        priority: row.get(4)?,
        status: status.parse::<JobStatus>()?,
        attempt: row.get(6)?,
        max_attempts: row.get(7)?,
        run_at: time("run_at", row.get(8)?)?,
        lease,
        last_error: row.get(12)?,
        result: result.map(|r| parse_json("result", &r)).transpose()?,
        dedupe_key: row.get(14)?,
        timeout_ms: row.get(15)?,
        created_at: time("created_at", row.get(16)?)?,
        started_at: opt_time("started_at", row.get(17)?)?,
        completed_at: opt_time("completed_at", row.get(18)?)?,
        updated_at: time("updated_at", row.get(19)?)?,
    })
}

fn lease_lost(lease: &Lease) -> QResult<()> {
    Err(Error::LeaseLost {
        job_id: lease.job_id,
    }
    .into())
}

/// Inserts one job (or finds the unfinished job holding its dedupe key).
pub(crate) fn insert_job(conn: &Connection, job: &NewJob, now: DateTime<Utc>) -> QResult<Enqueued> {
    if let Some(key) = &job.dedupe_key {
        let existing: Option<JobId> = conn
            .prepare_cached(FIND_DEDUPE)?
            .query_row([key], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(Enqueued { id, created: false });
        }
    }
    let now_us = micros(now);
    conn.prepare_cached(INSERT_JOB)?.execute(params![
        job.task,
        json_text(&job.payload)?,
        job.queue,
        job.priority,
        job.max_attempts,
        micros(job.resolve_run_at(now)),
        job.dedupe_key,
        job.timeout_ms,
        now_us,
        job.parent_id,
    ])?;
    Ok(Enqueued {
        id: conn.last_insert_rowid(),
        created: true,
    })
}

/// The claim statement for this many queues and task names. One statement: the
/// sub-select picks due, claimable jobs in claim order through the partial claim index,
/// and the UPDATE flips them to running in the same step, inside the writer's
/// `BEGIN IMMEDIATE` transaction, so no other connection can claim them in between.
fn claim_sql(queues: usize, tasks: usize) -> String {
    let list = |start: usize, n: usize| {
        (start..start + n)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let task_filter = if tasks == 0 {
        String::new()
    } else {
        format!(" AND task IN ({})", list(6 + queues, tasks))
    };
    format!(
        "UPDATE durable_jobs SET status = 'running', attempt = attempt + 1, \
         lease_holder = ?1, lease_token = ?2, lease_expires_at = ?3, started_at = ?4, \
         updated_at = ?4, wake_requested = 0 \
         WHERE id IN (SELECT id FROM durable_jobs \
           WHERE status IN ('pending', 'retrying', 'waiting') AND queue IN ({queues}){task_filter} \
           AND run_at <= ?4 ORDER BY priority DESC, run_at, id LIMIT ?5) \
         RETURNING {JOB_COLUMNS}",
        queues = list(6, queues),
    )
}

/// Claims up to `limit` due jobs; see [`durable_jobs::Storage::dequeue`].
pub(crate) fn dequeue(
    conn: &Connection,
    p: &DequeueParams,
    now: DateTime<Utc>,
    token: i64,
) -> QResult<Vec<ClaimedJob>> {
    if p.queues.is_empty() || p.limit == 0 {
        return Ok(Vec::new());
    }
    let now_us = micros(now);
    let expires = after(now_us, p.lease_duration);
    let expires_at = time("lease_expires_at", expires)?;
    let mut args: Vec<SqlValue> = vec![
        SqlValue::Text(p.holder.clone()),
        SqlValue::Integer(token),
        SqlValue::Integer(expires),
        SqlValue::Integer(now_us),
        SqlValue::Integer(i64::try_from(p.limit).unwrap_or(i64::MAX)),
    ];
    args.extend(p.queues.iter().map(|q| SqlValue::Text(q.clone())));
    args.extend(p.tasks.iter().map(|t| SqlValue::Text(t.clone())));
    let mut stmt = conn.prepare_cached(&claim_sql(p.queues.len(), p.tasks.len()))?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::with_capacity(p.limit.min(1024));
    while let Some(row) = rows.next()? {
        let job = job_from_row(row)?;
        out.push(ClaimedJob {
            lease: Lease {
                job_id: job.id,
                attempt: job.attempt,
                token,
                expires_at,
            },
            job,
        });
    }
    // RETURNING yields rows in no particular order; hand them out in claim order.
    out.sort_by(|a, b| {
        (std::cmp::Reverse(a.job.priority), a.job.run_at, a.job.id).cmp(&(
            std::cmp::Reverse(b.job.priority),
            b.job.run_at,
            b.job.id,
        ))
    });
    Ok(out)
}

/// Completes one leased job and wakes its parent. Fenced. True when a parent was woken.
pub(crate) fn complete(conn: &Connection, c: &Completion, now: i64) -> QResult<bool> {
    let parent: Option<Option<JobId>> = conn
        .prepare_cached(COMPLETE)?
        .query_row(
            params![c.lease.job_id, c.lease.token, json_text(&c.result)?, now],
            |r| r.get(0),
        )
        .optional()?;
    match parent {
        None => lease_lost(&c.lease).map(|()| false),
        Some(parent) => wake_parent(conn, parent, now),
    }
}

/// A finished child's parent is woken in the child's transaction, so no crash can leave
/// the parent waiting for a child that is done.
fn wake_parent(conn: &Connection, parent: Option<JobId>, now: i64) -> QResult<bool> {
    match parent {
        Some(p) => crate::workflow::wake_job(conn, p, now),
        None => Ok(false),
    }
}

/// Records a failed attempt; a terminal failure wakes the parent. Fenced. True when a
/// parent was woken.
pub(crate) fn fail(conn: &Connection, lease: &Lease, f: &Failure, now: i64) -> QResult<bool> {
    match f.retry_in {
        Some(d) => {
            let n = conn.prepare_cached(FAIL_RETRY)?.execute(params![
                lease.job_id,
                lease.token,
                f.error,
                now,
                after(now, d)
            ])?;
            if n == 0 {
                return lease_lost(lease).map(|()| false);
            }
            Ok(false)
        }
        None => {
            let parent: Option<Option<JobId>> = conn
                .prepare_cached(FAIL_TERMINAL)?
                .query_row(params![lease.job_id, lease.token, f.error, now], |r| {
                    r.get(0)
                })
                .optional()?;
            match parent {
                None => lease_lost(lease).map(|()| false),
                Some(parent) => wake_parent(conn, parent, now),
            }
        }
    }
}

/// Returns a running job unspent. Fenced.
pub(crate) fn release(conn: &Connection, lease: &Lease, now: i64) -> QResult<()> {
    let n = conn
        .prepare_cached(RELEASE)?
        .execute(params![lease.job_id, lease.token, now])?;
    if n == 0 {
        return lease_lost(lease);
    }
    Ok(())
}

/// Extends a lease. Fenced.
pub(crate) fn heartbeat(
    conn: &Connection,
    lease: &Lease,
    extend: Duration,
    now: i64,
) -> QResult<Lease> {
    let expires = after(now, extend);
    let n = conn.prepare_cached(HEARTBEAT)?.execute(params![
        lease.job_id,
        lease.token,
        expires,
        now
    ])?;
    if n == 0 {
        lease_lost(lease)?;
    }
    Ok(Lease {
        expires_at: time("lease_expires_at", expires)?,
        ..lease.clone()
    })
}

/// Returns expired leases' jobs to retrying, or fails them when out of attempts (waking
/// their parents), then heals one window of waiting parents (from id `heal_after`; see
/// [`crate::workflow::heal_waiting_parents`]). Returns how many jobs it touched and where
/// the next heal window starts.
pub(crate) fn reclaim_expired(conn: &Connection, now: i64, heal_after: i64) -> QResult<(u64, i64)> {
    let mut failed_parents = Vec::new();
    let mut n = 0u64;
    {
        let mut stmt = conn.prepare_cached(RECLAIM)?;
        let mut rows = stmt.query([now])?;
        while let Some(row) = rows.next()? {
            n += 1;
            let status: String = row.get(0)?;
            let parent: Option<JobId> = row.get(1)?;
            if let (Some(p), "failed") = (parent, status.as_str()) {
                failed_parents.push(p);
            }
        }
    }
    for p in failed_parents {
        crate::workflow::wake_job(conn, p, now)?;
    }
    let (healed, next) = crate::workflow::heal_waiting_parents(conn, now, heal_after)?;
    Ok((n + healed, next))
}

/// Stores a checkpoint. Fenced.
pub(crate) fn save_checkpoint(conn: &Connection, lease: &Lease, cp: &Checkpoint) -> QResult<()> {
    let held: Option<i64> = conn
        .prepare_cached(&format!("SELECT 1 FROM durable_jobs WHERE {FENCE}"))?
        .query_row(params![lease.job_id, lease.token], |r| r.get(0))
        .optional()?;
    if held.is_none() {
        return lease_lost(lease);
    }
    let (ok, value) = match &cp.outcome {
        CheckpointOutcome::Ok(v) => (true, json_text(v)?),
        CheckpointOutcome::Err(msg) => (false, msg.clone()),
    };
    conn.prepare_cached(SAVE_CHECKPOINT)?.execute(params![
        lease.job_id,
        cp.key,
        cp.name,
        ok,
        value
    ])?;
    Ok(())
}

/// A job's checkpoints in key order.
pub(crate) fn checkpoints(conn: &Connection, job_id: JobId) -> QResult<Vec<Checkpoint>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, name, ok, value FROM durable_jobs_checkpoints WHERE job_id = ?1 ORDER BY key",
    )?;
    let mut rows = stmt.query([job_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let ok: bool = row.get(2)?;
        let value: String = row.get(3)?;
        out.push(Checkpoint {
            key: row.get(0)?,
            name: row.get(1)?,
            outcome: if ok {
                CheckpointOutcome::Ok(parse_json("value", &value)?)
            } else {
                CheckpointOutcome::Err(value)
            },
        });
    }
    Ok(out)
}

/// Deletes a job's checkpoints.
pub(crate) fn delete_checkpoints(conn: &Connection, job_id: JobId) -> QResult<u64> {
    Ok(conn
        .prepare_cached("DELETE FROM durable_jobs_checkpoints WHERE job_id = ?1")?
        .execute([job_id])? as u64)
}

/// One job by id.
pub(crate) fn get_job(conn: &Connection, job_id: JobId) -> QResult<Option<Job>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM durable_jobs WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([job_id])?;
    match rows.next()? {
        Some(row) => Ok(Some(job_from_row(row)?)),
        None => Ok(None),
    }
}

/// Jobs matching a filter, by ascending id.
pub(crate) fn list_jobs(conn: &Connection, f: &JobFilter) -> QResult<Vec<Job>> {
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM durable_jobs WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    if !f.statuses.is_empty() {
        let marks = vec!["?"; f.statuses.len()].join(", ");
        sql.push_str(&format!(" AND status IN ({marks})"));
        args.extend(f.statuses.iter().map(|s| SqlValue::Text(s.as_str().into())));
    }
    if let Some(q) = &f.queue {
        sql.push_str(" AND queue = ?");
        args.push(SqlValue::Text(q.clone()));
    }
    if let Some(t) = &f.task {
        sql.push_str(" AND task = ?");
        args.push(SqlValue::Text(t.clone()));
    }
    if let Some(p) = f.parent_id {
        sql.push_str(" AND parent_id = ?");
        args.push(SqlValue::Integer(p));
    }
    if let Some(a) = f.after_id {
        sql.push_str(" AND id > ?");
        args.push(SqlValue::Integer(a));
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    args.push(SqlValue::Integer(
        i64::try_from(f.limit.unwrap_or(100)).unwrap_or(i64::MAX),
    ));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(job_from_row(row)?);
    }
    Ok(out)
}

/// Jobs per queue and status.
pub(crate) fn counts(conn: &Connection) -> QResult<Vec<QueueCount>> {
    let mut stmt = conn.prepare_cached(
        "SELECT queue, status, count(*) FROM durable_jobs GROUP BY queue, status ORDER BY queue, status",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let status: String = row.get(1)?;
        let count: i64 = row.get(2)?;
        out.push(QueueCount {
            queue: row.get(0)?,
            status: status.parse()?,
            count: u64::try_from(count).unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim must walk the partial claim index, not scan the table and sort.
    #[test]
    fn claim_walks_the_partial_claim_index() {
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate::migrate(&conn, 0).expect("migrate");
        for (queues, tasks) in [(1, 1), (1, 0), (3, 2)] {
            let sql = format!("EXPLAIN QUERY PLAN {}", claim_sql(queues, tasks));
            let mut stmt = conn.prepare(&sql).expect("prepare");
            let n = stmt.parameter_count();
            let args: Vec<SqlValue> = (0..n).map(|_| SqlValue::Integer(0)).collect();
            let plan: Vec<String> = stmt
                .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("rows");
            let plan = plan.join("\n");
            assert!(
                plan.contains("USING INDEX durable_jobs_claim"),
                "{queues} queues, {tasks} tasks:\n{plan}"
            );
            // With one queue the index already yields claim order, so LIMIT stops early.
            if queues == 1 {
                assert!(
                    !plan.contains("TEMP B-TREE"),
                    "sorts for one queue:\n{plan}"
                );
            }
        }
    }
}
