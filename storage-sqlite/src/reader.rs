//! Read connections beside the writer, so reads go on while a write transaction runs
//! (WAL gives each reader a consistent snapshot of the last commit).
//!
//! Reads block in SQLite, so they run on tokio's blocking pool, each borrowing an idle
//! connection; a semaphore caps how many run (and how many connections exist) at once.

use crate::error::{error, is_busy, QResult, QueryError};
use durable_jobs::{Error, Result, StorageError, StorageErrorKind};
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

type Opener = dyn Fn() -> Result<Connection> + Send + Sync;

/// A small pool of read connections, opened on first use.
pub(crate) struct Readers {
    open: Box<Opener>,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    closed: AtomicBool,
    busy_retry_for: Duration,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Readers {
    pub(crate) fn new(
        size: usize,
        busy_retry_for: Duration,
        open: impl Fn() -> Result<Connection> + Send + Sync + 'static,
    ) -> Self {
        Readers {
            open: Box::new(open),
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            closed: AtomicBool::new(false),
            busy_retry_for,
        }
    }

    /// Runs `f` on a read connection off the async runtime's threads. A busy database
    /// (rare in WAL: only during recovery) is retried with backoff.
    pub(crate) async fn run<R, F>(self: &Arc<Self>, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> QResult<R> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| Error::Shutdown)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let this = Arc::clone(self);
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            error(
                StorageErrorKind::Other,
                "the sqlite backend needs a tokio runtime for reads",
            )
        })?;
        handle
            .spawn_blocking(move || {
                let conn = this.take()?;
                let out = this.retry_busy(&conn, &f);
                this.give_back(conn);
                out
            })
            .await
            .map_err(|e| {
                Error::from(
                    StorageError::new(
                        StorageErrorKind::Other,
                        format!("sqlite read task failed: {e}"),
                    )
                    .with_source(e),
                )
            })?
    }

    fn retry_busy<R>(
        &self,
        conn: &Connection,
        f: &impl Fn(&Connection) -> QResult<R>,
    ) -> Result<R> {
        let deadline = Instant::now() + self.busy_retry_for;
        let mut backoff = Duration::from_millis(2);
        loop {
            match f(conn) {
                Ok(out) => return Ok(out),
                Err(QueryError::Sqlite(e)) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn take(&self) -> Result<Connection> {
        let idle = self.lock().pop();
        match idle {
            Some(c) => Ok(c),
            None => (self.open)(),
        }
    }

    fn give_back(&self, conn: Connection) {
        if !self.closed.load(Ordering::Acquire) {
            self.lock().push(conn);
        }
    }

    /// Closes idle connections; later reads fail with [`Error::Shutdown`].
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // The vector is only pushed and popped; a panic elsewhere cannot leave it invalid.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}
