//! Wake-ups from other processes: a thread that notices commits made by other
//! connections to the same file and bumps the storage's wake counter.
//!
//! SQLite has no NOTIFY. `PRAGMA data_version` on one connection changes whenever another
//! connection (in any process) has committed to the file since it was last asked; it is
//! answered from shared memory without touching the tables, so asking it every few
//! milliseconds costs next to nothing. Workers woken this way claim at once instead of
//! waiting for their poll interval. Commits of this process's own writer also count
//! (SQLite cannot tell them apart); that only makes an idle worker look once more.

use crate::error::storage;
use durable_jobs::Result;
use rusqlite::Connection;
use std::sync::{mpsc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Handle to the watcher thread; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct Watcher {
    /// Dropping the sender ends the thread's wait at once.
    stop: Mutex<Option<mpsc::Sender<()>>>,
    /// Resolves once the thread has closed its connection.
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Watcher {
    /// Starts a thread that opens its own read connection with `open` (off the async
    /// runtime) and checks it every `every`, bumping every counter in `wakes` (the
    /// workers' wake-ups and the waiters' finishes) on a change. Resolves once the thread has read its first
    /// `data_version`: a commit made after this returns is always noticed (before, a
    /// commit racing the thread's start could be taken for the baseline and its wake
    /// lost).
    pub(crate) async fn start(
        open: impl FnOnce() -> Result<Connection> + Send + 'static,
        every: Duration,
        wakes: Vec<Weak<watch::Sender<u64>>>,
    ) -> Result<Watcher> {
        let (stop, stop_rx) = mpsc::channel::<()>();
        let (stopped_tx, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("durable-jobs-sqlite-watch".into())
            .spawn(move || {
                let opened = open().and_then(|c| {
                    let v = data_version(&c).map_err(storage)?;
                    Ok((c, v))
                });
                let (conn, mut last) = match opened {
                    Ok(x) => {
                        let _ = ready_tx.send(());
                        x
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sqlite watch thread could not start; workers fall back to polling");
                        return;
                    }
                };
                // Waits `every` between checks; a stop (or a dropped handle) ends it.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                    // The storage is gone: nothing left to wake.
                    let Some(live) = wakes
                        .iter()
                        .map(Weak::upgrade)
                        .collect::<Option<Vec<_>>>()
                    else {
                        break;
                    };
                    match data_version(&conn) {
                        Ok(v) if v != last => {
                            last = v;
                            for wake in live {
                                wake.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        }
                        Ok(_) => {}
                        // A busy or failing read only delays a wake-up; the workers'
                        // poll interval still finds the jobs.
                        Err(e) => tracing::debug!(error = %e, "sqlite data_version failed"),
                    }
                }
                drop(conn);
                let _ = stopped_tx.send(());
            })
            .map_err(|e| {
                durable_jobs::Error::from(
                    durable_jobs::StorageError::new(
                        durable_jobs::StorageErrorKind::Exhausted,
                        format!("cannot start the sqlite watch thread: {e}"),
                    )
                    .with_source(e),
                )
            })?;
        // A thread that could not open its connection drops `ready_tx` (and has logged
        // why); the storage still works, by polling.
        let _ = ready_rx.await;
        Ok(Watcher {
            stop: Mutex::new(Some(stop)),
            stopped: Mutex::new(Some(stopped)),
        })
    }

    /// Stops the thread and waits until its connection is closed.
    pub(crate) async fn close(&self) {
        lock(&self.stop).take();
        let stopped = lock(&self.stopped).take();
        if let Some(rx) = stopped {
            let _ = rx.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only `take` runs under these locks; a poisoned one still holds a valid Option.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}
