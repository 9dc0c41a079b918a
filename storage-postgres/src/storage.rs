//! [`PostgresStorage`]: the [`Storage`] implementation on PostgreSQL.

use crate::error::{db, db_context, storage};
use crate::exec::{Db, Exec, Fetch};
use crate::listen::{self, ListenerTask};
use crate::migrate;
use crate::operations::OperationsSql;
use crate::options::{channel, PostgresOptions};
use crate::retention::{PurgeState, RetentionSql};
use crate::sql::{Sql, JOB_COLUMNS};
use crate::workflow::WorkflowSql;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use durable_jobs::job::new_lease_token;
use durable_jobs::{
    AdvanceScheduleParams, AttemptOutcome, AttemptRecord, Capabilities, Checkpoint,
    CheckpointOutcome, ClaimedJob, Completion, DeletedBatch, DequeueParams, Enqueued, Error,
    Failure, Job, JobFilter, JobId, JobStatus, Lease, LeaseInfo, ManualOutcome, NewJob, QueueCount,
    RateLimit, ReleasedJob, Result, RetentionBatch, RetentionPurged, ScheduleRecord,
    SpawnChildrenParams, StaleLocks, Storage, StorageErrorKind, TakeSignalsParams, WorkerRecord,
};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Jobs stored in PostgreSQL. Cloning is cheap and shares the pool.
///
/// Many processes on many machines may share one schema: claims use
/// `FOR UPDATE SKIP LOCKED`, every lease write is fenced by the lease token, and all
/// times come from the database clock.
///
/// # Examples
/// ```no_run
/// # async fn example() -> durable_jobs::Result<()> {
/// use durable_jobs::{NewJob, Storage};
/// use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
/// let storage = PostgresStorage::connect_with(
///     "postgres://postgres@127.0.0.1:5432/app",
///     PostgresOptions::new().schema("jobs"),
/// )
/// .await?;
/// storage.migrate().await?;
/// let id = storage.enqueue(NewJob::new("send_email", serde_json::json!({"to": "a@b.c"}))).await?.id;
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    options: PostgresOptions,
    sql: Sql,
    wf: WorkflowSql,
    ops: OperationsSql,
    retention: RetentionSql,
    wake: Arc<watch::Sender<u64>>,
    /// Bumped by `finished:<id>` notifications (see `Storage::finishes`).
    finished: Arc<watch::Sender<u64>>,
    listener: Mutex<Option<ListenerTask>>,
    /// Where the next healing sweep of waiting parents starts (a parent id; 0 from the
    /// start).
    heal_after: AtomicI64,
    /// The retention purge's share of the server while this storage's other statements
    /// run, and what it deleted since it last vacuumed (see `retention.rs`).
    purge: PurgeState,
    /// Whether the pool's connections may JIT-compile statements (see
    /// [`crate::exec::NO_JIT_BEGIN`]): false for direct pools this crate opened (the
    /// startup option turns it off), found out on first use for a pool the application
    /// passed in; unused behind a transaction-mode pooler.
    jit: tokio::sync::OnceCell<bool>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("schema", &self.inner.options.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStorage {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) with default options.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a malformed URL, [`Error::Storage`] when the server
    /// cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::new()).await
    }

    /// Connects to `url` with `options`, opening a pool of `options.max_connections`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for invalid options or a malformed URL,
    /// [`Error::Storage`] when the server cannot be reached.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        options.validate()?;
        let connect = PgConnectOptions::from_str(url).map_err(|e| Error::InvalidOption {
            option: "url",
            message: format!(
                "expected postgres://user@host:port/database, found an invalid URL: {e}"
            ),
        })?;
        // pgBouncer refuses startup parameters it does not know unless told to ignore
        // them; PostgreSQL 12 and later print floats exactly without this one anyway.
        // Direct connections turn the JIT compiler off for good (see
        // `exec::NO_JIT_BEGIN`); behind the pooler every statement's transaction does.
        let connect = if options.pgbouncer {
            connect.extra_float_digits(None)
        } else {
            connect.options([("jit", "off")])
        };
        let ping_idle_after = options.ping_idle_after;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // A ping on every acquire doubled the round trips of every statement; only
            // connections idle long enough to have been dropped are checked.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= ping_idle_after {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect)
            .await
            .map_err(|e| {
                db_context(
                    "could not connect to PostgreSQL",
                    e,
                    " (is the server running and the URL right?)",
                )
            })?;
        let pooler = options.pgbouncer;
        let storage = Self::build(pool, options);
        if !pooler {
            // The startup option above turned JIT off.
            let _ = storage.inner.jit.set(false);
        }
        Ok(storage)
    }

    /// Uses an existing pool with default options (schema [`crate::DEFAULT_SCHEMA`]).
    ///
    /// # Errors
    /// None today with default options; kept fallible like [`Self::from_pool_with`].
    pub fn from_pool(pool: PgPool) -> Result<Self> {
        Self::from_pool_with(pool, PostgresOptions::new())
    }

    /// Uses an existing pool (shared with the application) with `options`; the pool
    /// options in `options` are ignored.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for invalid options (e.g. the schema name).
    pub fn from_pool_with(pool: PgPool, options: PostgresOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self::build(pool, options))
    }

    fn build(pool: PgPool, options: PostgresOptions) -> Self {
        let (wake, _) = watch::channel(0);
        let (finished, _) = watch::channel(0);
        let now = crate::sql::now_expr(&options.schema, options.uses_test_clock());
        PostgresStorage {
            inner: Arc::new(Inner {
                sql: Sql::new(&options.schema, &now),
                wf: WorkflowSql::new(&options.schema, &now),
                ops: OperationsSql::new(&options.schema, &now),
                retention: RetentionSql::new(&options.schema, &now),
                pool,
                options,
                wake: Arc::new(wake),
                finished: Arc::new(finished),
                listener: Mutex::new(None),
                heal_after: AtomicI64::new(0),
                purge: PurgeState::default(),
                jit: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The connection pool. Behind a transaction-mode pooler
    /// ([`PostgresOptions::pgbouncer_transaction_mode`]) run your own statements on it
    /// with `.persistent(false)` inside a transaction.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Where a statement runs: on the pool, each in a transaction of its own behind a
    /// transaction-mode pooler (see [`crate::exec`]). Counted as the work the retention
    /// purge makes way for (see [`PurgeState`]).
    pub(crate) fn db(&self) -> Db<'_> {
        self.inner.purge.foreground();
        self.background_db()
    }

    /// [`Self::db`] for the retention purge's own statements, which it does not make way
    /// for.
    pub(crate) fn background_db(&self) -> Db<'_> {
        Db::Pool {
            pool: &self.inner.pool,
            pooler: self.inner.options.pgbouncer,
        }
    }

    /// Begins a transaction whose statements are never JIT-compiled (see
    /// [`crate::exec::NO_JIT_BEGIN`]); a plain BEGIN where the connection already turned
    /// JIT off. Counted as the work the retention purge makes way for (see
    /// [`PurgeState`]).
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.inner.purge.foreground();
        self.begin_background().await
    }

    /// A pool connection of its own for several statements outside a transaction,
    /// counted as the work the retention purge makes way for (see [`PurgeState`]).
    pub(crate) async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.inner.purge.foreground();
        self.inner.pool.acquire().await.map_err(db)
    }

    /// [`Self::begin`] for the retention purge's own transactions.
    pub(crate) async fn begin_background(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let tx = if !self.inner.options.pgbouncer && self.inner.jit.get() == Some(&false) {
            self.inner.pool.begin().await
        } else {
            self.inner.pool.begin_with(crate::exec::NO_JIT_BEGIN).await
        };
        tx.map_err(db)
    }

    /// Whether this storage's statements outside a transaction may be JIT-compiled: the
    /// pool was passed in and its connections have `jit` on. Asked once, on first use.
    /// Never behind a transaction-mode pooler: each statement there runs in a
    /// transaction of its own that turns JIT off (see [`crate::exec`]).
    async fn may_jit(&self) -> Result<bool> {
        if self.inner.options.pgbouncer {
            return Ok(false);
        }
        self.inner
            .jit
            .get_or_try_init(|| async {
                let on: bool = sqlx::query_scalar(
                    "SELECT coalesce(current_setting('jit', true), 'off') = 'on'",
                )
                .fetch_one_on(self.db())
                .await
                .map_err(db)?;
                Ok::<_, Error>(on)
            })
            .await
            .copied()
    }

    /// Where a statement inside a transaction runs: on its connection.
    pub(crate) fn on<'c>(&self, conn: &'c mut PgConnection) -> Db<'c> {
        Db::Conn {
            conn,
            pooler: self.inner.options.pgbouncer,
        }
    }

    /// The schema holding the library's tables.
    pub fn schema(&self) -> &str {
        &self.inner.options.schema
    }

    /// The options this storage was built with.
    pub fn options(&self) -> &PostgresOptions {
        &self.inner.options
    }

    /// The NOTIFY channel enqueues signal on (`durable_jobs:<schema>`).
    pub fn channel(&self) -> String {
        channel(self.schema())
    }

    /// The schema version applied in the database (0 before the first migration).
    ///
    /// # Errors
    /// [`Error::Storage`] when the database cannot be queried.
    pub async fn schema_version(&self) -> Result<i64> {
        migrate::version(self.pool(), self.schema()).await
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    pub(crate) fn wf(&self) -> &WorkflowSql {
        &self.inner.wf
    }

    pub(crate) fn ops(&self) -> &OperationsSql {
        &self.inner.ops
    }

    /// Starts the LISTEN task when listening is on and it is not running: with the first
    /// subscriber, so storages that never wait hold no LISTEN connection, and again when
    /// it died with the runtime it ran on.
    fn ensure_listener(&self) {
        let Some(connect) = self.listen_options() else {
            return;
        };
        let mut slot = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|t| t.is_finished()) {
            *slot = listen::spawn(
                &connect,
                self.channel(),
                listen::Counters {
                    wake: self.inner.wake.clone(),
                    finished: self.inner.finished.clone(),
                },
            );
        }
    }

    /// Where the listener connects, when there is one: the pool's server, or behind a
    /// transaction-mode pooler (where LISTEN would hold a server connection that the
    /// pooler hands to other clients) the direct URL.
    fn listen_options(&self) -> Option<PgConnectOptions> {
        let options = &self.inner.options;
        if !options.listens() {
            return None;
        }
        match (&options.direct_url, options.pgbouncer) {
            // Validated when the storage was built.
            (Some(url), true) => crate::options::direct_connect_options(url).ok(),
            _ => Some((*self.pool().connect_options()).clone()),
        }
    }

    pub(crate) fn purge_state(&self) -> &PurgeState {
        &self.inner.purge
    }

    pub(crate) fn retention_sql(&self) -> &RetentionSql {
        &self.inner.retention
    }

    /// The healing sweep's cursor (see `heal_waiting_parents`).
    pub(crate) fn heal_cursor(&self) -> &AtomicI64 {
        &self.inner.heal_after
    }

    /// Wakes this process's idle workers now (other processes hear the NOTIFY).
    pub(crate) fn wake_local(&self) {
        listen::bump(&self.inner.wake);
    }

    async fn fenced(&self, sql: &Arc<str>, lease: &Lease) -> Result<()> {
        let done = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected();
        lease_held(done, lease)
    }
}

fn lease_held(rows: u64, lease: &Lease) -> Result<()> {
    if rows == 0 {
        Err(Error::LeaseLost {
            job_id: lease.job_id,
        })
    } else {
        Ok(())
    }
}

/// A duration in whole microseconds, saturating (PostgreSQL intervals are µs).
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Turns parallel workers off for the rest of the transaction `counts()` runs in. The
/// counts read every job's entry in the claim and finished indexes, and every worker's
/// metrics sampler runs them: on a table of 2.1M jobs a parallel plan ran three
/// processes at once (about 0.8 CPU-seconds in 0.3 s), taking every core of a small
/// server from the claims and completions while it ran; one process takes 0.46
/// CPU-seconds and leaves the other cores alone.
const SERIAL_PLANS: &str = "SET LOCAL max_parallel_workers_per_gather = 0";

/// Decodes a job from a row holding `sql::JOB_COLUMNS` in that order.
pub(crate) fn job_from_row(row: &PgRow) -> Result<Job> {
    // By position (no per-column name lookup); each position is computed at build time
    // from the column list every job-returning statement selects.
    macro_rules! col {
        ($name:literal) => {
            row.try_get(const { crate::sql::job_column($name) })
                .map_err(db)?
        };
    }
    // Borrowed from the row: the status is only parsed, never kept as text.
    let status: &str = col!("status");
    let status = JobStatus::from_str(status)?;
    let holder: Option<String> = col!("lease_holder");
    let token: Option<i64> = col!("lease_token");
    let expires_at: Option<DateTime<Utc>> = col!("lease_expires_at");
    let lease = match (status, holder, token, expires_at) {
        (JobStatus::Running, Some(holder), Some(token), Some(expires_at)) => Some(LeaseInfo {
            holder,
            token,
            expires_at,
        }),
        _ => None,
    };
    Ok(Job {
        id: col!("id"),
        task: col!("task"),
        payload: col!("payload"),
        queue: col!("queue"),
        priority: col!("priority"),
        status,
        attempt: col!("attempt"),
        max_attempts: col!("max_attempts"),
        run_at: col!("run_at"),
        lease,
        last_error: col!("last_error"),
        result: col!("result"),
        dedupe_key: col!("dedupe_key"),
        timeout_ms: col!("timeout_ms"),
        created_at: col!("created_at"),
        started_at: col!("started_at"),
        completed_at: col!("completed_at"),
        updated_at: col!("updated_at"),
        trace_context: col!("trace_context"),
        parent_id: col!("parent_id"),
        tags: col!("tags"),
        flags: col!("flags"),
        serial_key: col!("serial_key"),
        progress: col!("progress"),
        metadata: {
            let metadata: sqlx::types::Json<durable_jobs::Metadata> = col!("metadata");
            metadata.0
        },
    })
}

/// Decodes one attempt from a row of `sql::LIST_ATTEMPTS`, by position.
fn attempt_from_row(row: &PgRow) -> Result<AttemptRecord> {
    let attempt: Option<i32> = row.try_get(0).map_err(db)?;
    let started_at: Option<DateTime<Utc>> = row.try_get(2).map_err(db)?;
    let outcome: Option<String> = row.try_get(4).map_err(db)?;
    let corrupt = |what: &str| {
        storage(
            StorageErrorKind::Corrupt,
            format!("an attempt record in storage has {what}"),
        )
    };
    let outcome = outcome.ok_or_else(|| corrupt("no outcome"))?;
    Ok(AttemptRecord {
        attempt: attempt.ok_or_else(|| corrupt("no attempt number"))?,
        worker: row.try_get(1).map_err(db)?,
        started_at: started_at.ok_or_else(|| corrupt("no start time"))?,
        finished_at: row.try_get(3).map_err(db)?,
        outcome: AttemptOutcome::parse(&outcome)
            .ok_or_else(|| corrupt(&format!("an unknown outcome {outcome:?}")))?,
        error: row.try_get(5).map_err(db)?,
    })
}

/// A checkpoint from a row whose columns from `first` on are key, name, ok, err,
/// created_at and args_hash.
fn checkpoint_from_row(row: &sqlx::postgres::PgRow, first: usize) -> Result<Checkpoint> {
    let ok: Option<Value> = row.try_get(first + 2).map_err(db)?;
    let err: Option<String> = row.try_get(first + 3).map_err(db)?;
    Ok(Checkpoint {
        key: row.try_get(first).map_err(db)?,
        name: row.try_get(first + 1).map_err(db)?,
        outcome: match err {
            Some(e) => CheckpointOutcome::Err(e),
            None => CheckpointOutcome::Ok(ok.unwrap_or(Value::Null)),
        },
        created_at: row.try_get(first + 4).map_err(db)?,
        args_hash: row.try_get(first + 5).map_err(db)?,
    })
}

#[async_trait]
impl Storage for PostgresStorage {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(self.inner.options.listens(), true, true)
    }

    async fn migrate(&self) -> Result<()> {
        migrate::run(self.pool(), self.schema()).await
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        sqlx::query_scalar(AssertSqlSafe(self.sql().now.clone()))
            .fetch_one_on(self.db())
            .await
            .map_err(db)
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let mut out = self.enqueue_many(vec![job]).await?;
        out.pop()
            .ok_or_else(|| storage(StorageErrorKind::Other, "enqueue returned no row"))
    }

    async fn enqueue_with_children(
        &self,
        parent: NewJob,
        children: Vec<NewJob>,
    ) -> Result<(Enqueued, Vec<Enqueued>)> {
        let mut tx = self.begin().await?;
        let parent = crate::tx::insert_jobs(self.on(&mut tx), self.sql(), vec![parent])
            .await?
            .pop()
            .ok_or_else(|| storage(StorageErrorKind::Other, "enqueue returned no row"))?;
        let children = children
            .into_iter()
            .map(|mut c| {
                c.parent_id = Some(parent.id);
                c
            })
            .collect::<Vec<_>>();
        // A deduplicated parent already has its children: nothing new is added.
        let children = if children.is_empty() || !parent.created {
            Vec::new()
        } else {
            crate::tx::insert_jobs(self.on(&mut tx), self.sql(), children).await?
        };
        tx.commit().await.map_err(db)?;
        self.wake_local();
        Ok((parent, children))
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let out = if jobs.iter().any(crate::tx::replaces) || self.inner.options.pgbouncer {
            // Several statements: one transaction keeps the batch all-or-nothing (and,
            // behind a transaction-mode pooler, on one server connection).
            let mut tx = self.begin().await?;
            let out = crate::tx::insert_jobs(self.on(&mut tx), self.sql(), jobs).await?;
            tx.commit().await.map_err(db)?;
            out
        } else {
            let mut conn = self.acquire().await?;
            crate::tx::insert_jobs(self.on(&mut conn), self.sql(), jobs).await?
        };
        // Autocommitted: this process's workers may look now; others get the NOTIFY.
        self.wake_local();
        Ok(out)
    }

    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        if params.limit == 0 || params.queues.is_empty() {
            return Ok(Vec::new());
        }
        if params.queues.len() > 1 {
            let limited = self.rate_limited_among(&params.queues).await?;
            if !limited.is_empty() {
                return self.dequeue_each(params).await;
            }
        }
        let token = new_lease_token();
        // Workers claim per queue; that form lets the index give claim order directly.
        let query = match params.queues.as_slice() {
            [queue] => sqlx::query(AssertSqlSafe(self.sql().claim.clone())).bind(queue),
            queues => sqlx::query(AssertSqlSafe(self.sql().claim_queues.clone())).bind(queues),
        };
        let query = query
            .bind(&params.tasks)
            .bind(i64::try_from(params.limit).unwrap_or(i64::MAX))
            .bind(&params.holder)
            .bind(token)
            .bind(micros(params.lease_duration))
            .bind(&params.forbidden_flags);
        // The claim is the statement JIT hurts most (see `exec::NO_JIT_BEGIN`): on a
        // pool that may compile it, it runs in a transaction that turns JIT off.
        let rows = if self.may_jit().await? {
            let mut tx = self.begin().await?;
            let rows = query.fetch_all_on(self.on(&mut tx)).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            rows
        } else {
            query.fetch_all_on(self.db()).await.map_err(db)?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            let expires_at = job.lease.as_ref().map(|l| l.expires_at).ok_or_else(|| {
                storage(
                    StorageErrorKind::Other,
                    format!("claimed job {} came back without a lease", job.id),
                )
            })?;
            // The history as it was before the claim (the claim does not write it): empty
            // means no attempt ever ended, so none wrote a checkpoint.
            let none: bool = row.try_get(JOB_COLUMNS.len()).map_err(db)?;
            out.push(ClaimedJob::new(job, token, expires_at).with_no_checkpoints(none));
        }
        // UPDATE ... RETURNING has no order; hand jobs out in claim order.
        out.sort_by(|a, b| {
            (std::cmp::Reverse(a.job.priority), a.job.run_at, a.job.id).cmp(&(
                std::cmp::Reverse(b.job.priority),
                b.job.run_at,
                b.job.id,
            ))
        });
        Ok(out)
    }

    async fn complete(&self, lease: &Lease, result: Value) -> Result<()> {
        let done = sqlx::query(AssertSqlSafe(self.sql().complete.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(serde_json::to_string(&result)?)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected();
        lease_held(done, lease)
    }

    async fn complete_many(&self, items: Vec<Completion>) -> Result<Vec<Result<()>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Only the first item of an id goes in (a row is completed once); later items of
        // that id then find their id already taken and report LeaseLost.
        let mut sent = HashSet::with_capacity(items.len());
        let mut ids = Vec::with_capacity(items.len());
        let mut tokens = Vec::with_capacity(items.len());
        let mut results = Vec::with_capacity(items.len());
        let mut leases = Vec::with_capacity(items.len());
        for c in items {
            if sent.insert(c.lease.job_id) {
                ids.push(c.lease.job_id);
                tokens.push(c.lease.token);
                results.push(sqlx::types::Json(c.result));
            }
            leases.push(c.lease);
        }
        let rows = sqlx::query(AssertSqlSafe(self.sql().complete_many.clone()))
            .bind(&ids)
            .bind(&tokens)
            .bind(&results)
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        let mut done = HashSet::with_capacity(rows.len());
        for row in &rows {
            done.insert(row.try_get::<i64, _>("id").map_err(db)?);
        }
        // A completed id was completed under its first item's token (the only one sent):
        // that item succeeded. Every other item of the id, and every item of an id not
        // completed, lost its lease.
        Ok(leases
            .iter()
            .map(|lease| {
                if done.remove(&lease.job_id) {
                    Ok(())
                } else {
                    Err(Error::LeaseLost {
                        job_id: lease.job_id,
                    })
                }
            })
            .collect())
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<()> {
        let q = match failure.retry_in {
            Some(delay) => sqlx::query(AssertSqlSafe(self.sql().fail_retry.clone()))
                .bind(lease.job_id)
                .bind(lease.token)
                .bind(failure.error)
                .bind(micros(delay)),
            None => sqlx::query(AssertSqlSafe(self.sql().fail_terminal.clone()))
                .bind(lease.job_id)
                .bind(lease.token)
                .bind(failure.error),
        };
        let done = q.execute_on(self.db()).await.map_err(db)?.rows_affected();
        lease_held(done, lease)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.fenced(&self.sql().release.clone(), lease).await?;
        self.wake_local();
        Ok(())
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        let done = sqlx::query(AssertSqlSafe(self.sql().snooze.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(micros(delay))
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected();
        lease_held(done, lease)
    }

    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()> {
        let done = sqlx::query(AssertSqlSafe(self.sql().set_progress.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(progress)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected();
        lease_held(done, lease)
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let expires_at: Option<DateTime<Utc>> =
            sqlx::query_scalar(AssertSqlSafe(self.sql().heartbeat.clone()))
                .bind(lease.job_id)
                .bind(lease.token)
                .bind(micros(extend))
                .fetch_optional_on(self.db())
                .await
                .map_err(db)?;
        match expires_at {
            Some(expires_at) => Ok(Lease {
                expires_at,
                ..lease.clone()
            }),
            None => Err(Error::LeaseLost {
                job_id: lease.job_id,
            }),
        }
    }

    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = leases.iter().map(|l| l.job_id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let rows = sqlx::query(AssertSqlSafe(self.sql().heartbeat_many.clone()))
            .bind(&ids)
            .bind(&tokens)
            .bind(micros(extend))
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        // Each renewed row, with the token it runs under (a heartbeat leaves it as is).
        let mut renewed = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(db)?;
            let token: i64 = row.try_get(1).map_err(db)?;
            let expires_at: DateTime<Utc> = row.try_get(2).map_err(db)?;
            renewed.insert(id, (token, expires_at));
        }
        Ok(leases
            .iter()
            .map(|lease| match renewed.get(&lease.job_id) {
                Some(&(token, expires_at)) if token == lease.token => Ok(Lease {
                    expires_at,
                    ..lease.clone()
                }),
                _ => Err(Error::LeaseLost {
                    job_id: lease.job_id,
                }),
            })
            .collect())
    }

    async fn release_stale_locks(&self) -> Result<StaleLocks> {
        let rows = sqlx::query(AssertSqlSafe(self.sql().reclaim.clone()))
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        let mut released = Vec::with_capacity(rows.len());
        for row in &rows {
            let status: String = row.try_get(4).map_err(db)?;
            released.push(ReleasedJob {
                job_id: row.try_get(0).map_err(db)?,
                queue: row.try_get(1).map_err(db)?,
                task: row.try_get(2).map_err(db)?,
                attempt: row.try_get(3).map_err(db)?,
                status: JobStatus::from_str(&status)?,
            });
        }
        if !released.is_empty() {
            self.wake_local();
        }
        released.sort_by_key(|j| j.job_id);
        let parents_woken = self.heal_waiting_parents().await?;
        Ok(StaleLocks {
            released,
            parents_woken,
        })
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()> {
        let (ok, err) = match checkpoint.outcome {
            CheckpointOutcome::Ok(v) => (Some(serde_json::to_string(&v)?), None),
            CheckpointOutcome::Err(e) => (None, Some(e)),
        };
        let done = sqlx::query(AssertSqlSafe(self.sql().checkpoint.clone()))
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(checkpoint.key)
            .bind(checkpoint.name)
            .bind(ok)
            .bind(err)
            .bind(checkpoint.args_hash)
            .execute_on(self.db())
            .await
            .map_err(db)?
            .rows_affected();
        lease_held(done, lease)
    }

    async fn list_checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(AssertSqlSafe(self.sql().list_checkpoints.clone()))
            .bind(job_id)
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        rows.iter().map(|row| checkpoint_from_row(row, 0)).collect()
    }

    async fn list_checkpoints_many(&self, job_ids: Vec<JobId>) -> Result<Vec<Vec<Checkpoint>>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(AssertSqlSafe(self.sql().list_checkpoints_many.clone()))
            .bind(&job_ids)
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        let mut by_job: std::collections::HashMap<JobId, Vec<Checkpoint>> =
            std::collections::HashMap::with_capacity(job_ids.len());
        for row in &rows {
            let job_id: JobId = row.try_get(0).map_err(db)?;
            by_job
                .entry(job_id)
                .or_default()
                .push(checkpoint_from_row(row, 1)?);
        }
        // In the ids' order; an id asked for twice gets its list twice.
        Ok(job_ids
            .iter()
            .map(|id| by_job.get(id).cloned().unwrap_or_default())
            .collect())
    }

    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64> {
        Ok(
            sqlx::query(AssertSqlSafe(self.sql().delete_checkpoints.clone()))
                .bind(job_id)
                .execute_on(self.db())
                .await
                .map_err(db)?
                .rows_affected(),
        )
    }

    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>> {
        let row = sqlx::query(AssertSqlSafe(self.sql().get_job.clone()))
            .bind(job_id)
            .fetch_optional_on(self.db())
            .await
            .map_err(db)?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        filter.validate()?;
        crate::filter::list_jobs(self.db(), self.schema(), &filter).await
    }

    async fn counts(&self) -> Result<Vec<QueueCount>> {
        let mut tx = self.begin().await?;
        sqlx::query(SERIAL_PLANS)
            .execute_on(self.on(&mut tx))
            .await
            .map_err(db)?;
        let rows = sqlx::query(AssertSqlSafe(self.sql().counts.clone()))
            .fetch_all_on(self.on(&mut tx))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get(1).map_err(db)?;
                let n: i64 = row.try_get(2).map_err(db)?;
                Ok(QueueCount {
                    queue: row.try_get(0).map_err(db)?,
                    status: JobStatus::from_str(&status)?,
                    count: u64::try_from(n).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn finished_counts(&self, since: DateTime<Utc>) -> Result<Vec<QueueCount>> {
        let rows = sqlx::query(AssertSqlSafe(self.sql().finished_counts.clone()))
            .bind(since)
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        let mut counts = rows
            .iter()
            .map(|row| {
                let status: String = row.try_get(1).map_err(db)?;
                let n: i64 = row.try_get(2).map_err(db)?;
                Ok(QueueCount {
                    queue: row.try_get(0).map_err(db)?,
                    status: JobStatus::from_str(&status)?,
                    count: u64::try_from(n).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // By queue (byte order, whatever the database's collation), then status in
        // lifecycle order: `JobStatus` orders that way, its text does not.
        counts.sort_unstable_by(|a, b| (&a.queue, a.status).cmp(&(&b.queue, b.status)));
        Ok(counts)
    }

    async fn list_attempts(&self, job_id: JobId) -> Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(AssertSqlSafe(self.sql().list_attempts.clone()))
            .bind(job_id)
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn cancel(&self, job_id: JobId) -> Result<bool> {
        let cancelled: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql().cancel.clone()))
            .bind(job_id)
            .fetch_all_on(self.db())
            .await
            .map_err(db)?;
        if cancelled.contains(&job_id) {
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

    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()> {
        self.suspend_job(lease, wake_at).await
    }

    async fn spawn_children(&self, params: SpawnChildrenParams<'_>) -> Result<Vec<JobId>> {
        self.spawn_child_jobs(params).await
    }

    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        self.signal_job(job_id, name, payload).await
    }

    async fn take_signals(&self, params: TakeSignalsParams<'_>) -> Result<Vec<Value>> {
        self.take_job_signals(params).await
    }

    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        self.peek_job_signal(job_id, name).await
    }

    // ----- Workflows: group-committed checkpoints -----

    async fn checkpoint_many(
        &self,
        items: Vec<durable_jobs::CheckpointWrite>,
    ) -> Result<Vec<Result<()>>> {
        self.checkpoint_jobs(items).await
    }

    async fn delete_job(&self, job_id: JobId) -> Result<bool> {
        self.delete_one_job(job_id).await
    }

    async fn delete_jobs(&self, filter: JobFilter) -> Result<DeletedBatch> {
        filter.validate()?;
        crate::delete::delete_jobs(self, &filter).await
    }

    async fn upsert_schedule(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.upsert_schedule_row(name, definition, now).await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.schedule_rows().await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        self.pause_schedule_row(name, paused).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        self.delete_schedule_row(name).await
    }

    async fn advance_schedule(
        &self,
        params: AdvanceScheduleParams<'_>,
    ) -> Result<Option<Vec<JobId>>> {
        self.advance_schedule_row(params).await
    }

    async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64> {
        self.retry_job_rows(ids, keep_checkpoints).await
    }

    async fn reschedule_job(&self, job_id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        self.reschedule_row(job_id, run_at).await
    }

    async fn finish_jobs(&self, ids: &[JobId], outcome: ManualOutcome) -> Result<u64> {
        self.finish_job_rows(ids, outcome).await
    }

    async fn purge_finished(&self, older_than: DateTime<Utc>) -> Result<u64> {
        self.purge_rows(older_than).await
    }

    async fn purge_retained(&self, batch: RetentionBatch) -> Result<RetentionPurged> {
        self.purge_retained_rows(batch).await
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.pause_queue_row(queue, paused).await
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        self.paused_queue_rows().await
    }

    async fn set_key_limit(&self, key: &str, max_running: Option<u32>) -> Result<()> {
        self.set_key_limit_row(key, max_running).await
    }

    async fn key_limits(&self) -> Result<Vec<(String, u32)>> {
        self.key_limit_rows().await
    }

    async fn set_queue_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        self.set_rate_limit_row(queue, limit).await
    }

    async fn queue_rate_limits(&self) -> Result<Vec<(String, RateLimit)>> {
        self.rate_limit_rows().await
    }

    async fn register_worker(&self, worker: WorkerRecord) -> Result<()> {
        self.register_worker_row(worker).await
    }

    async fn touch_worker(&self, name: &str) -> Result<bool> {
        self.touch_worker_row(name).await
    }

    async fn deregister_worker(&self, name: &str) -> Result<bool> {
        self.deregister_worker_row(name).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.worker_rows().await
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        self.prune_worker_rows(before).await
    }

    fn wakeups(&self) -> Option<watch::Receiver<u64>> {
        self.ensure_listener();
        Some(self.inner.wake.subscribe())
    }

    fn finishes(&self) -> Option<watch::Receiver<u64>> {
        self.ensure_listener();
        Some(self.inner.finished.subscribe())
    }

    async fn watch_job(&self, job_id: JobId) -> Result<Option<Job>> {
        let row = sqlx::query(AssertSqlSafe(self.sql().watch_job.clone()))
            .bind(job_id)
            .fetch_optional_on(self.db())
            .await
            .map_err(db)?;
        match row {
            Some(row) => job_from_row(&row).map(Some),
            // Finished or missing: a fresh statement sees a finish that raced the update.
            None => self.get_job(job_id).await,
        }
    }
}

/// No statement of the storage is JIT-compiled, whoever opened its connections.
#[cfg(all(test, feature = "testing"))]
mod jit_tests {
    use super::PostgresStorage;
    use crate::exec::Fetch;
    use crate::testing::{PgBouncerHarness, TestSchema};
    use crate::PostgresOptions;
    use durable_jobs::{DequeueParams, NewJob, Storage};
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;
    use std::time::Duration;

    const JIT: &str = "SELECT current_setting('jit')";

    /// A pool that compiles every statement: `jit` on and no cost threshold.
    async fn jit_pool(url: &str) -> sqlx::PgPool {
        let options = PgConnectOptions::from_str(url)
            .expect("url")
            .options([("jit", "on"), ("jit_above_cost", "0")]);
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("pool")
    }

    fn claim(limit: usize) -> DequeueParams {
        DequeueParams {
            queues: vec!["default".into()],
            tasks: Vec::new(),
            limit,
            lease_duration: Duration::from_secs(60),
            holder: "jit".into(),
            forbidden_flags: Vec::new(),
        }
    }

    /// The pool `connect_with` opens turns JIT off at connection start, so its
    /// statements and transactions need nothing more.
    #[tokio::test]
    async fn connections_the_storage_opens_never_jit() {
        let t = TestSchema::new().await.expect("schema");
        let s = PostgresStorage::connect_with(
            t.url(),
            PostgresOptions::new().schema(t.schema()).listen(false),
        )
        .await
        .expect("storage");
        let jit: String = sqlx::query_scalar(JIT)
            .fetch_one(s.pool())
            .await
            .expect("jit");
        assert_eq!(jit, "off");
        assert!(!s.may_jit().await.expect("may_jit"));
        let mut tx = s.begin().await.expect("begin");
        let jit: String = sqlx::query_scalar(JIT)
            .fetch_one(&mut *tx)
            .await
            .expect("jit in tx");
        assert_eq!(jit, "off");
        tx.rollback().await.expect("rollback");
        t.drop_schema().await.expect("drop");
    }

    /// A pool the application passed in keeps its own settings: the storage finds out
    /// that it compiles, and its claims and transactions turn JIT off for themselves.
    #[tokio::test]
    async fn a_passed_in_pool_that_compiles_claims_without_jit() {
        let t = TestSchema::new().await.expect("schema");
        let pool = jit_pool(t.url()).await;
        let s = PostgresStorage::from_pool_with(pool, PostgresOptions::new().schema(t.schema()))
            .expect("storage");
        assert!(s.may_jit().await.expect("may_jit"));
        let mut tx = s.begin().await.expect("begin");
        let jit: String = sqlx::query_scalar(JIT)
            .fetch_one(&mut *tx)
            .await
            .expect("jit in tx");
        assert_eq!(jit, "off", "a storage transaction turns JIT off");
        tx.rollback().await.expect("rollback");
        // Outside the storage's transactions the application's setting stands.
        let jit: String = sqlx::query_scalar(JIT)
            .fetch_one(s.pool())
            .await
            .expect("jit");
        assert_eq!(jit, "on");
        s.enqueue_many(
            (0..3)
                .map(|i| NewJob::new("t", serde_json::json!(i)))
                .collect(),
        )
        .await
        .expect("enqueue");
        let claimed = s.dequeue(claim(10)).await.expect("claim");
        assert_eq!(claimed.len(), 3);
        t.drop_schema().await.expect("drop");
    }

    /// A passed-in pool without JIT claims as a pool the storage opened does.
    #[tokio::test]
    async fn a_passed_in_pool_without_jit_is_taken_as_it_is() {
        let t = TestSchema::new().await.expect("schema");
        let options = PgConnectOptions::from_str(t.url())
            .expect("url")
            .options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("pool");
        let s = PostgresStorage::from_pool_with(pool, PostgresOptions::new().schema(t.schema()))
            .expect("storage");
        assert!(!s.may_jit().await.expect("may_jit"));
        t.drop_schema().await.expect("drop");
    }

    /// Behind pgBouncer in transaction mode every statement runs in a transaction of its
    /// own, which turns JIT off in the same round trip as its BEGIN.
    #[tokio::test]
    async fn statements_behind_pgbouncer_run_without_jit() {
        let h = PgBouncerHarness::new().await.expect("pgbouncer");
        let s = h.storage();
        let jit: String = sqlx::query_scalar(JIT)
            .fetch_one_on(s.db())
            .await
            .expect("jit");
        assert_eq!(jit, "off");
        let mut tx = s.begin().await.expect("begin");
        let jit: String = sqlx::query_scalar(JIT)
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .expect("jit in tx");
        assert_eq!(jit, "off");
        tx.rollback().await.expect("rollback");
    }
}
