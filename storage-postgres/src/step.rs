//! Transactional steps: a workflow step whose closure writes through the step's own
//! PostgreSQL transaction, which also holds the step's checkpoint, so the business write
//! commits exactly when the step is recorded as done.
//!
//! ```no_run
//! # async fn charge(ctx: durable_jobs::JobContext, storage: durable_jobs_postgres::PostgresStorage)
//! #     -> Result<(), durable_jobs::TaskError> {
//! use durable_jobs_postgres::PostgresStepExt;
//! let order = 42_i64;
//! let payment_id: i64 = ctx
//!     .pg_step(&storage, "charge", move |tx| {
//!         Box::pin(async move {
//!             let (id,): (i64,) = sqlx::query_as(
//!                 "INSERT INTO payments (order_id, cents) VALUES ($1, 1299) RETURNING id",
//!             )
//!             .bind(order)
//!             .fetch_one(&mut *tx)
//!             .await?;
//!             Ok(id)
//!         })
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use crate::error::db;
use crate::exec::{Exec, Fetch};
use crate::storage::PostgresStorage;
use durable_jobs::{Error, JobContext, TaskError, TransactionalStep};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection};
use std::future::Future;
use std::pin::Pin;

/// The future a [`PostgresStepExt::pg_step`] closure returns: it borrows the step's
/// transaction for its lifetime (write `Box::pin(async move { ... })`).
pub type PgStepFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, TaskError>> + Send + 'c>>;

/// Transactional workflow steps on PostgreSQL, for [`JobContext`].
pub trait PostgresStepExt {
    /// Runs `f` once as a checkpointed step named `name`, inside one transaction on
    /// `storage`'s pool (with JIT off, like the storage's own) that also writes the
    /// step's checkpoint: `f`'s writes commit together with the checkpoint or not at
    /// all, so they happen exactly once however often the job is retried or its worker
    /// dies.
    ///
    /// The transaction first locks the job row (`FOR SHARE`) and checks that this
    /// attempt's lease is still the job's current one; a lease lost before or during
    /// the step (the job was reclaimed or cancelled) rolls everything back and returns
    /// [`durable_jobs::TaskErrorKind::LeaseLost`]. The lock also holds off a reclaim
    /// until the step commits, so keep the transaction short. On a replay (the step has
    /// its checkpoint) `f` does not run and the stored value is returned. When `f` fails
    /// its writes are rolled back; a terminal (no-retry) error is then stored like
    /// [`JobContext::step`] stores one, and a retryable error retries the job.
    ///
    /// `storage` must be the storage the job was claimed from (the same database and
    /// schema). Behind a transaction-mode pooler
    /// ([`crate::PostgresOptions::pgbouncer_transaction_mode`]) the transaction keeps one
    /// server connection; run `f`'s own statements with `.persistent(false)` there.
    /// [`PostgresStorage::enqueue_in_tx`] on `tx` enqueues jobs atomically with the step.
    ///
    /// # Errors
    /// `f`'s error; a lost lease; a database error (retried); a value that does not
    /// serialize (terminal); non-determinism and stored values that do not fit `T`, as
    /// for [`JobContext::step`].
    fn pg_step<T, F>(
        &self,
        storage: &PostgresStorage,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> PgStepFuture<'c, T> + Send + 'static;
}

impl PostgresStepExt for JobContext {
    fn pg_step<T, F>(
        &self,
        storage: &PostgresStorage,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<T, TaskError>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> PgStepFuture<'c, T> + Send + 'static,
    {
        let storage = storage.clone();
        self.transactional_step(name, move |step| commit_step(storage, step, f))
    }
}

/// One transactional step's transaction: fence, the closure, the checkpoint, commit.
/// Dropping the transaction on any early return rolls it back.
async fn commit_step<T, F>(
    storage: PostgresStorage,
    step: TransactionalStep,
    f: F,
) -> Result<Value, TaskError>
where
    T: Serialize,
    F: for<'c> FnOnce(&'c mut PgConnection) -> PgStepFuture<'c, T>,
{
    let engine = |e: Error| TaskError::from_engine(e);
    let lease = step.lease().clone();
    let lost = || {
        engine(Error::LeaseLost {
            job_id: lease.job_id,
        })
    };
    let mut tx = storage.begin().await.map_err(engine)?;
    let held = sqlx::query_scalar::<_, i64>(AssertSqlSafe(storage.sql().lock_lease.clone()))
        .bind(lease.job_id)
        .bind(lease.token)
        .fetch_optional_on(storage.on(&mut tx))
        .await
        .map_err(|e| engine(db(e)))?;
    if held.is_none() {
        return Err(lost());
    }
    let value = step.value_of(&f(&mut tx).await?)?;
    let checkpoint = step.checkpoint(value.clone());
    let written = sqlx::query(AssertSqlSafe(storage.sql().checkpoint.clone()))
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(checkpoint.key)
        .bind(checkpoint.name)
        .bind(Some(value.to_string()))
        .bind(None::<String>)
        .bind(checkpoint.args_hash)
        .execute_on(storage.on(&mut tx))
        .await
        .map_err(|e| engine(db(e)))?
        .rows_affected();
    if written == 0 {
        return Err(lost());
    }
    tx.commit().await.map_err(|e| engine(db(e)))?;
    Ok(value)
}
