//! Group commit for checkpoints: the durable calls and steps of every job a worker runs
//! hand their checkpoints to one writer, which stores whatever arrived while its previous
//! write was in flight with one [`crate::Storage::checkpoint_many`] call (one statement and one
//! commit on PostgreSQL, one transaction on SQLite). Each caller resumes only once its
//! own item is durable, with its own item's result: a lease lost for one job fails only
//! that job's checkpoint.
//!
//! Batching adds no waiting: a lone checkpoint is written at once, and items queue up only
//! while every writer is busy (as the worker's completions do). Several writes may be in
//! flight at once ([`WorkerOptions::checkpoint_writers`], one by default): a job waits
//! for its own checkpoint before its next step, so with one writer the checkpoints that
//! arrive just after a write went out wait out a whole round trip and flush; a second
//! writer sends them at once, which pays where that round trip is long and the server
//! has CPU to spare.
//!
//! Loading goes the same way: the first durable call of each job reads the job's stored
//! checkpoints, and the reads of jobs that start together go out as one
//! [`crate::Storage::list_checkpoints_many`] call instead of one round trip per job (which was
//! the most frequent statement of a three-step workflow).
//!
//! [`WorkerOptions::checkpoint_writers`]: crate::WorkerOptions::checkpoint_writers

use crate::error::{Error, Result, StorageError, StorageErrorKind};
use crate::job::{Checkpoint, JobId, Lease};
use crate::storage::{CheckpointWrite, DynStorage};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most checkpoints stored by one write.
const MAX_BATCH: usize = 1000;

/// What one batch write returns: one result per item, in order.
type Written = Result<Vec<Result<()>>>;

/// Writes one batch (in production, [`crate::Storage::checkpoint_many`]).
type WriteFn =
    dyn Fn(Vec<CheckpointWrite>) -> Pin<Box<dyn Future<Output = Written> + Send>> + Send + Sync;

/// The most jobs whose checkpoints one load reads.
const MAX_LOAD_BATCH: usize = 1000;

/// Loads in flight at once. Reads wait for no flush; two let the jobs that start while
/// one load is out go at once, without a knob.
const LOADERS: usize = 2;

/// What one batch load returns: one list per job, in order.
type Loaded = Result<Vec<Vec<Checkpoint>>>;

/// Reads one batch (in production, [`crate::Storage::list_checkpoints_many`]).
type LoadFn = dyn Fn(Vec<JobId>) -> Pin<Box<dyn Future<Output = Loaded> + Send>> + Send + Sync;

/// One checkpoint waiting for the writer, with the caller to answer.
struct Pending {
    item: CheckpointWrite,
    done: oneshot::Sender<Result<()>>,
}

/// One job whose checkpoints are wanted, with the caller to answer.
struct PendingLoad {
    job_id: JobId,
    done: oneshot::Sender<Result<Vec<Checkpoint>>>,
}

/// A handle on one worker run's checkpoint writer and loader. Cheap to clone; their
/// tasks end once every handle is gone.
#[derive(Clone)]
pub(crate) struct CheckpointCommitter {
    tx: mpsc::UnboundedSender<Pending>,
    loads: mpsc::UnboundedSender<PendingLoad>,
}

impl CheckpointCommitter {
    /// Starts a writer over `storage` (on the current tokio runtime) with up to `writers`
    /// writes in flight (at least one), and a loader.
    pub(crate) fn start(storage: DynStorage, writers: usize) -> Self {
        let reader = storage.clone();
        Self::with_fns(
            Arc::new(move |items| {
                let s = storage.clone();
                Box::pin(async move { s.checkpoint_many(items).await })
            }),
            Arc::new(move |ids| {
                let s = reader.clone();
                Box::pin(async move { s.list_checkpoints_many(ids).await })
            }),
            writers,
        )
    }

    /// Starts a writer that stores batches with `write`, up to `writers` at once, and a
    /// loader that reads batches with `load`.
    fn with_fns(write: Arc<WriteFn>, load: Arc<LoadFn>, writers: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_writer(rx, write, writers.max(1)));
        let (loads, load_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_loader(load_rx, load));
        CheckpointCommitter { tx, loads }
    }

    /// The job's stored checkpoints, in key order, read together with those of the other
    /// jobs waiting for theirs.
    ///
    /// # Errors
    /// The storage's error when the batch's read failed.
    pub(crate) async fn load(&self, job_id: JobId) -> Result<Vec<Checkpoint>> {
        ask(&self.loads, |done| PendingLoad { job_id, done }, "load").await
    }

    /// Stores `checkpoint` for the job `lease` holds, fenced by that lease, together with
    /// whatever other checkpoints are waiting; returns once it is durable.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease is no longer the job's current one (nothing is
    /// stored); the storage's error when the batch's write failed.
    pub(crate) async fn save(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()> {
        let item = CheckpointWrite {
            lease: lease.clone(),
            checkpoint,
        };
        ask(&self.tx, |done| Pending { item, done }, "write").await
    }
}

/// Hands the request `make` builds around its answer channel to the checkpoint `what`
/// task (`write` or `load`) and waits for the answer.
async fn ask<P, T>(
    tx: &mpsc::UnboundedSender<P>,
    make: impl FnOnce(oneshot::Sender<Result<T>>) -> P,
    what: &str,
) -> Result<T> {
    let (done, answer) = oneshot::channel();
    if tx.send(make(done)).is_err() {
        return Err(unanswered(&format!("the checkpoint {what} task is gone")));
    }
    answer.await.unwrap_or_else(|_| {
        Err(unanswered(&format!(
            "the checkpoint {what} ended without an answer"
        )))
    })
}

/// The error for a checkpoint whose write gave no answer: whether it was stored is
/// unknown, so the attempt retries (storing it again replaces the same key).
fn unanswered(why: &str) -> Error {
    Error::Storage(StorageError::new(StorageErrorKind::Other, why))
}

/// The writer: once a write slot is free, takes every waiting item (up to
/// [`MAX_BATCH`]), writes them with one call in a task of its own, and repeats until every
/// handle is gone; each write answers its own callers.
///
/// Each item is in exactly one batch. Batches in flight together hold different
/// checkpoints: a job saves its next checkpoint only once its previous one is durable,
/// and the calls it runs concurrently write different keys.
async fn run_writer(rx: mpsc::UnboundedReceiver<Pending>, write: Arc<WriteFn>, writers: usize) {
    crate::batching::run_batches(rx, writers, MAX_BATCH, move |buf| {
        let write = write.clone();
        async move { write_batch(&write, buf).await }
    })
    .await;
}

/// The loader: as the writer, with [`LOADERS`] reads in flight.
async fn run_loader(rx: mpsc::UnboundedReceiver<PendingLoad>, load: Arc<LoadFn>) {
    crate::batching::run_batches(rx, LOADERS, MAX_LOAD_BATCH, move |buf| {
        let load = load.clone();
        async move { load_batch(&load, buf).await }
    })
    .await;
}

/// Reads one batch and answers each caller with its own job's checkpoints.
async fn load_batch(load: &Arc<LoadFn>, buf: Vec<PendingLoad>) {
    let (ids, waiters): (Vec<_>, Vec<_>) = buf.into_iter().map(|p| (p.job_id, p.done)).unzip();
    // A task of its own, as for writes: a panic fails this batch only.
    let loaded = match tokio::spawn(load(ids)).await {
        Ok(l) => l.map(|lists| lists.into_iter().map(Ok).collect()),
        Err(e) => Err(unanswered(&format!("the checkpoint load panicked: {e}"))),
    };
    answer(waiters, loaded, "list_checkpoints_many");
}

/// Writes one batch and answers each of its callers with its own item's result.
async fn write_batch(write: &Arc<WriteFn>, buf: Vec<Pending>) {
    let (items, waiters): (Vec<_>, Vec<_>) = buf.into_iter().map(|p| (p.item, p.done)).unzip();
    // A task of its own, so a panic inside the storage fails this batch only and the
    // writer lives on for the next.
    let written = match tokio::spawn(write(items)).await {
        Ok(w) => w,
        Err(e) => Err(unanswered(&format!("the checkpoint write panicked: {e}"))),
    };
    answer(waiters, written, "checkpoint_many");
}

/// Answers a batch's callers, each with its own answer when the batch `call` gave one per
/// caller, else every one with the failure.
fn answer<T>(
    waiters: Vec<oneshot::Sender<Result<T>>>,
    answers: Result<Vec<Result<T>>>,
    call: &str,
) {
    let n = waiters.len();
    match answers {
        Ok(answers) if answers.len() == n => {
            for (done, a) in waiters.into_iter().zip(answers) {
                // A caller that stopped waiting (its handler was aborted) needs no answer.
                let _ = done.send(a);
            }
        }
        Ok(answers) => {
            let e = format!("{call} returned {} answers for {n} items", answers.len());
            for done in waiters {
                let _ = done.send(Err(unanswered(&e)));
            }
        }
        Err(e) => {
            // Every caller gets the failure, with its kind (a transient error stays
            // transient) and message.
            let kind = e.storage_kind().unwrap_or(StorageErrorKind::Other);
            let message = e.to_string();
            let mut first = Some(e);
            for done in waiters {
                let err = match first.take() {
                    Some(e) => e,
                    None => Error::Storage(StorageError::new(kind, message.clone())),
                };
                let _ = done.send(Err(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::CheckpointOutcome;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    /// A committer over `write` whose loads find nothing stored.
    fn with_writer(write: Arc<WriteFn>, writers: usize) -> CheckpointCommitter {
        CheckpointCommitter::with_fns(
            write,
            Arc::new(|ids: Vec<JobId>| Box::pin(async move { Ok(vec![Vec::new(); ids.len()]) })),
            writers,
        )
    }

    /// Jobs whose loads arrive while two loads are out are read together by the next
    /// one, and each caller gets its own job's checkpoints.
    #[tokio::test]
    async fn waiting_loads_share_the_next_read() {
        let entered = Arc::new(Notify::new());
        // Permits, not a Notify: a release may come before the held load waits for it.
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let batches: Arc<Mutex<Vec<Vec<JobId>>>> = Arc::default();
        let (e, r, b) = (entered.clone(), release.clone(), batches.clone());
        let load: Arc<LoadFn> = Arc::new(move |ids: Vec<JobId>| {
            let (e, r, b) = (e.clone(), r.clone(), b.clone());
            Box::pin(async move {
                let held = {
                    let mut b = b.lock().expect("batches");
                    b.push(ids.clone());
                    b.len() <= LOADERS
                };
                if held {
                    e.notify_one();
                    r.acquire().await.expect("never closed").forget();
                }
                Ok(ids.iter().map(|id| vec![cp(&format!("of{id}"))]).collect())
            })
        });
        let write: Arc<WriteFn> = Arc::new(|items: Vec<CheckpointWrite>| {
            Box::pin(async move { Ok(items.iter().map(|_| Ok(())).collect()) })
        });
        let c = CheckpointCommitter::with_fns(write, load, 1);
        let mut held = Vec::new();
        for id in 1..=LOADERS as JobId {
            let c = c.clone();
            held.push(tokio::spawn(async move { c.load(id).await }));
            entered.notified().await;
        }
        // Every loader is busy: these three queue up behind them. One poll each sends
        // the request (the send happens before the first wait).
        let mut queued: Vec<_> = (10..13).map(|id| Box::pin(c.load(id))).collect();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for f in &mut queued {
            assert!(f.as_mut().poll(&mut cx).is_pending());
        }
        release.add_permits(LOADERS);
        for (i, h) in held.into_iter().enumerate() {
            let got = h.await.expect("join").expect("load");
            assert_eq!(got[0].key, format!("of{}", i + 1));
        }
        for (id, q) in (10..13).zip(queued) {
            let got = q.await.expect("load");
            assert_eq!(got[0].key, format!("of{id}"));
        }
        let b = batches.lock().expect("batches").clone();
        assert_eq!(b.len(), LOADERS + 1, "batches: {b:?}");
        assert_eq!(b[LOADERS], vec![10, 11, 12]);
    }

    /// Jobs whose checkpoints were answered together save their next ones together: the
    /// writer lets the callers its last write woke run before it takes the next batch,
    /// rather than sending the first caller's next item alone and keeping the rest
    /// waiting a whole write (tokio runs the task woken last, the writer, first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn callers_answered_together_share_their_next_write() {
        const JOBS: i64 = 8;
        const STEPS: usize = 20;
        let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
        let b = batches.clone();
        let write: Arc<WriteFn> = Arc::new(move |items: Vec<CheckpointWrite>| {
            b.lock().expect("batches").push(items.len());
            Box::pin(async move { Ok(items.iter().map(|_| Ok(())).collect()) })
        });
        let c = with_writer(write, 1);
        // Every job's first checkpoint is sent before the writer runs: one batch.
        let start = Arc::new(tokio::sync::Barrier::new(JOBS as usize + 1));
        let jobs: Vec<_> = (1..=JOBS)
            .map(|id| {
                let (c, start) = (c.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    for step in 0..STEPS {
                        c.save(&lease(id), cp(&step.to_string()))
                            .await
                            .expect("save");
                    }
                })
            })
            .collect();
        start.wait().await;
        for j in jobs {
            j.await.expect("job");
        }
        let b = batches.lock().expect("batches").clone();
        assert_eq!(b.iter().sum::<usize>(), JOBS as usize * STEPS);
        assert_eq!(b.len(), STEPS, "one write per step for all jobs: {b:?}");
    }

    fn lease(job_id: i64) -> Lease {
        Lease {
            job_id,
            attempt: 1,
            token: job_id * 10,
            expires_at: chrono::Utc::now(),
        }
    }

    fn cp(key: &str) -> Checkpoint {
        Checkpoint {
            key: key.into(),
            name: "step".into(),
            outcome: CheckpointOutcome::Ok(serde_json::json!(key)),
            created_at: None,
            args_hash: None,
        }
    }

    /// A writer that records each batch's keys, holds its first write until released,
    /// and loses the lease of job 2.
    struct Gate {
        batches: Mutex<Vec<Vec<String>>>,
        entered: Notify,
        release: Notify,
    }

    fn gated() -> (Arc<Gate>, Arc<WriteFn>) {
        let gate = Arc::new(Gate {
            batches: Mutex::new(Vec::new()),
            entered: Notify::new(),
            release: Notify::new(),
        });
        let g = gate.clone();
        let write: Arc<WriteFn> = Arc::new(move |items: Vec<CheckpointWrite>| {
            let g = g.clone();
            Box::pin(async move {
                let first = {
                    let mut b = g.batches.lock().unwrap();
                    b.push(items.iter().map(|i| i.checkpoint.key.clone()).collect());
                    b.len() == 1
                };
                if first {
                    g.entered.notify_one();
                    g.release.notified().await;
                }
                Ok(items
                    .iter()
                    .map(|i| match i.lease.job_id {
                        2 => Err(Error::LeaseLost { job_id: 2 }),
                        _ => Ok(()),
                    })
                    .collect())
            })
        });
        (gate, write)
    }

    /// Items that arrive while a write is in flight go out together in the next write,
    /// and each caller gets its own item's result: job 2's lost lease fails its item only.
    #[tokio::test]
    async fn waiting_items_share_the_next_write() {
        let (gate, write) = gated();
        let c = with_writer(write, 1);
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.save(&lease(1), cp("a")).await }
        });
        gate.entered.notified().await;
        // The first write is held: these three queue up behind it. One poll each sends
        // the item (the send happens before the first wait).
        let leases = [lease(1), lease(2), lease(3)];
        let mut rest: Vec<_> = leases
            .iter()
            .zip(["b", "c", "d"])
            .map(|(l, k)| Box::pin(c.save(l, cp(k))))
            .collect();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for f in &mut rest {
            assert!(f.as_mut().poll(&mut cx).is_pending());
        }
        gate.release.notify_one();
        assert!(first.await.unwrap().is_ok());
        let mut results = Vec::new();
        for f in rest {
            results.push(f.await);
        }
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(Error::LeaseLost { job_id: 2 })));
        assert!(results[2].is_ok());
        let batches = gate.batches.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![
                vec!["a".to_string()],
                vec!["b".into(), "c".into(), "d".into()]
            ]
        );
    }

    /// With two writers, a checkpoint that arrives while one write is held goes out at
    /// once in a second write and returns while the first is still in flight.
    #[tokio::test]
    async fn a_second_writer_sends_what_arrives_during_a_write() {
        let (gate, write) = gated();
        let c = with_writer(write, 2);
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.save(&lease(1), cp("a")).await }
        });
        gate.entered.notified().await;
        assert!(c.save(&lease(3), cp("b")).await.is_ok());
        assert!(!first.is_finished());
        gate.release.notify_one();
        assert!(first.await.unwrap().is_ok());
        let batches = gate.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec!["a".to_string()], vec!["b".to_string()]]);
    }

    /// A batch whose write fails gives every caller the failure with its kind; a write
    /// that panics fails its batch only, and the writer goes on.
    #[tokio::test]
    async fn failed_and_panicked_writes_answer_every_caller() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = calls.clone();
        let write: Arc<WriteFn> = Arc::new(move |items: Vec<CheckpointWrite>| {
            let call = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                match call {
                    0 => Err(Error::Storage(StorageError::new(
                        StorageErrorKind::Unavailable,
                        "down",
                    ))),
                    1 => panic!("storage bug"),
                    _ => Ok(items.iter().map(|_| Ok(())).collect()),
                }
            })
        });
        let c = with_writer(write, 1);
        let l = lease(1);
        let e = c.save(&l, cp("a")).await.unwrap_err();
        assert_eq!(e.storage_kind(), Some(StorageErrorKind::Unavailable));
        assert!(c.save(&l, cp("b")).await.is_err());
        assert!(c.save(&l, cp("c")).await.is_ok());
    }
}
