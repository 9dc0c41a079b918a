//! WAL checkpoints off the writer thread.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that takes the log past 1,000
//! frames, on the connection that committed: here the writer thread, which every write
//! of the process waits on. A checkpoint copies the log's pages back into the database
//! file and syncs both files (`synchronous=NORMAL` syncs at checkpoints rather than at
//! commits), so the writer stalled on that copy and on two syncs every few batches.
//!
//! Instead, the writer connection's WAL hook (which replaces the automatic checkpoint)
//! notes the log's size after each commit, and past [`CHECKPOINT_AFTER`] frames the
//! writer nudges a thread of its own that runs a `PASSIVE` checkpoint on its own
//! connection. WAL mode lets a checkpoint run beside a writer; a passive one never waits
//! for a lock. It copies what is committed, and again while the writer appended more
//! meanwhile, until the log is copied in full, so the writer's next transaction starts
//! the log over from its beginning (as after the automatic checkpoint). Durability is
//! unchanged: commits are made and synced as before, and the checkpoint syncs as
//! SQLite's own does.
//!
//! Should that thread fall behind or fail, the writer checkpoints itself once the log
//! passes [`CHECKPOINT_ON_WRITER_AFTER`] frames, as SQLite would have, so the log stays
//! bounded.

use rusqlite::hooks::{CheckpointMode, Wal};
use rusqlite::Connection;
use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// Log frames (pages) after which the writer nudges the checkpoint thread: SQLite's own
/// automatic checkpoint threshold.
pub(crate) const CHECKPOINT_AFTER: i32 = 1000;

/// Log frames after which the writer checkpoints on its own thread: the checkpoint
/// thread is not keeping up (or could not open its connection).
pub(crate) const CHECKPOINT_ON_WRITER_AFTER: i32 = 10 * CHECKPOINT_AFTER;

/// Passive checkpoints in a row before the thread waits for the next nudge, when the
/// writer keeps appending while it copies.
const CATCH_UP_ROUNDS: usize = 8;

thread_local! {
    /// Frames in the log after the last commit on this thread's connection, set by
    /// [`on_commit`]. The writer thread owns exactly one connection, so a thread-local
    /// is that connection's value (a hook is a plain function and carries no state).
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// Replaces SQLite's automatic checkpoint on the writer connection with [`on_commit`].
pub(crate) fn install(conn: &Connection) {
    conn.wal_hook(Some(on_commit));
}

/// The frames in the log after this thread's connection last committed.
pub(crate) fn frames_after_commit() -> i32 {
    WAL_FRAMES.with(Cell::get)
}

/// The WAL hook: runs after every commit on the writer connection.
fn on_commit(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    if frames >= CHECKPOINT_ON_WRITER_AFTER {
        // The commit has happened whatever this returns; an error returned here would be
        // reported as the COMMIT's, so it is logged instead.
        if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
            tracing::warn!(error = %e, frames, "sqlite checkpoint on the writer failed");
        }
    }
    Ok(())
}

/// Handle to the checkpoint thread. The thread ends once this handle and every nudger
/// (the writer's) are gone.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    nudge: Mutex<Option<mpsc::SyncSender<()>>>,
    /// Resolves once the thread has closed its connection.
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
    /// Counts the thread's catch-ups (each a run of checkpoints after a nudge); only
    /// tests read it, to wait for one instead of sleeping.
    #[cfg_attr(not(test), allow(dead_code))]
    rounds: Arc<watch::Sender<u64>>,
}

impl Checkpointer {
    /// Starts the thread. It opens its connection with `open` at its first nudge (the
    /// writer creates the file first).
    pub(crate) fn start(
        open: impl FnOnce() -> durable_jobs::Result<Connection> + Send + 'static,
    ) -> durable_jobs::Result<Checkpointer> {
        // One pending nudge is enough: the thread checkpoints whatever the log holds.
        let (nudge, rx) = mpsc::sync_channel::<()>(1);
        let (stopped_tx, stopped) = oneshot::channel();
        let rounds = Arc::new(watch::channel(0u64).0);
        let counter = Arc::clone(&rounds);
        std::thread::Builder::new()
            .name("durable-jobs-sqlite-checkpoint".into())
            .spawn(move || {
                run(open, &rx, &counter);
                let _ = stopped_tx.send(());
            })
            .map_err(|e| {
                durable_jobs::Error::from(
                    durable_jobs::StorageError::new(
                        durable_jobs::StorageErrorKind::Exhausted,
                        format!("cannot start the sqlite checkpoint thread: {e}"),
                    )
                    .with_source(e),
                )
            })?;
        Ok(Checkpointer {
            nudge: Mutex::new(Some(nudge)),
            stopped: Mutex::new(Some(stopped)),
            rounds,
        })
    }

    /// The number of catch-ups the thread has finished, for tests to wait on.
    #[cfg(test)]
    pub(crate) fn rounds(&self) -> watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    /// A sender the writer nudges the thread with (`None` once closed).
    pub(crate) fn nudger(&self) -> Option<mpsc::SyncSender<()>> {
        lock(&self.nudge).clone()
    }

    /// Stops the thread and waits until its connection is closed. Call it after the
    /// writer has stopped: the thread runs until the writer's nudger is gone too.
    pub(crate) async fn close(&self) {
        lock(&self.nudge).take();
        let stopped = lock(&self.stopped).take();
        if let Some(rx) = stopped {
            let _ = rx.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only `clone` and `take` run under these locks; a poisoned one still holds a valid
    // Option.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The thread's loop: waits for a nudge, checkpoints, until every sender is gone.
fn run(
    open: impl FnOnce() -> durable_jobs::Result<Connection>,
    rx: &mpsc::Receiver<()>,
    rounds: &watch::Sender<u64>,
) {
    if rx.recv().is_err() {
        return;
    }
    let conn = match open() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sqlite checkpoint thread could not open the file; the writer checkpoints instead");
            return;
        }
    };
    loop {
        catch_up(&conn);
        rounds.send_modify(|n| *n += 1);
        if rx.recv().is_err() {
            break;
        }
    }
}

/// Passive checkpoints until the log is copied in full (or [`CATCH_UP_ROUNDS`] ran).
fn catch_up(conn: &Connection) {
    for _ in 0..CATCH_UP_ROUNDS {
        let done = conn
            .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))));
        match done {
            // Every frame of the log is in the database file (or there is no log).
            Ok((log, copied)) if copied >= log => return,
            Ok(_) => {}
            Err(e) => {
                // A failed checkpoint loses nothing: the log still holds every commit,
                // and the writer checkpoints itself if the log keeps growing.
                tracing::debug!(error = %e, "sqlite checkpoint failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStorage;
    use durable_jobs::{NewJob, Storage};

    /// `(frames in the log, frames copied into the database file)`, without copying any.
    fn log_state(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(NOOP)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .expect("wal state")
    }

    /// A commit that takes the log past the threshold gets it copied by the checkpoint
    /// thread in full, and the writer's next commit starts the log over.
    #[tokio::test]
    async fn the_checkpoint_thread_copies_the_log_and_the_writer_starts_it_over() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("checkpoint.db");
        let s = SqliteStorage::open(&path).await.expect("open");
        let mut rounds = s
            .checkpointer()
            .expect("a file has a checkpointer")
            .rounds();
        // Each payload takes a page of its own: one commit of well over 1,000 frames.
        let big = "x".repeat(4096);
        let jobs = (0..1200)
            .map(|_| NewJob::new("t", serde_json::json!(big)))
            .collect();
        s.enqueue_many(jobs).await.expect("enqueue");
        rounds.wait_for(|n| *n >= 1).await.expect("a catch-up ran");
        let conn = Connection::open(&path).expect("open");
        let (log, copied) = log_state(&conn);
        assert!(log > i64::from(CHECKPOINT_AFTER), "{log}");
        assert_eq!(copied, log, "the whole log is in the database file");
        s.enqueue(NewJob::new("t", serde_json::json!(1)))
            .await
            .expect("enqueue");
        let (log, _) = log_state(&conn);
        assert!(
            log < i64::from(CHECKPOINT_AFTER),
            "the log started over: {log}"
        );
        drop(conn);
        s.close().await;
    }
}
