//! [`SqliteStorage`]: the [`Storage`] implementation on a SQLite file.

use crate::checkpoint::{self, Checkpointer};
use crate::error::{is_busy, storage, storage_in, QResult};
use crate::filter;
use crate::migrate;
use crate::operations;
use crate::options::SqliteOptions;
use crate::query::{self, micros};
use crate::reader::Readers;
use crate::retention;
use crate::watch::Watcher;
use crate::workers;
use crate::workflow;
use crate::writer::{Lane, Writer, WriterConfig};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use durable_jobs::job::new_lease_token;
use durable_jobs::CheckpointWrite;
use durable_jobs::{
    AdvanceScheduleParams, AttemptRecord, Capabilities, Checkpoint, ClaimedJob, Clock, Completion,
    DeletedBatch, DequeueParams, Enqueued, Failure, Job, JobFilter, JobId, JobStatus, Lease,
    ManualOutcome, NewJob, QueueCount, RateLimit, Result, RetentionBatch, RetentionPurged,
    ScheduleRecord, SpawnChildrenParams, StaleLocks, Storage, TakeSignalsParams, WorkerRecord,
};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The row write of [`SqliteStorage::finish_out_of_band`]: the job's final state and
/// nothing else (no parent woken, no attempt closed).
const FINISH_OUT_OF_BAND: &str = "UPDATE durable_jobs SET status = ?1, completed_at = ?2, \
     updated_at = ?2, lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, \
     blocked = 0 WHERE id = ?3";

/// Jobs in a SQLite file (or in memory), shared safely by several processes on one
/// machine. Cloning shares the same connections.
///
/// Writes of this process go through one writer thread that commits queued writes
/// together; reads use separate connections and go on during writes (WAL). The file is
/// created and migrated on open.
///
/// # Examples
/// ```
/// # async fn demo() -> durable_jobs::Result<()> {
/// use durable_jobs::{NewJob, Storage};
/// use durable_jobs_sqlite::SqliteStorage;
/// let storage = SqliteStorage::open_in_memory().await?;
/// let e = storage.enqueue(NewJob::new("email", serde_json::json!({"to": "a@b.c"}))).await?;
/// assert!(e.created);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Writer,
    /// Checkpoints the WAL off the writer thread; `None` in memory.
    checkpointer: Option<Checkpointer>,
    /// `None` in memory: one connection holds an in-memory database, so reads go
    /// through the writer too.
    readers: Option<Arc<Readers>>,
    clock: Arc<dyn Clock>,
    wake: Arc<watch::Sender<u64>>,
    /// Bumped after each of this storage's writes and by the watcher for other
    /// connections' commits: what `Queue::wait_for` watches (see `Storage::finishes`).
    finished: Arc<watch::Sender<u64>>,
    /// Notices other processes' commits; `None` in memory or when switched off.
    watcher: Option<Watcher>,
    path: Option<PathBuf>,
    /// Where the lease sweep's next window of waiting parents to heal starts (a job id).
    heal_cursor: AtomicI64,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Sets a connection up: WAL, busy timeout, synchronous, foreign keys, statement cache.
fn configure(conn: &Connection, opts: &SqliteOptions, file: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(opts.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(opts.statement_cache);
    if file {
        // Reading the result forces SQLite to read the header: a file that is not a
        // database fails here, at open, with SQLITE_NOTADB.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "sqlite did not switch to WAL; reads will wait for writes");
        }
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
        opts.synchronous.pragma_value()
    ))
}

fn open_file(path: &Path, opts: &SqliteOptions, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| storage_in(format_args!("sqlite file {}", path.display()), e))?;
    // While another connection (in this process or another) switches a new file to WAL,
    // SQLite can report the lock as busy at once instead of waiting out the busy
    // timeout; retry that like every other busy write, up to `busy_retry_for`.
    let deadline = Instant::now() + opts.busy_retry_for;
    let mut backoff = Duration::from_millis(1);
    loop {
        match configure(&conn, opts, true) {
            Ok(()) => return Ok(conn),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(storage_in(
                    format_args!("sqlite file {}", path.display()),
                    e,
                ))
            }
        }
    }
}

/// Flags for connections that only read: the file must exist already.
fn read_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI
}

impl SqliteStorage {
    /// Opens (creating it if missing) and migrates the database file at `path`, with
    /// default options.
    ///
    /// # Errors
    /// [`durable_jobs::Error::Storage`] when the file cannot be opened (kind
    /// [`durable_jobs::StorageErrorKind::Unavailable`]) or is not a SQLite database or is
    /// corrupt (kind [`durable_jobs::StorageErrorKind::Corrupt`]);
    /// [`durable_jobs::Error::SchemaTooNew`] when a newer library wrote it.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::new()).await
    }

    /// Opens and migrates the database file at `path` with `options`.
    ///
    /// # Errors
    /// As [`SqliteStorage::open`], plus [`durable_jobs::Error::InvalidOption`].
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        options.validate()?;
        let path = path.as_ref().to_path_buf();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let (p, o) = (path.clone(), options.clone());
        // Checkpoints run on a thread of their own, not inside the writer's commits (see
        // `checkpoint`).
        let checkpointer = Checkpointer::start(move || open_file(&p, &o, read_flags()))?;
        let (p, o) = (path.clone(), options.clone());
        let mut config = writer_config(&options);
        config.checkpoint = checkpointer.nudger();
        let writer = Writer::start(
            move || {
                let conn = open_file(&p, &o, flags)?;
                checkpoint::install(&conn);
                Ok(conn)
            },
            config,
        )
        .await?;
        let readers = (options.read_connections > 0).then(|| {
            let (p, o) = (path.clone(), options.clone());
            Arc::new(Readers::new(
                options.read_connections,
                options.busy_retry_for,
                move || {
                    let conn = open_file(&p, &o, read_flags())?;
                    // A reader never writes; make a bug that tries fail loudly.
                    conn.execute_batch("PRAGMA query_only = ON")
                        .map_err(storage)?;
                    Ok(conn)
                },
            ))
        });
        Self::finish_open(writer, Some(checkpointer), readers, options, Some(path)).await
    }

    /// Opens a fresh in-memory database (one connection, gone when the storage drops)
    /// with default options.
    ///
    /// # Errors
    /// [`durable_jobs::Error::Storage`] if SQLite cannot allocate it.
    pub async fn open_in_memory() -> Result<Self> {
        Self::open_in_memory_with(SqliteOptions::new()).await
    }

    /// Opens a fresh in-memory database with `options` (read connections are ignored).
    ///
    /// # Errors
    /// As [`SqliteStorage::open_in_memory`], plus [`durable_jobs::Error::InvalidOption`].
    pub async fn open_in_memory_with(options: SqliteOptions) -> Result<Self> {
        options.validate()?;
        let o = options.clone();
        let writer = Writer::start(
            move || {
                let conn = Connection::open_in_memory().map_err(storage)?;
                configure(&conn, &o, false).map_err(storage)?;
                Ok(conn)
            },
            writer_config(&options),
        )
        .await?;
        Self::finish_open(writer, None, None, options, None).await
    }

    async fn finish_open(
        writer: Writer,
        checkpointer: Option<Checkpointer>,
        readers: Option<Arc<Readers>>,
        options: SqliteOptions,
        path: Option<PathBuf>,
    ) -> Result<Self> {
        let (tx, _) = watch::channel(0u64);
        let wake = Arc::new(tx);
        let (finished, _) = watch::channel(0u64);
        let finished = Arc::new(finished);
        if let Some(clock) = &options.manual_clock {
            let w = Arc::downgrade(&wake);
            clock.on_change(move || {
                if let Some(w) = w.upgrade() {
                    w.send_modify(|n| *n = n.wrapping_add(1));
                }
            });
        }
        let watcher = match (&path, options.watch_interval) {
            (Some(p), Some(every)) => {
                let (p, o) = (p.clone(), options.clone());
                let open = move || open_file(&p, &o, read_flags());
                let wakes = vec![Arc::downgrade(&wake), Arc::downgrade(&finished)];
                Some(Watcher::start(open, every, wakes).await?)
            }
            _ => None,
        };
        let storage = SqliteStorage {
            inner: Arc::new(Inner {
                writer,
                checkpointer,
                readers,
                clock: options.clock,
                wake,
                finished,
                watcher,
                path,
                heal_cursor: AtomicI64::new(0),
            }),
        };
        storage.migrate().await?;
        Ok(storage)
    }

    /// The checkpoint thread's handle, for tests.
    #[cfg(test)]
    pub(crate) fn checkpointer(&self) -> Option<&Checkpointer> {
        self.inner.checkpointer.as_ref()
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The schema version of the open database (see [`crate::SCHEMA_VERSION`]).
    ///
    /// # Errors
    /// [`durable_jobs::Error::Storage`] when the read fails.
    pub async fn schema_version(&self) -> Result<i64> {
        self.read(|c| Ok(migrate::current_version(c)?)).await
    }

    /// Finishes queued writes and closes every connection (checkpointing the WAL into
    /// the file). Calls made afterwards, through any clone, fail with
    /// [`durable_jobs::Error::Shutdown`].
    pub async fn close(&self) {
        if let Some(w) = &self.inner.watcher {
            w.close().await;
        }
        if let Some(r) = &self.inner.readers {
            r.close();
        }
        self.inner.writer.close().await;
        // After the writer: the checkpoint thread runs until the writer's nudger is gone.
        if let Some(c) = &self.inner.checkpointer {
            c.close().await;
        }
    }

    /// Marks a job finished with `status` (completed, failed or cancelled, now) the way a
    /// write from outside the library would: one plain `UPDATE` of its row, which wakes
    /// nobody, its parent included. For tests of the recovery that
    /// [`Storage::release_stale_locks`] makes (a parent left waiting on a finished child)
    /// where no second connection can reach the database, as in memory. Returns false
    /// when there is no such job or `status` is not a finished one.
    ///
    /// # Errors
    /// [`durable_jobs::Error::Storage`] when the write fails.
    pub async fn finish_out_of_band(&self, job: JobId, status: JobStatus) -> Result<bool> {
        if !status.is_finished() {
            return Ok(false);
        }
        let now = micros(self.now_dt());
        self.write(move |c| {
            Ok(c.execute(
                FINISH_OUT_OF_BAND,
                rusqlite::params![status.as_str(), now, job],
            )?)
        })
        .await
        .map(|changed| changed == 1)
    }

    /// Runs `f` on a read connection (or the writer in memory).
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> QResult<R> + Send + 'static,
    {
        match &self.inner.readers {
            Some(r) => r.run(f).await,
            None => self.inner.writer.run(move |c| f(c)).await,
        }
    }

    /// Runs `f` in the writer's transaction; resolves once committed.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> QResult<R> + Send + 'static,
    {
        self.write_in(Lane::Foreground, f).await
    }

    /// [`SqliteStorage::write`] in the writer's foreground or background lane.
    async fn write_in<R, F>(&self, lane: Lane, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> QResult<R> + Send + 'static,
    {
        let out = self.inner.writer.run_in(lane, f).await;
        if out.is_ok() {
            // Any write may be a job's final one; waiters re-read theirs (only those
            // waiting pay for it).
            self.inner.finished.send_modify(|n| *n = n.wrapping_add(1));
        }
        out
    }

    pub(crate) fn now_dt(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub(crate) fn now_us(&self) -> i64 {
        micros(self.inner.clock.now())
    }

    pub(crate) fn wake(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn writer_config(o: &SqliteOptions) -> WriterConfig {
    WriterConfig {
        max_batch: o.max_write_batch,
        busy_retry_for: o.busy_retry_for,
        checkpoint: None,
        background_share: crate::background::ShareRamp::default(),
        idle_after: crate::background::IDLE_AFTER,
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        let file = self.inner.path.is_some();
        Capabilities::new(self.inner.watcher.is_some(), file, file)
    }

    async fn migrate(&self) -> Result<()> {
        let now = self.now_us();
        self.write(move |c| Ok(migrate::migrate(c, now)?)).await
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        // At the resolution times are stored in (whole microseconds): a time read here
        // and written back (a reschedule to now, a wake time of now + d) is stored as
        // read, so it is due at the instant it names rather than a fraction of a
        // microsecond later (stored times are rounded up, and a clock that does not move,
        // as a manual one in tests, would never reach it).
        let us = self.now_us();
        Ok(DateTime::from_timestamp_micros(us).unwrap_or_else(|| self.now_dt()))
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let now = self.now_dt();
        let out = self
            .write(move |c| crate::enqueue::insert_job(c, &job, now))
            .await?;
        self.wake();
        Ok(out)
    }

    async fn enqueue_with_children(
        &self,
        parent: NewJob,
        children: Vec<NewJob>,
    ) -> Result<(Enqueued, Vec<Enqueued>)> {
        let now = self.now_dt();
        // One write closure is one transaction on the writer thread.
        let out = self
            .write(move |c| {
                let parent = crate::enqueue::insert_job(c, &parent, now)?;
                // A deduplicated parent already has its children: nothing new is added.
                let children = if parent.created { children } else { Vec::new() };
                let children = children
                    .into_iter()
                    .map(|mut child| {
                        child.parent_id = Some(parent.id);
                        crate::enqueue::insert_job(c, &child, now)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((parent, children))
            })
            .await?;
        self.wake();
        Ok(out)
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now_dt();
        let out = self
            .write(move |c| {
                jobs.iter()
                    .map(|j| crate::enqueue::insert_job(c, j, now))
                    .collect()
            })
            .await?;
        self.wake();
        Ok(out)
    }

    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        let clock = Arc::clone(&self.inner.clock);
        // The time is read on the writer thread, inside the transaction, so a claim never
        // uses a time older than a commit that came before it.
        self.write(move |c| query::dequeue(c, &params, clock.now(), new_lease_token()))
            .await
    }

    async fn complete(&self, lease: &Lease, result: Value) -> Result<()> {
        let now = self.now_us();
        let batch = query::PackedCompletions::new(vec![Completion {
            lease: lease.clone(),
            result,
        }])?;
        let (mut out, woke) = self
            .write(move |conn| query::complete_batch(conn, &batch, now))
            .await?;
        if woke {
            self.wake();
        }
        out.pop().unwrap_or_else(|| {
            Err(crate::error::error(
                durable_jobs::StorageErrorKind::Other,
                "sqlite: a completion returned no outcome",
            ))
        })
    }

    async fn complete_many(&self, items: Vec<Completion>) -> Result<Vec<Result<()>>> {
        let now = self.now_us();
        // Results serialized here, on the caller's thread, so the writer (which every
        // write of the process waits on) only runs the statements. One transaction for the batch;
        // each item's fence is checked on its own and a lost lease changes nothing for
        // that item only.
        let batch = query::PackedCompletions::new(items)?;
        let (out, woke) = self
            .write(move |conn| query::complete_batch(conn, &batch, now))
            .await?;
        if woke {
            self.wake();
        }
        Ok(out)
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<()> {
        let now = self.now_us();
        let retry = failure.retry_in.is_some();
        let lease = lease.clone();
        let woke = self
            .write(move |c| query::fail(c, &lease, &failure, now))
            .await?;
        if retry || woke {
            self.wake();
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let now = self.now_us();
        let lease = lease.clone();
        self.write(move |c| query::release(c, &lease, now)).await?;
        self.wake();
        Ok(())
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        let now = self.now_us();
        let lease = lease.clone();
        self.write(move |c| query::snooze(c, &lease, delay, now))
            .await
    }

    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()> {
        let now = self.now_us();
        let lease = lease.clone();
        self.write(move |c| query::set_progress(c, &lease, &progress, now))
            .await
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let now = self.now_us();
        let lease = lease.clone();
        self.write(move |c| query::heartbeat(c, &lease, extend, now))
            .await
    }

    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        let now = self.now_us();
        let leases = leases.to_vec();
        // One transaction (one commit) for the whole set; a lease no longer held fails
        // its own item only.
        self.write(move |conn| {
            let mut out = Vec::with_capacity(leases.len());
            for lease in &leases {
                out.push(match query::heartbeat(conn, lease, extend, now) {
                    Ok(renewed) => Ok(renewed),
                    Err(crate::error::QueryError::Other(e)) if e.is_lease_lost() => Err(e),
                    Err(e) => return Err(e),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn release_stale_locks(&self) -> Result<StaleLocks> {
        let now = self.now_us();
        let after = self.inner.heal_cursor.load(Ordering::Relaxed);
        let (swept, next) = self
            .write(move |c| query::release_stale_locks(c, now, after))
            .await?;
        self.inner.heal_cursor.store(next, Ordering::Relaxed);
        if swept.touched() > 0 {
            self.wake();
        }
        Ok(swept)
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()> {
        let now = self.now_us();
        let lease = lease.clone();
        self.write(move |c| query::save_checkpoint(c, &lease, &checkpoint, now))
            .await
    }

    async fn list_checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>> {
        self.read(move |c| query::checkpoints(c, job_id)).await
    }

    async fn list_checkpoints_many(&self, job_ids: Vec<JobId>) -> Result<Vec<Vec<Checkpoint>>> {
        // One hop to a reader (or the writer's thread) for the whole batch instead of
        // one per job; each job's list is one statement, as `list_checkpoints` reads it.
        self.read(move |c| {
            job_ids
                .iter()
                .map(|&id| query::checkpoints(c, id))
                .collect()
        })
        .await
    }

    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64> {
        self.write(move |c| query::delete_checkpoints(c, job_id))
            .await
    }

    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>> {
        self.read(move |c| query::get_job(c, job_id)).await
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        filter.validate()?;
        self.read(move |c| filter::list_jobs(c, &filter)).await
    }

    async fn counts(&self) -> Result<Vec<QueueCount>> {
        self.read(query::counts).await
    }

    async fn finished_counts(&self, since: DateTime<Utc>) -> Result<Vec<QueueCount>> {
        // Rounded up: a job stored at whole microseconds finished at or after `since`
        // exactly when its stored time is at or after the rounded-up bound.
        let since = workflow::micros_ceil(since);
        self.read(move |c| query::finished_counts(c, since)).await
    }

    async fn list_attempts(&self, job_id: JobId) -> Result<Vec<AttemptRecord>> {
        self.read(move |c| query::list_attempts(c, job_id)).await
    }

    async fn cancel(&self, job_id: JobId) -> Result<bool> {
        let now = self.now_us();
        let cancelled = self
            .write(move |c| workflow::cancel(c, job_id, now))
            .await?;
        if cancelled {
            // The cancelled job's parent may have been woken.
            self.wake();
        }
        Ok(cancelled)
    }

    fn wakeups(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.wake.subscribe())
    }

    /// Bumped by this storage's writes and, through the commit watcher, by every other
    /// connection's commits to the file, from any process.
    fn finishes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.finished.subscribe())
    }

    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()> {
        let now = self.now_us();
        let lease = lease.clone();
        // Rounded up: times are stored in whole microseconds, and a job must never become
        // due before its wake time (it would find itself early and suspend again).
        let at = wake_at.map(workflow::micros_ceil);
        self.write(move |c| workflow::suspend(c, &lease, at, now))
            .await?;
        // It may be due already (a wake request, or a wake time in the past).
        self.wake();
        Ok(())
    }

    async fn spawn_children(&self, params: SpawnChildrenParams<'_>) -> Result<Vec<JobId>> {
        let now = self.now_dt();
        let SpawnChildrenParams {
            lease,
            key,
            name,
            jobs,
        } = params;
        let (lease, key, name) = (lease.clone(), key.to_string(), name.to_string());
        let ids = self
            .write(move |c| workflow::spawn_children(c, &lease, &key, &name, jobs, now))
            .await?;
        self.wake();
        Ok(ids)
    }

    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        let now = self.now_us();
        let name = name.to_string();
        if self
            .write(move |c| workflow::send_signal(c, job_id, &name, &payload, now))
            .await?
        {
            self.wake();
        }
        Ok(())
    }

    async fn take_signals(&self, params: TakeSignalsParams<'_>) -> Result<Vec<Value>> {
        let TakeSignalsParams {
            lease,
            name,
            limit,
            key,
        } = params;
        let (lease, name, key) = (lease.clone(), name.to_string(), key.to_string());
        let now = self.now_us();
        self.write(move |c| workflow::take_signals(c, &lease, &name, limit, &key, now))
            .await
    }

    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        let name = name.to_string();
        self.read(move |c| workflow::peek_signal(c, job_id, &name))
            .await
    }

    // ----- Workflows: group-committed checkpoints -----

    async fn checkpoint_many(&self, items: Vec<CheckpointWrite>) -> Result<Vec<Result<()>>> {
        let now = self.now_us();
        // One transaction (one commit) on the writer thread for the whole batch; a lease
        // no longer held fails its own items only.
        self.write(move |conn| {
            let mut out = Vec::with_capacity(items.len());
            for item in &items {
                out.push(
                    match query::save_checkpoint(conn, &item.lease, &item.checkpoint, now) {
                        Ok(()) => Ok(()),
                        Err(crate::error::QueryError::Other(e)) if e.is_lease_lost() => Err(e),
                        Err(e) => return Err(e),
                    },
                );
            }
            Ok(out)
        })
        .await
    }

    async fn delete_job(&self, job_id: JobId) -> Result<bool> {
        self.write(move |c| workflow::delete_job(c, job_id)).await
    }

    async fn delete_jobs(&self, filter: JobFilter) -> Result<DeletedBatch> {
        filter.validate()?;
        self.write(move |c| filter::delete_jobs(c, &filter)).await
    }

    async fn upsert_schedule(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| operations::upsert_schedule(c, &name, &definition, now))
            .await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.read(operations::schedules).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let (name, now) = (name.to_string(), self.now_us());
        self.write(move |c| operations::set_schedule_paused(c, &name, paused, now))
            .await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| operations::delete_schedule(c, &name))
            .await
    }

    async fn advance_schedule(
        &self,
        params: AdvanceScheduleParams<'_>,
    ) -> Result<Option<Vec<JobId>>> {
        let AdvanceScheduleParams {
            name,
            from,
            to,
            jobs,
        } = params;
        let (name, now) = (name.to_string(), self.now_dt());
        let out = self
            .write(move |c| operations::advance_schedule(c, &name, from, to, &jobs, now))
            .await?;
        if out.as_ref().is_some_and(|ids| !ids.is_empty()) {
            self.wake();
        }
        Ok(out)
    }

    async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64> {
        let (ids, now) = (ids.to_vec(), self.now_us());
        let n = self
            .write(move |c| operations::retry_jobs(c, &ids, keep_checkpoints, now))
            .await?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    async fn reschedule_job(&self, job_id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        let now = self.now_us();
        // Rounded up, as for wake times: the job never becomes due before `run_at`.
        let at = workflow::micros_ceil(run_at);
        let moved = self
            .write(move |c| operations::reschedule_job(c, job_id, at, now))
            .await?;
        if moved {
            self.wake();
        }
        Ok(moved)
    }

    async fn finish_jobs(&self, ids: &[JobId], outcome: ManualOutcome) -> Result<u64> {
        let (ids, now) = (ids.to_vec(), self.now_us());
        let (n, woke) = self
            .write(move |c| operations::finish_jobs(c, &ids, &outcome, now))
            .await?;
        if woke {
            self.wake();
        }
        Ok(n)
    }

    async fn purge_finished(&self, older_than: DateTime<Utc>) -> Result<u64> {
        let cutoff = query::micros(older_than);
        self.write(move |c| operations::purge_finished(c, cutoff))
            .await
    }

    async fn purge_retained(&self, batch: RetentionBatch) -> Result<RetentionPurged> {
        // In steps of the writer's background lane, so claims and completions keep
        // most of the writer while the purge runs (see `background`).
        let mut out = RetentionPurged::default();
        let mut left = batch.limit;
        while left > 0 {
            let step = RetentionBatch {
                limit: left.min(retention::STEP),
                ..batch
            };
            let done = match self
                .write_in(Lane::Background, move |c| {
                    retention::purge_retained(c, step)
                })
                .await
            {
                Ok(done) => done,
                Err(e) if out.roots == 0 => return Err(e),
                // Earlier steps are committed: report what they deleted. The short count
                // ends the pass; the next one meets the error again if it lasts.
                Err(e) => {
                    tracing::warn!(error = %e, "retention step failed after deleting some jobs");
                    break;
                }
            };
            out.roots += done.roots;
            out.completed += done.completed;
            out.failed += done.failed;
            out.cancelled += done.cancelled;
            if done.roots < step.limit as u64 {
                break;
            }
            left -= step.limit;
        }
        Ok(out)
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let (queue, now) = (queue.to_string(), self.now_us());
        self.write(move |c| operations::set_queue_paused(c, &queue, paused, now))
            .await?;
        if !paused {
            self.wake();
        }
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        self.read(operations::paused_queues).await
    }

    async fn set_key_limit(&self, key: &str, max_running: Option<u32>) -> Result<()> {
        let key = key.to_string();
        self.write(move |c| operations::set_key_limit(c, &key, max_running))
            .await?;
        self.wake();
        Ok(())
    }

    async fn key_limits(&self) -> Result<Vec<(String, u32)>> {
        self.read(operations::key_limits).await
    }

    async fn set_queue_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        let queue = queue.to_string();
        self.write(move |c| crate::rate::set_limit(c, &queue, limit))
            .await?;
        self.wake();
        Ok(())
    }

    async fn queue_rate_limits(&self) -> Result<Vec<(String, RateLimit)>> {
        self.read(crate::rate::limits).await
    }

    async fn register_worker(&self, worker: WorkerRecord) -> Result<()> {
        let now = self.now_us();
        self.write(move |c| workers::register_worker(c, &worker, now))
            .await
    }

    async fn touch_worker(&self, name: &str) -> Result<bool> {
        let (name, now) = (name.to_string(), self.now_us());
        self.write(move |c| workers::touch_worker(c, &name, now))
            .await
    }

    async fn deregister_worker(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| workers::deregister_worker(c, &name))
            .await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.read(workers::list_workers).await
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        // Rounded up: a worker stored at whole microseconds was seen before `before`
        // exactly when its time is below the rounded-up bound.
        let before = workflow::micros_ceil(before);
        self.write(move |c| workers::prune_workers(c, before)).await
    }
}
