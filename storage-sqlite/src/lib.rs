//! SQLite storage for [durable-jobs](durable_jobs): jobs in one file, shared safely by
//! several processes on one machine, with no server to run.
//!
//! ```no_run
//! # async fn demo() -> durable_jobs::Result<()> {
//! use durable_jobs_sqlite::{SqliteOptions, SqliteStorage};
//! use std::time::Duration;
//! let storage = SqliteStorage::open_with(
//!     "jobs.db",
//!     SqliteOptions::new().busy_timeout(Duration::from_secs(10)),
//! ).await?;
//! # Ok(()) }
//! ```
//!
//! How it works:
//! - **WAL mode**, so readers never wait for the writer. Connections use
//!   `synchronous=NORMAL` by default: a commit survives a crash of the process, and the
//!   file is never corrupted, but the last commits before a power loss or OS crash may be
//!   rolled back. Choose [`Synchronous::Full`] to fsync every commit.
//! - **One writer thread** per storage owns the write connection; async calls send it
//!   commands and await the reply, so SQLite's blocking calls never run on the async
//!   runtime's threads. It commits queued commands together in one `BEGIN IMMEDIATE`
//!   transaction (each in its own savepoint), and replies only after `COMMIT`.
//! - **Checkpoints** (copying the WAL back into the file) run on a thread of their own
//!   with its own connection, nudged by the writer once the log passes 1,000 pages
//!   (SQLite's own threshold), instead of inside the writer's commits; the writer still
//!   checkpoints itself should the log pass 10,000 pages.
//! - **Completions** of a batch run in the writer's transaction, one cached `UPDATE` per
//!   job fenced by its own lease token, and one lookup of the batch's parents.
//! - **Reads** (`get_job`, `list_jobs`, `counts`, `finished_counts`, `list_attempts`,
//!   `list_checkpoints`, `schedules`, `list_workers`) run on a small pool of read
//!   connections on tokio's blocking threads and go on during writes.
//! - **Claims** are a `SELECT ... ORDER BY priority DESC, run_at, id LIMIT n` walking a
//!   partial index of claimable jobs, then one `UPDATE ... WHERE id IN (..)` of exactly
//!   those jobs, both inside one `BEGIN IMMEDIATE` transaction: atomic across processes.
//! - **Fencing**: every write for a running attempt checks the job id, status and lease
//!   token in its `WHERE`; a stale lease changes nothing and returns
//!   [`durable_jobs::Error::LeaseLost`].
//! - **Busy database**: SQLite waits up to the busy timeout, then the backend retries
//!   with backoff for up to [`DEFAULT_BUSY_RETRY_FOR`]; handlers never see `SQLITE_BUSY`.
//!   Past that limit a call fails with [`durable_jobs::Error::Storage`] of kind
//!   [`durable_jobs::StorageErrorKind::Busy`].
//! - **Errors** carry a [`durable_jobs::StorageErrorKind`] and keep the `rusqlite` error as
//!   their source: busy or locked is `Busy`; a corrupt file, a file that is not a
//!   database, or a stored value that does not decode (bad JSON, an unknown status) is
//!   `Corrupt`; a broken constraint is `Constraint`; a file that cannot be opened or an
//!   I/O error is `Unavailable`; a full disk or no memory is `Exhausted`; tables that are
//!   missing (the file was never migrated) are `Schema`.
//! - **Time** comes from an injectable [`durable_jobs::Clock`] (the system clock by
//!   default); times are stored as integer microseconds since the Unix epoch, and
//!   [`durable_jobs::Storage::now`] reports the clock truncated to whole microseconds, so
//!   a time read from it and written back (a reschedule to now) is due at that instant.
//!   Processes sharing one file must share one clock (the machine's).
//! - **Migrations** are embedded and run on open inside `BEGIN IMMEDIATE`, recorded in
//!   `durable_jobs_migrations`; a file written by a newer library is refused with
//!   [`durable_jobs::Error::SchemaTooNew`]. Tables are prefixed `durable_jobs`, so the
//!   file may be the application's own database.
//! - **Workflows**: waiting jobs sit in the claim index and are claimed when due;
//!   spawning children with their checkpoint, taking signals with theirs, and a child's
//!   final write with its parent's wake-up each commit in one transaction; cancelling a
//!   job cancels its unfinished subtree (a recursive CTE). Signals live in
//!   `durable_jobs_signals`, consumed in send order.
//! - **Operations**: job-key modes (dedupe, replace, preserve run_at) resolve inside the
//!   enqueue's transaction; serial keys, forbidden flags and paused queues are enforced by
//!   the claim itself (one statement: a keyed job is claimed only when no job of its key
//!   runs and it is its key's first claimable job, through two small partial indexes that
//!   unkeyed jobs never enter). Flags are a JSON array column (NULL when none), tags a
//!   side table indexed by tag, schedules a table whose cursor is advanced by
//!   compare-and-set in the same transaction as the tick's jobs. Listings and counts are
//!   built with `sea-query`, every filter value bound.
//! - **Observability**: each job stores the W3C trace context of the span that enqueued
//!   it (`trace_context`, NULL when none), returned by every read and claim. Workers
//!   register in `durable_jobs_workers` (queues as a JSON array); `last_seen` comes from
//!   the storage's clock on register and touch. The stale-lock sweep reports each job it
//!   released (`UPDATE ... RETURNING`).
//! - **Timeline**: each job row carries its attempt history as a JSON array
//!   (`attempts`), appended with `json_insert(..., '$[#]', ...)` by the same `UPDATE`
//!   that ends the attempt (complete, fail, release, suspend, the stale-lock sweep, a
//!   cancel of a running job or of its running descendants), so it costs no extra
//!   statement and goes with the job on delete and purge; claims and job reads never
//!   select it. `list_attempts` adds the running attempt from the row. Tags are kept on
//!   the job row too (a JSON array, NULL when none; the tag side table stays the index
//!   for listings by tag), so reads and claims return a job's parent, tags, flags and
//!   serial key with plain column reads. Checkpoints record when they were written
//!   (NULL for those written before schema version 6). Finished-job counts since a
//!   time read a covering partial index on the finish time, which purges walk too.
//! - **Corrupt rows**: a row a claim takes but cannot decode (a payload or flags that
//!   are not JSON, a value of the wrong type, written by another tool) is failed inside
//!   the claim's transaction (its `last_error` says the stored row could not be read and
//!   why, its attempt is recorded as failed) and left out of the claimed jobs, so it
//!   never blocks a worker's claims; reading it with `get_job` or `list_jobs` still
//!   reports the `Corrupt` error, for an operator to delete it.
//! - **Wake-ups** reach workers of this process at once (enqueue, retry, release,
//!   a stale-lock sweep, a manual clock's move). Commits from other processes are noticed within
//!   [`DEFAULT_WATCH_INTERVAL`] by a thread reading `PRAGMA data_version` (no table
//!   access, no lock), so workers there claim new jobs without waiting for their poll.

/// The SQL expression for a job's history (the `attempts` column, see
/// `migrations/0006_timeline.sql`) with its ending attempt appended, for an
/// `UPDATE durable_jobs` that ends a running attempt: `$outcome` is the
/// [`durable_jobs::AttemptOutcome`]'s stored name, `$now` and `$error` SQL expressions (a
/// parameter, a literal or `NULL`). `SET` expressions read the row as it was before the
/// update, so the attempt number, worker and start are the ending attempt's even when the
/// same statement clears the lease or gives the attempt back. A history that is not valid
/// JSON (written by another tool) starts over rather than failing the write that ends the
/// attempt. A job's first ending attempt (no history yet, the common case) wraps the
/// attempt's object in brackets, the same text `json_insert` would make of `[]` but
/// without parsing and re-rendering a document for each job.
macro_rules! attempts_appended {
    ($outcome:literal, $now:literal, $error:literal) => {
        concat!(
            "CASE WHEN attempts IS NULL THEN '[' || ",
            attempt_object!($outcome, $now, $error),
            " || ']' ELSE json_insert(CASE WHEN json_valid(attempts) THEN attempts \
             ELSE '[]' END, '$[#]', ",
            attempt_object!($outcome, $now, $error),
            ") END"
        )
    };
}

/// The JSON object of the ending attempt, for [`attempts_appended!`].
macro_rules! attempt_object {
    ($outcome:literal, $now:literal, $error:literal) => {
        concat!(
            "json_object('attempt', attempt, 'worker', lease_holder, \
             'started_at', coalesce(started_at, ",
            $now,
            "), 'finished_at', ",
            $now,
            ", 'outcome', '",
            $outcome,
            "', 'error', ",
            $error,
            ")"
        )
    };
}

/// The `SET` term `attempts = ` [`attempts_appended!`]: appends the ending attempt to the
/// job's history in the statement that ends it, so recording it costs no extra statement.
macro_rules! append_attempt {
    ($outcome:literal, $now:literal, $error:literal) => {
        concat!("attempts = ", attempts_appended!($outcome, $now, $error))
    };
}

mod background;
mod checkpoint;
mod enqueue;
mod error;
mod filter;
mod migrate;
mod operations;
mod options;
mod query;
mod rate;
mod reader;
mod retention;
mod step;
mod storage;
mod watch;
mod workers;
mod workflow;
mod writer;

pub use migrate::SCHEMA_VERSION;
pub use options::{
    SqliteOptions, Synchronous, DEFAULT_BUSY_RETRY_FOR, DEFAULT_BUSY_TIMEOUT,
    DEFAULT_MAX_WRITE_BATCH, DEFAULT_READ_CONNECTIONS, DEFAULT_STATEMENT_CACHE,
    DEFAULT_WATCH_INTERVAL,
};
/// Re-exported so users name the same rusqlite version as this crate.
pub use rusqlite;
pub use step::SqliteStepExt;
pub use storage::SqliteStorage;
