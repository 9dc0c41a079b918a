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
//! Background work (the retention purge) comes through a second lane: each command runs
//! alone in its own transaction, when the writer is idle or within a share of its time
//! (see [`crate::background`]), so claims and completions never wait for a purge's
//! commit nor queue behind one purge step after another.
//!
//! `SQLITE_BUSY` (another process holds the write lock past the busy timeout) is retried
//! here with backoff until `busy_retry_for` runs out, so callers never see it.

use crate::background::BackgroundShare;
use crate::error::{classify, error, is_busy, QResult};
use durable_jobs::{Error, Result, StorageError, StorageErrorKind};
use rusqlite::{ffi, Connection};
use std::collections::VecDeque;
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
    /// A foreground write: batched with the others queued, run as soon as it can.
    Run(Box<dyn Command>),
    /// A background write: run alone, within its share of the writer (see
    /// [`crate::background`]).
    Background(Box<dyn Command>),
    Close(oneshot::Sender<()>),
}

/// Which of the writer's lanes a write goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Claims, completions, enqueues: batched, run as soon as they can.
    Foreground,
    /// Retention: alone, within its share of the writer (see [`crate::background`]).
    Background,
}

/// Settings the writer thread needs.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    pub max_batch: usize,
    pub busy_retry_for: Duration,
    /// Nudges the checkpoint thread once a commit leaves the log past
    /// [`crate::checkpoint::CHECKPOINT_AFTER`] frames (`None`: no log, in memory).
    pub checkpoint: Option<mpsc::SyncSender<()>>,
    /// The share of the writer background commands get while foreground writes wait.
    pub background_share: crate::background::ShareRamp,
    /// How long without a foreground write before background runs back to back.
    pub idle_after: Duration,
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
        self.run_in(Lane::Foreground, f).await
    }

    /// [`Writer::run`] in `lane`. In [`Lane::Background`], `f` runs alone in its own
    /// transaction, when the writer is idle or within its share of the writer's time
    /// (see [`crate::background`]); keep it short (a millisecond or so), since foreground
    /// writes that arrive while it runs wait for it.
    pub(crate) async fn run_in<R, F>(&self, lane: Lane, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> QResult<R> + Send + 'static,
    {
        self.submit(lane, f)?.await.map_err(|_| Error::Shutdown)?
    }

    /// Queues `f` in `lane` at once; the receiver gets its outcome after commit.
    fn submit<R, F>(&self, lane: Lane, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> QResult<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let cmd: Box<dyn Command> = Box::new(Cmd {
            f: Some(f),
            out: None,
            reply,
        });
        let msg = match lane {
            Lane::Foreground => Msg::Run(cmd),
            Lane::Background => Msg::Background(cmd),
        };
        self.tx.send(msg).map_err(|_| Error::Shutdown)?;
        Ok(rx)
    }

    /// Finishes queued writes, closes the connection and stops the thread.
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// What the loop holds between turns: the foreground batch being gathered, the
/// background commands waiting for their share, and whether the writer is idle.
struct Pending {
    batch: Vec<Box<dyn Command>>,
    background: VecDeque<Box<dyn Command>>,
    close: Option<oneshot::Sender<()>>,
    /// Every handle is gone: no more commands can come.
    disconnected: bool,
    /// No foreground write came for `idle_after`: background runs back to back until
    /// one does.
    idle: bool,
    share: BackgroundShare,
}

impl Pending {
    fn accept(&mut self, msg: Msg) {
        match msg {
            Msg::Run(c) => {
                self.idle = false;
                self.batch.push(c);
            }
            Msg::Background(c) => {
                self.share.arrived(Instant::now());
                self.background.push_back(c);
            }
            Msg::Close(t) => self.close = Some(t),
        }
    }

    /// Takes what is queued, without waiting, until the batch is full.
    fn gather(&mut self, rx: &mpsc::Receiver<Msg>, max_batch: usize) {
        while self.close.is_none() && self.batch.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => self.accept(m),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.disconnected = true;
                    break;
                }
            }
        }
    }

    fn ending(&self) -> bool {
        self.close.is_some() || self.disconnected
    }
}

fn run_loop(conn: Connection, rx: mpsc::Receiver<Msg>, config: WriterConfig) {
    let mut p = Pending {
        batch: Vec::new(),
        background: VecDeque::new(),
        close: None,
        disconnected: false,
        idle: false,
        share: BackgroundShare::new(config.background_share),
    };
    let commit = |batch: Vec<Box<dyn Command>>| {
        if run_batch(&conn, batch, config.busy_retry_for) {
            if let Some(nudge) = &config.checkpoint {
                if crate::checkpoint::frames_after_commit() >= crate::checkpoint::CHECKPOINT_AFTER {
                    // Full means a nudge is pending already: the thread will see this log.
                    let _ = nudge.try_send(());
                }
            }
        }
    };
    loop {
        if p.batch.is_empty() && p.background.is_empty() {
            if p.ending() {
                break;
            }
            match rx.recv() {
                Ok(m) => p.accept(m),
                Err(_) => break,
            }
        }
        p.gather(&rx, config.max_batch);
        let now = Instant::now();
        let background_turn = !p.background.is_empty()
            && (p.ending() || p.share.due(now) || (p.batch.is_empty() && p.idle));
        if background_turn {
            if let Some(cmd) = p.background.pop_front() {
                // Alone in its own transaction: a foreground batch never waits for its
                // commit.
                let start = Instant::now();
                commit(vec![cmd]);
                p.share.ran(start, Instant::now());
            }
            continue;
        }
        if !p.batch.is_empty() {
            commit(std::mem::take(&mut p.batch));
            continue;
        }
        // Only background work, not its turn yet: wait for a foreground write until the
        // share allows it or the writer counts as idle.
        let wait = p.share.wait(now).min(config.idle_after);
        match rx.recv_timeout(wait) {
            Ok(m) => p.accept(m),
            Err(mpsc::RecvTimeoutError::Timeout) => p.idle = true,
            Err(mpsc::RecvTimeoutError::Disconnected) => p.disconnected = true,
        }
    }
    // Closing the last connection checkpoints the WAL into the main file. The nudger
    // goes first: the checkpoint thread ends once it is gone (see `Checkpointer::close`).
    drop(config.checkpoint);
    drop(conn);
    drop(rx);
    if let Some(t) = p.close {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::background::ShareRamp;

    /// A writer on a fresh in-memory database with a `log` table, whose background
    /// share is `share` and idle wait `idle_after`.
    async fn writer(share: f64, idle_after: Duration) -> Writer {
        let config = WriterConfig {
            max_batch: 64,
            busy_retry_for: Duration::from_secs(5),
            checkpoint: None,
            background_share: ShareRamp {
                base: share,
                max: share,
                ramp: Duration::from_secs(10),
            },
            idle_after,
        };
        Writer::start(
            || {
                let conn = Connection::open_in_memory()
                    .map_err(|e| error(StorageErrorKind::Other, e.to_string()))?;
                conn.execute_batch("CREATE TABLE log (seq INTEGER PRIMARY KEY, what TEXT)")
                    .map_err(|e| error(StorageErrorKind::Other, e.to_string()))?;
                Ok(conn)
            },
            config,
        )
        .await
        .expect("writer starts")
    }

    /// A command that appends `what` to the log, after sleeping `hold` (to give a
    /// background command a length the share is computed from).
    fn append(
        what: &'static str,
        hold: Duration,
    ) -> impl FnOnce(&Connection) -> QResult<()> + Send + 'static {
        move |c| {
            std::thread::sleep(hold);
            c.execute("INSERT INTO log (what) VALUES (?1)", [what])?;
            Ok(())
        }
    }

    /// Holds the writer thread until the returned sender sends (or drops), so the
    /// commands queued meanwhile are all waiting when it looks next.
    fn hold_writer(w: &Writer) -> (std::sync::mpsc::Sender<()>, oneshot::Receiver<Result<()>>) {
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let done = w
            .submit(Lane::Foreground, move |_| {
                let _ = gate.recv();
                Ok(())
            })
            .expect("writer open");
        (go, done)
    }

    /// Queues `cmds` (lane, what to log, how long to hold) while the writer is held, so
    /// it finds them all waiting, then releases it and waits for every one.
    async fn queued_together(w: &Writer, cmds: &[(Lane, &'static str, Duration)]) {
        let (go, held) = hold_writer(w);
        let replies: Vec<_> = cmds
            .iter()
            .map(|&(lane, what, hold)| w.submit(lane, append(what, hold)).expect("queued"))
            .collect();
        go.send(()).expect("release");
        held.await.expect("held").expect("held commits");
        for reply in replies {
            reply.await.expect("reply").expect("commits");
        }
    }

    async fn log(w: &Writer) -> Vec<String> {
        w.run(|c| {
            let mut stmt = c.prepare("SELECT what FROM log ORDER BY seq")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
        .expect("log reads")
    }

    #[tokio::test]
    async fn background_waits_its_share_while_foreground_writes_wait() {
        // A share so small that a 20 ms background command owes 20 s: the second one
        // can only run because the writer went idle, after the foreground write.
        let w = writer(0.001, Duration::from_millis(20)).await;
        queued_together(
            &w,
            &[
                (Lane::Background, "b1", Duration::from_millis(20)),
                (Lane::Foreground, "f1", Duration::ZERO),
            ],
        )
        .await;
        queued_together(
            &w,
            &[
                (Lane::Background, "b2", Duration::ZERO),
                (Lane::Foreground, "f2", Duration::ZERO),
                (Lane::Foreground, "f3", Duration::ZERO),
            ],
        )
        .await;
        // b1 ran first: no background had run yet, so its share was free.
        assert_eq!(log(&w).await, ["b1", "f1", "f2", "f3", "b2"]);
    }

    /// Fails unless `f` ends well before the pause a background command owes in these
    /// tests (ten seconds): a lane that ignored idleness or closing would still end,
    /// only after the pause.
    async fn promptly<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(3), f)
            .await
            .unwrap_or_else(|_| panic!("{what} waited out the owed pause"))
    }

    #[tokio::test]
    async fn an_idle_writer_runs_background_back_to_back() {
        // b1 owes ten seconds at this share; an idle writer runs the next ones anyway
        // once no foreground write came for the idle wait.
        let w = writer(0.001, Duration::from_millis(5)).await;
        w.run_in(Lane::Background, append("b1", Duration::from_millis(10)))
            .await
            .unwrap();
        promptly("the idle writer's background commands", async {
            for what in ["b2", "b3", "b4"] {
                w.run_in(Lane::Background, append(what, Duration::ZERO))
                    .await
                    .unwrap();
            }
        })
        .await;
        assert_eq!(log(&w).await, ["b1", "b2", "b3", "b4"]);
    }

    #[tokio::test]
    async fn close_runs_the_background_commands_still_queued() {
        let w = writer(0.001, Duration::from_secs(3600)).await;
        w.run_in(Lane::Background, append("b1", Duration::from_millis(10)))
            .await
            .unwrap();
        let (go, held) = hold_writer(&w);
        let b2 = w
            .submit(Lane::Background, append("b2", Duration::ZERO))
            .unwrap();
        go.send(()).unwrap();
        held.await.unwrap().unwrap();
        // b2 is neither due (it owes ten seconds) nor idle (an hour): only closing
        // lets it run, and closing must neither drop it nor wait out its pause.
        promptly("close", w.close()).await;
        b2.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_background_command_commits_alone() {
        // A failing background command is rolled back alone, and a foreground batch
        // queued beside it is committed.
        let w = writer(1.0, Duration::from_millis(1)).await;
        let (go, held) = hold_writer(&w);
        let bad = w
            .submit(Lane::Background, |c: &Connection| -> QResult<()> {
                c.execute("INSERT INTO log (what) VALUES ('bad')", [])?;
                c.execute("INSERT INTO nowhere VALUES (1)", [])?;
                Ok(())
            })
            .unwrap();
        let f1 = w
            .submit(Lane::Foreground, append("f1", Duration::ZERO))
            .unwrap();
        go.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert!(bad.await.unwrap().is_err());
        f1.await.unwrap().unwrap();
        assert_eq!(log(&w).await, ["f1"]);
    }
}
