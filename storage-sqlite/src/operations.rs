//! The SQL behind schedules, paused queues and the management calls (retry, reschedule,
//! finish by hand, purge). Like [`crate::query`], each function runs on the writer's
//! connection inside its transaction (or on a reader), so each call is one atomic unit.

use crate::error::{bad_json, QResult};
use crate::query::{self, micros};
use crate::workflow::wake_job;
use chrono::{DateTime, SecondsFormat, Utc};
use durable_jobs::{Error, JobId, JobStatus, ManualOutcome, NewJob, ScheduleRecord};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

const UPSERT_SCHEDULE: &str = "INSERT INTO durable_jobs_schedules \
     (name, definition, paused, cursor, last_job_id, updated_at) VALUES (?1, ?2, 0, ?3, NULL, ?4) \
     ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
     updated_at = excluded.updated_at";

/// The compare-and-set a scheduler wins by: the cursor moves only from where it was read.
const ADVANCE_SCHEDULE: &str = "UPDATE durable_jobs_schedules SET cursor = ?3, updated_at = ?4 \
     WHERE name = ?1 AND cursor = ?2";

/// Manual retry: back to pending now, attempts from zero, lease and result cleared. The
/// dedupe key stays only if no unfinished job took it meanwhile (`?3`).
const RETRY_JOB: &str = "UPDATE durable_jobs SET status = 'pending', attempt = 0, run_at = ?2, \
     updated_at = ?2, completed_at = NULL, result = NULL, lease_holder = NULL, \
     lease_token = NULL, lease_expires_at = NULL, wake_requested = 0, blocked = 0, \
     dedupe_key = CASE WHEN ?3 THEN dedupe_key ELSE NULL END \
     WHERE id = ?1 AND status IN ('failed', 'cancelled')";

const RESCHEDULE: &str = "UPDATE durable_jobs SET run_at = ?2, updated_at = ?3, blocked = 0 \
     WHERE id = ?1 AND status IN ('pending', 'retrying', 'waiting')";

const FINISH_COMPLETE: &str = "UPDATE durable_jobs SET status = 'completed', result = ?2, \
     completed_at = ?3, updated_at = ?3, blocked = 0 \
     WHERE id = ?1 AND status IN ('pending', 'retrying', 'waiting') RETURNING parent_id";

const FINISH_FAIL: &str = "UPDATE durable_jobs SET status = 'failed', last_error = ?2, \
     completed_at = ?3, updated_at = ?3, blocked = 0 \
     WHERE id = ?1 AND status IN ('pending', 'retrying', 'waiting') RETURNING parent_id";

/// Checkpoints, signals and tags go with their job (foreign keys cascade), the attempt
/// history with its row. Walks the index of finished jobs by finish time.
pub(crate) const PURGE: &str = "DELETE FROM durable_jobs \
     WHERE (status = 'completed' OR status = 'failed' OR status = 'cancelled') AND completed_at < ?1";

/// A schedule cursor as stored: RFC 3339 in UTC with nanoseconds, fixed width, so equal
/// times are equal strings and the compare-and-set is exact.
fn cursor_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_cursor(text: &str) -> QResult<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(text)
        .map_err(|e| {
            crate::error::corrupt(format!(
                "sqlite: schedule cursor `{text}` is not an RFC 3339 time: {e}"
            ))
        })?
        .with_timezone(&Utc))
}

/// Inserts a schedule with its cursor at `now`, or replaces an existing one's definition
/// (keeping its cursor and paused state).
pub(crate) fn upsert_schedule(
    conn: &Connection,
    name: &str,
    definition: &Value,
    now: DateTime<Utc>,
) -> QResult<()> {
    let def = serde_json::to_string(definition).map_err(Error::from)?;
    conn.prepare_cached(UPSERT_SCHEDULE)?.execute(params![
        name,
        def,
        cursor_text(now),
        micros(now)
    ])?;
    Ok(())
}

/// Every schedule, by name.
pub(crate) fn schedules(conn: &Connection) -> QResult<Vec<ScheduleRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, definition, paused, cursor, last_job_id FROM durable_jobs_schedules \
         ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let def: String = row.get(1)?;
        let cursor: String = row.get(3)?;
        out.push(ScheduleRecord {
            name: row.get(0)?,
            definition: serde_json::from_str(&def)
                .map_err(|e| bad_json("durable_jobs_schedules.definition", e))?,
            paused: row.get(2)?,
            cursor: parse_cursor(&cursor)?,
            last_job_id: row.get(4)?,
        });
    }
    Ok(out)
}

/// Pauses or resumes a schedule; false when none has this name.
pub(crate) fn set_schedule_paused(
    conn: &Connection,
    name: &str,
    paused: bool,
    now: i64,
) -> QResult<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE durable_jobs_schedules SET paused = ?2, updated_at = ?3 WHERE name = ?1",
        )?
        .execute(params![name, paused, now])?
        > 0)
}

/// Removes a schedule; false when none has this name.
pub(crate) fn delete_schedule(conn: &Connection, name: &str) -> QResult<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM durable_jobs_schedules WHERE name = ?1")?
        .execute([name])?
        > 0)
}

/// Moves the cursor from `from` to `to` if it is still at `from`, inserting `jobs` and
/// recording the last one's id; `None` when another scheduler moved it first or the
/// schedule is gone. The caller runs this in one transaction.
pub(crate) fn advance_schedule(
    conn: &Connection,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    jobs: &[NewJob],
    now: DateTime<Utc>,
) -> QResult<Option<Vec<JobId>>> {
    let moved = conn.prepare_cached(ADVANCE_SCHEDULE)?.execute(params![
        name,
        cursor_text(from),
        cursor_text(to),
        micros(now)
    ])?;
    if moved == 0 {
        return Ok(None);
    }
    let ids = jobs
        .iter()
        .map(|j| crate::enqueue::insert_job(conn, j, now).map(|e| e.id))
        .collect::<QResult<Vec<_>>>()?;
    if let Some(last) = ids.last() {
        conn.prepare_cached("UPDATE durable_jobs_schedules SET last_job_id = ?2 WHERE name = ?1")?
            .execute(params![name, last])?;
    }
    Ok(Some(ids))
}

/// Requeues failed or cancelled jobs; see [`durable_jobs::Storage::retry_jobs`].
pub(crate) fn retry_jobs(
    conn: &Connection,
    ids: &[JobId],
    keep_checkpoints: bool,
    now: i64,
) -> QResult<u64> {
    let mut n = 0;
    for &id in ids {
        let row: Option<(String, Option<String>)> = conn
            .prepare_cached("SELECT status, dedupe_key FROM durable_jobs WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((status, key)) = row else { continue };
        if !matches!(
            status.parse::<JobStatus>()?,
            JobStatus::Failed | JobStatus::Cancelled
        ) {
            continue;
        }
        let key_free = match &key {
            Some(k) => conn
                .prepare_cached(
                    "SELECT 1 FROM durable_jobs WHERE dedupe_key = ?1 \
                     AND (status = 'pending' OR status = 'retrying' OR status = 'running' OR status = 'waiting')",
                )?
                .query_row([k], |r| r.get::<_, i64>(0))
                .optional()?
                .is_none(),
            None => false,
        };
        if !keep_checkpoints {
            query::delete_checkpoints(conn, id)?;
        }
        n += conn
            .prepare_cached(RETRY_JOB)?
            .execute(params![id, now, key_free])? as u64;
    }
    Ok(n)
}

/// Moves a job that has not started; false for other jobs.
///
/// # Errors
/// [`Error::JobNotFound`] when there is no such job.
pub(crate) fn reschedule_job(conn: &Connection, id: JobId, run_at: i64, now: i64) -> QResult<bool> {
    let moved = conn
        .prepare_cached(RESCHEDULE)?
        .execute(params![id, run_at, now])?;
    if moved > 0 {
        return Ok(true);
    }
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM durable_jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    match exists {
        Some(_) => Ok(false),
        None => Err(Error::JobNotFound(id).into()),
    }
}

/// Completes or fails by hand jobs that are unfinished and not running, waking their
/// parents in the same transaction. Returns how many changed and whether a parent woke.
pub(crate) fn finish_jobs(
    conn: &Connection,
    ids: &[JobId],
    outcome: &ManualOutcome,
    now: i64,
) -> QResult<(u64, bool)> {
    let (sql, value) = match outcome {
        ManualOutcome::Complete(v) => (
            FINISH_COMPLETE,
            serde_json::to_string(v).map_err(Error::from)?,
        ),
        ManualOutcome::Fail(e) => (FINISH_FAIL, e.clone()),
    };
    let mut n = 0;
    let mut woke = false;
    for &id in ids {
        let parent: Option<Option<JobId>> = conn
            .prepare_cached(sql)?
            .query_row(params![id, value, now], |r| r.get(0))
            .optional()?;
        if let Some(parent) = parent {
            n += 1;
            if let Some(p) = parent {
                woke |= wake_job(conn, p, now)?;
            }
        }
    }
    Ok((n, woke))
}

/// Deletes jobs that finished before `older_than`, with their checkpoints, signals and
/// tags. Returns how many jobs.
pub(crate) fn purge_finished(conn: &Connection, older_than: i64) -> QResult<u64> {
    Ok(conn.prepare_cached(PURGE)?.execute([older_than])? as u64)
}

/// Pauses or resumes a queue.
pub(crate) fn set_queue_paused(
    conn: &Connection,
    queue: &str,
    paused: bool,
    now: i64,
) -> QResult<()> {
    if paused {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO durable_jobs_paused_queues (queue, paused_at) VALUES (?1, ?2)",
        )?
        .execute(params![queue, now])?;
    } else {
        conn.prepare_cached("DELETE FROM durable_jobs_paused_queues WHERE queue = ?1")?
            .execute([queue])?;
    }
    Ok(())
}

/// The paused queues, sorted.
pub(crate) fn paused_queues(conn: &Connection) -> QResult<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT queue FROM durable_jobs_paused_queues ORDER BY queue")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets or removes a serial key's running limit.
pub(crate) fn set_key_limit(conn: &Connection, key: &str, max_running: Option<u32>) -> QResult<()> {
    match max_running {
        Some(n) => conn
            .prepare_cached(
                "INSERT INTO durable_jobs_key_limits (serial_key, max_running) VALUES (?1, ?2) \
                 ON CONFLICT (serial_key) DO UPDATE SET max_running = excluded.max_running",
            )?
            .execute(params![key, n])?,
        None => conn
            .prepare_cached("DELETE FROM durable_jobs_key_limits WHERE serial_key = ?1")?
            .execute([key])?,
    };
    Ok(())
}

/// The keys with a running limit, by key.
pub(crate) fn key_limits(conn: &Connection) -> QResult<Vec<(String, u32)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT serial_key, max_running FROM durable_jobs_key_limits ORDER BY serial_key",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
