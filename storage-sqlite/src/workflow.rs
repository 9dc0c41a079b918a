//! The SQL behind the workflow calls: suspend and wake, children, signals, subtree
//! cancellation, deletion. Like [`crate::query`], each function runs synchronously on the
//! writer's connection inside its transaction (or on a reader), so every call here is one
//! atomic unit with whatever the caller does in the same closure.

use crate::error::QResult;
use crate::query::{self, FENCE, UNFINISHED};
use durable_jobs::job::far_future;
use durable_jobs::{Error, JobId, JobStatus, Lease, NewJob};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

/// Waking: a waiting or pending job not yet due becomes due now; a running job gets a
/// wake request (honoured by its next suspend). Other statuses are left alone.
/// `updated_at` moves only when run_at does: the lease sweep's healing compares children's
/// completion times against it.
const WAKE: &str = "UPDATE durable_jobs SET \
     run_at = CASE WHEN status = 'running' THEN run_at ELSE ?2 END, \
     updated_at = CASE WHEN status = 'running' THEN updated_at ELSE ?2 END, \
     wake_requested = CASE WHEN status = 'running' THEN 1 ELSE wake_requested END \
     WHERE id = ?1 AND (status = 'running' \
       OR (status IN ('waiting', 'pending') AND run_at > ?2))";

/// Suspends a leased job: waiting, attempt given back, due at the wake time or at once
/// when a wake request arrived while it ran.
/// The suspended attempt goes into the job's history in the same statement.
pub(crate) const SUSPEND: &str = concat!(
    "UPDATE durable_jobs SET status = 'waiting', attempt = attempt - 1, \
     run_at = CASE WHEN wake_requested <> 0 THEN ?3 ELSE ?4 END, wake_requested = 0, ",
    append_attempt!("suspended", "?3", "NULL"),
    ", updated_at = ?3, lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL \
     WHERE id = ?1 AND status = 'running' AND lease_token = ?2"
);

/// Waiting parents not yet due, one of whose children finished after the parent last
/// changed. On SQLite the child's own transaction wakes its parent, so this only meets
/// states written by hand or by another tool; it is a safety net, and must stay cheap:
/// each sweep looks at one window of waiting jobs (`id > ?2`, at most `?3` of them, via
/// the partial index of waiting jobs) and probes their children through the parent
/// index, so its cost does not grow with the number of sleeping workflows.
const HEAL: &str = "UPDATE durable_jobs AS p SET run_at = ?1, updated_at = ?1 \
     WHERE p.id IN (SELECT id FROM durable_jobs WHERE status = 'waiting' AND id > ?2 \
       ORDER BY id LIMIT ?3) \
     AND p.run_at > ?1 AND EXISTS (\
       SELECT 1 FROM durable_jobs c WHERE c.parent_id = p.id \
       AND (c.status = 'completed' OR c.status = 'failed' OR c.status = 'cancelled') \
       AND c.completed_at > p.updated_at)";

/// The last id of the window [`HEAL`] looked at (NULL when it was empty).
const HEAL_WINDOW_END: &str = "SELECT max(id) FROM (SELECT id FROM durable_jobs \
     WHERE status = 'waiting' AND id > ?1 ORDER BY id LIMIT ?2)";

/// How many waiting jobs one sweep examines for healing.
pub(crate) const HEAL_WINDOW: i64 = 1000;

/// The job and all its descendants. UNION (not UNION ALL) stops on a cycle, which a
/// hand-edited file could contain. A running job's attempt goes into its history as
/// cancelled in the same statement.
pub(crate) const CANCEL_SUBTREE: &str = concat!(
    "WITH RECURSIVE subtree(id) AS (\
       SELECT ?1 UNION SELECT j.id FROM durable_jobs j JOIN subtree s ON j.parent_id = s.id) \
     UPDATE durable_jobs SET status = 'cancelled', completed_at = ?2, updated_at = ?2, \
       attempts = CASE WHEN status = 'running' THEN ",
    attempts_appended!("cancelled", "?2", "NULL"),
    " ELSE attempts END, \
       lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, wake_requested = 0, \
       blocked = 0 WHERE id IN (SELECT id FROM subtree) AND status IN "
);

const INSERT_SIGNAL: &str = "INSERT INTO durable_jobs_signals (job_id, name, payload, created_at) \
     VALUES (?1, ?2, ?3, ?4)";

const OLDEST_SIGNALS: &str = "SELECT id, payload FROM durable_jobs_signals \
     WHERE job_id = ?1 AND name = ?2 ORDER BY id LIMIT ?3";

const SAVE_CHECKPOINT: &str = "INSERT OR REPLACE INTO durable_jobs_checkpoints \
     (job_id, key, name, ok, value, created_at) VALUES (?1, ?2, ?3, 1, ?4, ?5)";

fn lease_lost<T>(lease: &Lease) -> QResult<T> {
    Err(Error::LeaseLost {
        job_id: lease.job_id,
    }
    .into())
}

/// Fails with `LeaseLost` unless `lease` is the job's current one.
fn check_fence(conn: &Connection, lease: &Lease) -> QResult<()> {
    let held: Option<i64> = conn
        .prepare_cached(&format!("SELECT 1 FROM durable_jobs WHERE {FENCE}"))?
        .query_row(params![lease.job_id, lease.token], |r| r.get(0))
        .optional()?;
    match held {
        Some(_) => Ok(()),
        None => lease_lost(lease),
    }
}

fn status_of(conn: &Connection, job_id: JobId) -> QResult<Option<JobStatus>> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM durable_jobs WHERE id = ?1")?
        .query_row([job_id], |r| r.get(0))
        .optional()?;
    Ok(status.map(|s| s.parse::<JobStatus>()).transpose()?)
}

/// Stores a successful checkpoint written at `now`.
fn put_checkpoint(
    conn: &Connection,
    job_id: JobId,
    key: &str,
    name: &str,
    v: &Value,
    now: i64,
) -> QResult<()> {
    let text = serde_json::to_string(v).map_err(Error::from)?;
    conn.prepare_cached(SAVE_CHECKPOINT)?
        .execute(params![job_id, key, name, text, now])?;
    Ok(())
}

/// A time in whole microseconds, rounded up.
pub(crate) fn micros_ceil(t: chrono::DateTime<chrono::Utc>) -> i64 {
    let us = query::micros(t);
    if t.timestamp_subsec_nanos().is_multiple_of(1000) {
        us
    } else {
        us.saturating_add(1)
    }
}

/// Wakes one job (see [`WAKE`]). True when something changed.
pub(crate) fn wake_job(conn: &Connection, job_id: JobId, now: i64) -> QResult<bool> {
    Ok(conn.prepare_cached(WAKE)?.execute(params![job_id, now])? > 0)
}

/// Makes waiting parents with a child finished since they last changed due now, looking
/// at the window of waiting jobs after id `after`; returns how many it woke and where the
/// next window starts (0, to wrap around, after the last one).
pub(crate) fn heal_waiting_parents(conn: &Connection, now: i64, after: i64) -> QResult<(u64, i64)> {
    let end: Option<i64> = conn
        .prepare_cached(HEAL_WINDOW_END)?
        .query_row(params![after, HEAL_WINDOW], |r| r.get(0))?;
    let healed = conn
        .prepare_cached(HEAL)?
        .execute(params![now, after, HEAL_WINDOW])? as u64;
    Ok((healed, end.unwrap_or(0)))
}

/// Suspends a leased job until `wake_at` (`None`: until woken). Fenced.
pub(crate) fn suspend(
    conn: &Connection,
    lease: &Lease,
    wake_at: Option<i64>,
    now: i64,
) -> QResult<()> {
    let at = wake_at.unwrap_or_else(|| query::micros(far_future()));
    let n = conn
        .prepare_cached(SUSPEND)?
        .execute(params![lease.job_id, lease.token, now, at])?;
    if n == 0 {
        return lease_lost(lease);
    }
    Ok(())
}

/// Inserts children of the leased job and the checkpoint listing their ids. Fenced.
pub(crate) fn spawn_children(
    conn: &Connection,
    lease: &Lease,
    key: &str,
    name: &str,
    jobs: Vec<NewJob>,
    now: chrono::DateTime<chrono::Utc>,
) -> QResult<Vec<JobId>> {
    check_fence(conn, lease)?;
    let mut ids = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        job.parent_id = Some(lease.job_id);
        ids.push(crate::enqueue::insert_job(conn, &job, now)?.id);
    }
    put_checkpoint(
        conn,
        lease.job_id,
        key,
        name,
        &serde_json::json!(ids),
        query::micros(now),
    )?;
    Ok(ids)
}

/// Stores a signal and wakes its job. True when the job was woken.
pub(crate) fn send_signal(
    conn: &Connection,
    job_id: JobId,
    name: &str,
    payload: &Value,
    now: i64,
) -> QResult<bool> {
    match status_of(conn, job_id)? {
        None => return Err(Error::JobNotFound(job_id).into()),
        Some(status) if status.is_finished() => {
            return Err(Error::JobFinished {
                job_id,
                status: status.to_string(),
            }
            .into())
        }
        Some(_) => {}
    }
    let text = serde_json::to_string(payload).map_err(Error::from)?;
    conn.prepare_cached(INSERT_SIGNAL)?
        .execute(params![job_id, name, text, now])?;
    wake_job(conn, job_id, now)
}

/// Consumes up to `limit` of the leased job's oldest signals named `name`, with their
/// checkpoint. Fenced.
pub(crate) fn take_signals(
    conn: &Connection,
    lease: &Lease,
    name: &str,
    limit: usize,
    key: &str,
    now: i64,
) -> QResult<Vec<Value>> {
    check_fence(conn, lease)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut taken = Vec::new();
    let mut last_id = None;
    {
        let mut stmt = conn.prepare_cached(OLDEST_SIGNALS)?;
        let mut rows = stmt.query(params![lease.job_id, name, limit])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let text: String = row.get(1)?;
            taken.push(
                serde_json::from_str(&text)
                    .map_err(|e| crate::error::bad_json("durable_jobs_signals.payload", e))?,
            );
            last_id = Some(id);
        }
    }
    if let Some(last) = last_id {
        // The taken rows are exactly this name's rows up to the last id read (ids only
        // grow and the read was in id order, inside this write transaction).
        conn.prepare_cached(
            "DELETE FROM durable_jobs_signals WHERE job_id = ?1 AND name = ?2 AND id <= ?3",
        )?
        .execute(params![lease.job_id, name, last])?;
        put_checkpoint(
            conn,
            lease.job_id,
            key,
            &format!("signal:{name}"),
            &Value::Array(taken.clone()),
            now,
        )?;
    }
    Ok(taken)
}

/// The oldest unconsumed signal named `name`.
pub(crate) fn peek_signal(conn: &Connection, job_id: JobId, name: &str) -> QResult<Option<Value>> {
    let text: Option<String> = conn
        .prepare_cached(OLDEST_SIGNALS)?
        .query_row(params![job_id, name, 1], |r| r.get(1))
        .optional()?;
    Ok(text
        .map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| crate::error::bad_json("durable_jobs_signals.payload", e))
        })
        .transpose()?)
}

/// Cancels an unfinished job and its unfinished descendants, waking the job's parent;
/// false when the job had already finished.
pub(crate) fn cancel(conn: &Connection, job_id: JobId, now: i64) -> QResult<bool> {
    let Some(status) = status_of(conn, job_id)? else {
        return Err(Error::JobNotFound(job_id).into());
    };
    if status.is_finished() {
        return Ok(false);
    }
    conn.prepare_cached(&format!("{CANCEL_SUBTREE}{UNFINISHED}"))?
        .execute(params![job_id, now])?;
    let parent: Option<JobId> = conn
        .prepare_cached("SELECT parent_id FROM durable_jobs WHERE id = ?1")?
        .query_row([job_id], |r| r.get(0))?;
    if let Some(p) = parent {
        wake_job(conn, p, now)?;
    }
    Ok(true)
}

/// Deletes a job that is not running, with its checkpoints and signals (foreign keys
/// cascade). False when there is no such job.
pub(crate) fn delete_job(conn: &Connection, job_id: JobId) -> QResult<bool> {
    match status_of(conn, job_id)? {
        None => Ok(false),
        Some(JobStatus::Running) => Err(Error::InvalidState {
            job_id,
            status: JobStatus::Running.to_string(),
            operation: "delete",
        }
        .into()),
        Some(_) => {
            conn.prepare_cached("DELETE FROM durable_jobs WHERE id = ?1")?
                .execute([job_id])?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subtree cancel and the heal must run through indexes, not scan every job.
    #[test]
    fn workflow_statements_use_their_indexes() {
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate::migrate(&conn, 0).expect("migrate");
        let plan = |sql: &str| -> String {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("prepare");
            let n = stmt.parameter_count();
            let args: Vec<i64> = vec![0; n];
            stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows")
                .join("\n")
        };
        let cancel = plan(&format!("{CANCEL_SUBTREE}{UNFINISHED}"));
        assert!(cancel.contains("durable_jobs_parent"), "{cancel}");
        let heal = plan(HEAL);
        assert!(heal.contains("durable_jobs_waiting"), "{heal}");
        assert!(heal.contains("durable_jobs_parent"), "{heal}");
        let window = plan(HEAL_WINDOW_END);
        assert!(window.contains("durable_jobs_waiting"), "{window}");
    }
}
