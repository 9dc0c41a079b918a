//! Inserting jobs: the insert itself, tags, and the job-key modes (what an enqueue does
//! when an unfinished job already holds its key). Runs on the writer's connection inside
//! its transaction, so resolving the key and inserting are one atomic step.

use crate::error::QResult;
use crate::query::{json_text, micros};
use chrono::{DateTime, Utc};
use durable_jobs::{Enqueued, Error, JobId, JobStatus, KeyMode, NewJob};
use rusqlite::{params, Connection, OptionalExtension};

const INSERT_JOB: &str = "INSERT INTO durable_jobs (task, payload, queue, priority, status, \
     max_attempts, run_at, dedupe_key, timeout_ms, created_at, updated_at, parent_id, \
     serial_key, flags, trace_context, tags, metadata) \
     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

pub(crate) const FIND_KEY_HOLDER: &str =
    "SELECT id, status FROM durable_jobs WHERE dedupe_key = ?1 \
     AND (status = 'pending' OR status = 'retrying' OR status = 'running' OR status = 'waiting')";

/// Job-key replace on a holder still waiting to run: it takes the new job's fields (run_at
/// only when `?10` is not NULL, and the trace context of the enqueue that replaced it),
/// starts over at attempt 0, and keeps its id.
const REPLACE_HOLDER: &str = "UPDATE durable_jobs SET task = ?2, payload = ?3, queue = ?4, \
     priority = ?5, max_attempts = ?6, timeout_ms = ?7, serial_key = ?8, flags = ?9, \
     run_at = coalesce(?10, run_at), attempt = 0, status = 'pending', last_error = NULL, \
     updated_at = ?11, trace_context = ?12, tags = ?13, metadata = ?14, blocked = 0 WHERE id = ?1";

/// A running or suspended holder gives its key up to the job being enqueued.
const DROP_KEY: &str = "UPDATE durable_jobs SET dedupe_key = NULL WHERE id = ?1";

const INSERT_TAG: &str = "INSERT OR IGNORE INTO durable_jobs_tags (job_id, tag) VALUES (?1, ?2)";

/// Flags (and tags) as stored on the job row: a JSON array, or NULL when there are none
/// (the claim's flag check skips NULL at the cost of one column read).
fn list_text(items: &[String]) -> QResult<Option<String>> {
    if items.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string(items).map_err(Error::from)?))
}

/// Metadata as stored on the job row: a JSON object, or NULL when empty.
fn metadata_text(metadata: &durable_jobs::Metadata) -> QResult<Option<String>> {
    if metadata.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string(metadata).map_err(Error::from)?))
}

fn insert_tags(conn: &Connection, id: JobId, tags: &[String]) -> QResult<()> {
    for tag in tags {
        conn.prepare_cached(INSERT_TAG)?.execute(params![id, tag])?;
    }
    Ok(())
}

/// Inserts one job, honouring its key mode when an unfinished job holds its dedupe key:
/// `Dedupe` returns the holder; `Replace` / `PreserveRunAt` update a holder that is still
/// pending or retrying in place, and take the key from a running or waiting holder for a
/// new job (as graphile-worker's `job_key_mode`).
pub(crate) fn insert_job(conn: &Connection, job: &NewJob, now: DateTime<Utc>) -> QResult<Enqueued> {
    let now_us = micros(now);
    if let Some(key) = &job.dedupe_key {
        let holder: Option<(JobId, String)> = conn
            .prepare_cached(FIND_KEY_HOLDER)?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((id, status)) = holder {
            let claimable = status.parse::<JobStatus>()?.is_claimable();
            match job.key_mode {
                KeyMode::Dedupe => return Ok(Enqueued { id, created: false }),
                KeyMode::Replace | KeyMode::PreserveRunAt if claimable => {
                    let run_at = match job.key_mode {
                        KeyMode::PreserveRunAt => None,
                        _ => Some(micros(job.resolve_run_at(now))),
                    };
                    conn.prepare_cached(REPLACE_HOLDER)?.execute(params![
                        id,
                        job.task,
                        json_text(&job.payload)?,
                        job.queue,
                        job.priority,
                        job.max_attempts,
                        job.timeout_ms,
                        job.serial_key,
                        list_text(&job.flags)?,
                        run_at,
                        now_us,
                        job.trace_context,
                        list_text(&job.tags)?,
                        metadata_text(&job.metadata)?,
                    ])?;
                    conn.prepare_cached("DELETE FROM durable_jobs_tags WHERE job_id = ?1")?
                        .execute([id])?;
                    insert_tags(conn, id, &job.tags)?;
                    return Ok(Enqueued { id, created: false });
                }
                KeyMode::Replace | KeyMode::PreserveRunAt => {
                    conn.prepare_cached(DROP_KEY)?.execute([id])?;
                }
            }
        }
    }
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
        job.serial_key,
        list_text(&job.flags)?,
        job.trace_context,
        list_text(&job.tags)?,
        metadata_text(&job.metadata)?,
    ])?;
    let id = conn.last_insert_rowid();
    insert_tags(conn, id, &job.tags)?;
    Ok(Enqueued { id, created: true })
}

impl crate::SqliteStorage {
    /// Enqueues a job on the caller's own connection, inside the caller's transaction
    /// (pass `&tx` for a `rusqlite::Transaction`): the job exists only if that
    /// transaction commits. Synchronous, like rusqlite: call it where the transaction
    /// lives (`tokio::task::spawn_blocking` in async code). On a connection with no
    /// transaction open, the enqueue runs in one of its own.
    ///
    /// The connection must be on the same database file as this storage (the storage
    /// created and migrated the tables): open the file at [`Self::path`] with
    /// [`rusqlite::Connection::open`] and give it a busy timeout
    /// (`conn.busy_timeout(..)`), and begin write transactions with
    /// `TransactionBehavior::Immediate`, so it waits for this storage's writer instead
    /// of failing with `SQLITE_BUSY`. The job gets the storage clock's time. Workers of
    /// any process notice the commit through their data-version watch
    /// ([`crate::DEFAULT_WATCH_INTERVAL`]) or their poll. Inside
    /// [`crate::SqliteStepExt::sqlite_step`], pass the step's connection.
    ///
    /// # Errors
    /// [`durable_jobs::Error::Storage`] when a statement fails (kind `Schema` when the
    /// file was never migrated); the caller's transaction is then left for the caller to
    /// roll back.
    pub fn enqueue_in_tx(&self, conn: &Connection, job: NewJob) -> durable_jobs::Result<Enqueued> {
        let mut out = self.enqueue_many_in_tx(conn, vec![job])?;
        out.pop().ok_or_else(|| {
            durable_jobs::StorageError::new(
                durable_jobs::StorageErrorKind::Other,
                "enqueue returned no job",
            )
            .into()
        })
    }

    /// Enqueues many jobs on the caller's connection, in order, with the same dedupe
    /// rules as [`durable_jobs::Storage::enqueue_many`]; see [`Self::enqueue_in_tx`].
    ///
    /// # Errors
    /// As [`Self::enqueue_in_tx`].
    pub fn enqueue_many_in_tx(
        &self,
        conn: &Connection,
        jobs: Vec<NewJob>,
    ) -> durable_jobs::Result<Vec<Enqueued>> {
        let now = self.now_dt();
        let insert = |conn: &Connection| -> QResult<Vec<Enqueued>> {
            jobs.iter().map(|j| insert_job(conn, j, now)).collect()
        };
        if conn.is_autocommit() {
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Immediate,
            )
            .map_err(crate::error::storage)?;
            let out = insert(&tx)?;
            tx.commit().map_err(crate::error::storage)?;
            Ok(out)
        } else {
            Ok(insert(conn)?)
        }
    }
}
