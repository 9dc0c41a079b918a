//! Transactional steps: a workflow step whose closure writes through the writer's
//! transaction, which also holds the step's checkpoint, so the business write commits
//! exactly when the step is recorded as done.
//!
//! ```no_run
//! # async fn charge(ctx: durable_jobs::JobContext, storage: durable_jobs_sqlite::SqliteStorage)
//! #     -> Result<(), durable_jobs::TaskError> {
//! use durable_jobs_sqlite::SqliteStepExt;
//! let order = 42_i64;
//! let payment_id: i64 = ctx
//!     .sqlite_step(&storage, "charge", move |conn| {
//!         conn.execute("INSERT INTO payments (order_id, cents) VALUES (?1, 1299)", [order])?;
//!         Ok(conn.last_insert_rowid())
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use crate::error::QResult;
use crate::query::{save_checkpoint, FENCE};
use crate::storage::SqliteStorage;
use durable_jobs::{JobContext, Lease, TaskError, TransactionalStep};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;

/// Transactional workflow steps on SQLite, for [`JobContext`].
pub trait SqliteStepExt {
    /// Runs `f` once as a checkpointed step named `name`, inside the storage's write
    /// transaction (`BEGIN IMMEDIATE` on its writer connection), which also writes the
    /// step's checkpoint: `f`'s writes commit together with the checkpoint or not at all,
    /// so they happen exactly once however often the job is retried or its worker dies.
    ///
    /// `f` gets the writer connection, already inside the transaction (and a savepoint
    /// of the step's own): use it for reads and writes, never `BEGIN`, `COMMIT` or
    /// `ROLLBACK`. It runs synchronously on the writer thread, so every other write of
    /// this storage waits for it: keep it short, and do no network calls in it.
    /// [`SqliteStorage::enqueue_in_tx`] on `conn` enqueues jobs atomically with the step.
    ///
    /// The lease is checked before `f` runs and again when the checkpoint is written, and
    /// the write lock keeps other connections out in between; a lost lease (the job was
    /// reclaimed or cancelled) rolls the step back and returns
    /// [`durable_jobs::TaskErrorKind::LeaseLost`]. On a replay (the step has its
    /// checkpoint) `f` does not run and the stored value is returned. When `f` fails its
    /// writes are rolled back; a terminal (no-retry) error is then stored like
    /// [`JobContext::step`] stores one, and a retryable error retries the job. `storage`
    /// must be the storage the job was claimed from (the same file).
    ///
    /// # Errors
    /// `f`'s error; a lost lease; a storage error (retried); a value that does not
    /// serialize (terminal); non-determinism and stored values that do not fit `T`, as
    /// for [`JobContext::step`].
    fn sqlite_step<T, F>(
        &self,
        storage: &SqliteStorage,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, TaskError> + Send + 'static;
}

impl SqliteStepExt for JobContext {
    fn sqlite_step<T, F>(
        &self,
        storage: &SqliteStorage,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, TaskError> + Send + 'static,
    {
        let storage = storage.clone();
        self.transactional_step(name, move |step| async move {
            let now = storage.now_us();
            let out = storage
                .write(move |conn| run_step(conn, &step, now, f))
                .await
                .map_err(TaskError::from_engine)?;
            // The step may have enqueued jobs: let this process's workers look.
            storage.wake();
            out
        })
    }
}

/// The step's savepoint, so a failed step undoes its own writes while the writer's
/// transaction (which may hold other commands' writes) goes on.
const SAVEPOINT: &str = "SAVEPOINT durable_jobs_step";
const ROLLBACK: &str = "ROLLBACK TO durable_jobs_step";
const RELEASE: &str = "RELEASE durable_jobs_step";

/// Runs the step on the writer's connection: fence, `f`, checkpoint. The outer error
/// (a lost lease, SQLite's own) fails the writer's command, which undoes the command;
/// `f`'s own error is returned inside `Ok` after its writes were rolled back.
fn run_step<T, F>(
    conn: &Connection,
    step: &TransactionalStep,
    now: i64,
    f: F,
) -> QResult<Result<Value, TaskError>>
where
    T: Serialize,
    F: FnOnce(&Connection) -> Result<T, TaskError>,
{
    let lease = step.lease();
    if !lease_held(conn, lease)? {
        return Err(durable_jobs::Error::LeaseLost {
            job_id: lease.job_id,
        }
        .into());
    }
    conn.execute_batch(SAVEPOINT)?;
    let value = f(conn).and_then(|v| step.value_of(&v));
    let value = match value {
        Ok(v) => v,
        Err(e) => {
            conn.execute_batch(ROLLBACK)?;
            conn.execute_batch(RELEASE)?;
            return Ok(Err(e));
        }
    };
    save_checkpoint(conn, lease, &step.checkpoint(value.clone()), now)?;
    conn.execute_batch(RELEASE)?;
    Ok(Ok(value))
}

fn lease_held(conn: &Connection, lease: &Lease) -> QResult<bool> {
    let held: Option<i64> = conn
        .prepare_cached(&format!("SELECT 1 FROM durable_jobs WHERE {FENCE}"))?
        .query_row(params![lease.job_id, lease.token], |r| r.get(0))
        .optional()?;
    Ok(held.is_some())
}
