//! The writer thread: the one connection that writes, fed by a channel.
//!
//! SQLite allows one writer at a time per file, so every write of this process goes
//! through one dedicated OS thread (never a runtime thread: SQLite calls block). The
//! thread takes a command, then whatever else is already queued (up to
//! `max_write_batch`), and runs them all in one `BEGIN IMMEDIATE` transaction, each in
//! its own savepoint so one command's error undoes only its own changes. Replies are sent
//! only after `COMMIT` succeeds: an acknowledged write is committed. Coalescing turns
//! many small writes (claims, completions from many workers) into few commits.
//!
//! `SQLITE_BUSY` (another process holds the write lock past the busy timeout) is retried
//! here with backoff until `busy_retry_for` runs out, so callers never see it.

use crate::error::{classify, error, is_busy, QResult};
use durable_jobs::{Error, Result, StorageError, StorageErrorKind};
use rusqlite::{ffi, Connection};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One queued write, run inside the writer's transaction.
trait Command: Send {
    /// Runs against the connection, inside a transaction, and keeps the outcome.
    fn run(&mut self, conn: &Connection);
    /// True when `run` returned an error (its changes must be undone).
    fn failed(&self) -> bool;
    /// The kind of the error `run` returned, if it was a storage error.
    fn error_kind(&self) -> Option<StorageErrorKind>;
    /// Sends the outcome: `Ok` once committed, or the reason the transaction failed.
    fn finish(self: Box<Self>, txn: std::result::Result<(), &TxnFailure>);
}

/// Why a batch's transaction failed, given to every command in it (each gets its own
/// [`Error`], with the same kind, message and, when SQLite reported it, an equal copy of
/// the driver's error as its source).
#[derive(Debug, Clone)]
struct TxnFailure {
    kind: StorageErrorKind,
    message: String,
    sqlite: Option<(ffi::Error, Option<String>)>,
}

impl TxnFailure {
    /// A failure SQLite reported.
    fn sqlite(err: &rusqlite::Error) -> Self {
        let (kind, message) = classify(err);
        let sqlite = match err {
            rusqlite::Error::SqliteFailure(e, msg) => Some((*e, msg.clone())),
            _ => None,
        };
        TxnFailure {
            kind,
            message,
            sqlite,
        }
    }

    fn other(kind: StorageErrorKind, message: impl Into<String>) -> Self {
        TxnFailure {
            kind,
            message: message.into(),
            sqlite: None,
        }
    }

    /// The failure as one caller's error.
    fn to_error(&self) -> Error {
        let e = StorageError::new(self.kind, self.message.clone());
        match &self.sqlite {
            Some((code, msg)) => e
                .with_source(rusqlite::Error::SqliteFailure(*code, msg.clone()))
                .into(),
            None => e.into(),
        }
    }
}

struct Cmd<R, F> {
    f: Option<F>,
    out: Option<Result<R>>,
    reply: oneshot::Sender<Result<R>>,
}

impl<R, F> Command for Cmd<R, F>
where
    R: Send,
    F: FnOnce(&Connection) -> QResult<R> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(f) = self.f.take() {
            // A panic here would kill the writer thread and with it every later write;
            // turn it into this command's error instead.
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn).map_err(Error::from)))
                .unwrap_or_else(|_| {
                    Err(error(
                        StorageErrorKind::Other,
                        "sqlite writer: a storage command panicked",
                    ))
                });
            self.out = Some(out);
        }
    }

    fn failed(&self) -> bool {
        matches!(self.out, Some(Err(_)))
    }

    fn error_kind(&self) -> Option<StorageErrorKind> {
        match &self.out {
            Some(Err(e)) => e.storage_kind(),
            _ => None,
        }
    }

    fn finish(self: Box<Self>, txn: std::result::Result<(), &TxnFailure>) {
        let out = match (self.out, txn) {
            // A command's own error (say LeaseLost) stands: its savepoint was undone.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) | (None, Err(e)) => Err(e.to_error()),
            (None, Ok(())) => Err(error(
                StorageErrorKind::Other,
                "sqlite writer: command did not run",
            )),
        };
        // The caller may have stopped waiting (its future was dropped); nothing to do.
        let _ = self.reply.send(out);
    }
}

enum Msg {
    Run(Box<dyn Command>),
    Close(oneshot::Sender<()>),
}

/// Settings the writer thread needs.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    pub max_batch: usize,
    pub busy_retry_for: Duration,
    /// Nudges the checkpoint thread once a commit leaves the log past
    /// [`crate::checkpoint::CHECKPOINT_AFTER`] frames (`None`: no log, in memory).
    pub checkpoint: Option<mpsc::SyncSender<()>>,
}

/// A handle to the writer thread. Dropping every handle stops the thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
}

impl Writer {
    /// Starts the thread, opening its connection there with `open`.
    pub(crate) async fn start(
        open: impl FnOnce() -> Result<Connection> + Send + 'static,
        config: WriterConfig,
    ) -> Result<Writer> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        std::thread::Builder::new()
            .name("durable-jobs-sqlite-writer".into())
            .spawn(move || match open() {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    run_loop(conn, rx, config);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| {
                Error::from(
                    StorageError::new(
                        StorageErrorKind::Exhausted,
                        format!("cannot start the sqlite writer thread: {e}"),
                    )
                    .with_source(e),
                )
            })?;
        ready_rx.await.map_err(|_| {
            error(
                StorageErrorKind::Other,
                "the sqlite writer thread stopped while opening",
            )
        })??;
        Ok(Writer { tx })
    }

    /// Runs `f` on the write connection inside a write transaction; resolves after commit.
    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> QResult<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd {
            f: Some(f),
            out: None,
            reply,
        };
        self.tx
            .send(Msg::Run(Box::new(cmd)))
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Finishes queued writes, closes the connection and stops the thread.
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn run_loop(conn: Connection, rx: mpsc::Receiver<Msg>, config: WriterConfig) {
    let mut close: Option<oneshot::Sender<()>> = None;
    while let Ok(first) = rx.recv() {
        let mut batch: Vec<Box<dyn Command>> = Vec::new();
        match first {
            Msg::Run(c) => batch.push(c),
            Msg::Close(t) => close = Some(t),
        }
        while close.is_none() && batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(Msg::Run(c)) => batch.push(c),
                Ok(Msg::Close(t)) => close = Some(t),
                Err(_) => break,
            }
        }
        if !batch.is_empty() && run_batch(&conn, batch, config.busy_retry_for) {
            if let Some(nudge) = &config.checkpoint {
                if crate::checkpoint::frames_after_commit() >= crate::checkpoint::CHECKPOINT_AFTER {
                    // Full means a nudge is pending already: the thread will see this log.
                    let _ = nudge.try_send(());
                }
            }
        }
        if close.is_some() {
            break;
        }
    }
    // Closing the last connection checkpoints the WAL into the main file. The nudger
    // goes first: the checkpoint thread ends once it is gone (see `Checkpointer::close`).
    drop(config.checkpoint);
    drop(conn);
    drop(rx);
    if let Some(t) = close {
        let _ = t.send(());
    }
}

/// Runs `sql` (BEGIN or COMMIT), retrying while the database is busy.
fn exec_retrying_busy(
    conn: &Connection,
    sql: &str,
    retry_for: Duration,
) -> std::result::Result<(), TxnFailure> {
    let deadline = Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(2);
    loop {
        match exec(conn, sql) {
            Ok(()) => return Ok(()),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                tracing::debug!(%sql, "sqlite busy; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(250));
            }
            Err(e) if is_busy(&e) => {
                let mut f = TxnFailure::sqlite(&e);
                f.message = format!(
                    "sqlite: the database stayed locked by another connection for over \
                     {retry_for:?} ({e})"
                );
                return Err(f);
            }
            Err(e) => return Err(TxnFailure::sqlite(&e)),
        }
    }
}

/// Runs one batch in one transaction and replies to each command. True when it
/// committed.
fn run_batch(conn: &Connection, mut batch: Vec<Box<dyn Command>>, retry_for: Duration) -> bool {
    let fail_all = |batch: Vec<Box<dyn Command>>, why: TxnFailure| {
        for c in batch {
            c.finish(Err(&why));
        }
        false
    };
    if let Err(e) = exec_retrying_busy(conn, "BEGIN IMMEDIATE", retry_for) {
        return fail_all(batch, e);
    }
    // Savepoints only matter when commands share the transaction.
    let shared = batch.len() > 1;
    for cmd in batch.iter_mut() {
        if shared {
            if let Err(e) = exec(conn, "SAVEPOINT cmd") {
                rollback(conn);
                return fail_all(batch, TxnFailure::sqlite(&e));
            }
        }
        cmd.run(conn);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk full): nothing of
            // this batch was kept. The others fail with the kind of the error that did
            // it, so a transient cause is retried.
            let kind = cmd.error_kind().unwrap_or(StorageErrorKind::Other);
            return fail_all(
                batch,
                TxnFailure::other(
                    kind,
                    "sqlite: the transaction was rolled back by an error in the batch",
                ),
            );
        }
        if shared {
            let undo = if cmd.failed() {
                exec(conn, "ROLLBACK TO cmd")
            } else {
                Ok(())
            };
            if let Err(e) = undo.and_then(|()| exec(conn, "RELEASE cmd")) {
                rollback(conn);
                return fail_all(batch, TxnFailure::sqlite(&e));
            }
        }
    }
    let single_failed = !shared && batch.iter().all(|c| c.failed());
    let end = if single_failed {
        // The only command failed: undo it rather than commit a partial change.
        rollback(conn);
        Ok(())
    } else {
        exec_retrying_busy(conn, "COMMIT", retry_for).inspect_err(|_| rollback(conn))
    };
    let committed = end.is_ok() && !single_failed;
    for c in batch {
        c.finish(end.as_ref().map(|_| ()));
    }
    committed
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = exec(conn, "ROLLBACK") {
            tracing::warn!(error = %e, "sqlite rollback failed");
        }
    }
}

/// Runs one parameterless statement through the statement cache (these run per batch and
/// per command, so re-parsing them each time would show in throughput).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}
