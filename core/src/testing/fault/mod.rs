//! Fault injection: a storage wrapper that, by a seeded schedule, fails calls before they
//! reach the backend, fails writes after they committed (the caller cannot tell), delays
//! calls, pauses lease-fenced writes until the test resumes them (so the test can expire
//! the lease meanwhile), and crashes: after the crash point every call fails, as if the
//! process had died between two storage calls. Outside the plan, a test may also hold
//! every claim's answer until it lets it through ([`FaultStorage::with_claim_holds`]),
//! and hide the backend's wake-ups ([`FaultStorage::without_wakeups`]), to place a claim
//! exactly where a race needs it.
//!
//! Wrap any [`DynStorage`] and give the wrapper to the worker under test
//! (`Queue::new(Arc::new(faulty))`), keeping the backend itself for assertions. A
//! [`FaultLog`] shared by several wrappers records every call on one sequence: what was
//! injected, what the backend accepted, which leases were claimed.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use durable_jobs::testing::fault::{FaultPlan, FaultStorage, Injected};
//! use durable_jobs::{JobFilter, NewJob, Storage};
//! use std::sync::Arc;
//!
//! let backend = Arc::new(durable_jobs_memory::MemoryStorage::new());
//! // Every write fails after it committed, as when a connection drops after the commit.
//! let faulty = FaultStorage::new(backend.clone(), FaultPlan::new(7).error_after(1000)?);
//! assert!(faulty.enqueue(NewJob::new("t", serde_json::json!(1))).await.is_err());
//! assert_eq!(backend.list_jobs(JobFilter::default()).await?.len(), 1);
//! // A crash: every later call fails and reaches nothing.
//! faulty.crash();
//! assert!(faulty.enqueue(NewJob::new("t", serde_json::json!(2))).await.is_err());
//! assert_eq!(backend.list_jobs(JobFilter::default()).await?.len(), 1);
//! let injected: Vec<_> = faulty.log().records().iter().map(|r| r.injected).collect();
//! assert_eq!(injected, [Some(Injected::ErrorAfter), Some(Injected::Crashed)]);
//! # Ok::<(), durable_jobs::Error>(())
//! # }).unwrap();
//! ```

pub mod conformance;

use super::simulation::rng::Rng;
use crate::error::{Error, Result, StorageError, StorageErrorKind};
use crate::job::{Checkpoint, Enqueued, Job, JobId, Lease, NewJob};
use crate::storage::{
    AdvanceScheduleParams, AttemptRecord, Capabilities, CheckpointWrite, ClaimedJob, Completion,
    DeletedBatch, DequeueParams, DynStorage, Failure, JobFilter, ManualOutcome, QueueCount,
    RateLimit, RetentionBatch, RetentionPurged, ScheduleRecord, SpawnChildrenParams, StaleLocks,
    Storage, TakeSignalsParams, WorkerRecord,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Rates are in per-mille: this many calls in 1,000.
const PER_MILLE: u32 = 1_000;

/// Which faults a [`FaultStorage`] injects, and how often. Every decision is a function
/// of the seed and the call's number, so the same seed and the same sequence of calls
/// inject the same faults.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    seed: u64,
    error_before: u32,
    error_after: u32,
    delay: u32,
    max_delay: Duration,
    pause: u32,
    crash_after: Option<u64>,
    error_kind: StorageErrorKind,
}

fn per_mille(option: &'static str, rate: u32) -> Result<u32> {
    if rate > PER_MILLE {
        return Err(Error::InvalidOption {
            option,
            message: format!("a rate is in per-mille, 0 to 1000; got {rate}"),
        });
    }
    Ok(rate)
}

impl FaultPlan {
    /// A plan that injects nothing yet, drawing its decisions from `seed`.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            seed,
            error_before: 0,
            error_after: 0,
            delay: 0,
            max_delay: Duration::from_millis(50),
            pause: 0,
            crash_after: None,
            error_kind: StorageErrorKind::Unavailable,
        }
    }

    /// This many calls in 1,000 (reads and writes) fail before reaching the backend.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a rate above 1000.
    pub fn error_before(mut self, per_mille_rate: u32) -> Result<Self> {
        self.error_before = per_mille("error_before", per_mille_rate)?;
        self.check_total()
    }

    /// This many writes in 1,000 commit in the backend and then report an error, as when
    /// a connection drops after the server committed.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a rate above 1000.
    pub fn error_after(mut self, per_mille_rate: u32) -> Result<Self> {
        self.error_after = per_mille("error_after", per_mille_rate)?;
        self.check_total()
    }

    /// This many calls in 1,000 wait a random time up to `max` (on tokio's clock) before
    /// reaching the backend.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a rate above 1000.
    pub fn delay(mut self, per_mille_rate: u32, max: Duration) -> Result<Self> {
        self.delay = per_mille("delay", per_mille_rate)?;
        self.max_delay = max;
        self.check_total()
    }

    /// This many lease-fenced writes in 1,000 stop before reaching the backend until the
    /// test resumes them ([`PausedCall`], through [`FaultStorage::with_pauses`]): the
    /// test moves the backend's clock past the lease meanwhile, so the write arrives
    /// after its lease expired, as from a process that was stopped. Without a pause
    /// channel no call is paused.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a rate above 1000.
    pub fn pause(mut self, per_mille_rate: u32) -> Result<Self> {
        self.pause = per_mille("pause", per_mille_rate)?;
        self.check_total()
    }

    /// The wrapper crashes after this many calls: every later call fails with an
    /// unavailable error and reaches nothing.
    pub fn crash_after(mut self, calls: u64) -> Self {
        self.crash_after = Some(calls);
        self
    }

    /// The kind of the injected errors; [`StorageErrorKind::Unavailable`] by default (a
    /// transient kind, which the worker retries).
    pub fn error_kind(mut self, kind: StorageErrorKind) -> Self {
        self.error_kind = kind;
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn check_total(self) -> Result<Self> {
        let total = self.error_before + self.error_after + self.delay + self.pause;
        if total > PER_MILLE {
            return Err(Error::InvalidOption {
                option: "fault_plan",
                message: format!("the rates add up to {total} per mille, more than 1000"),
            });
        }
        Ok(self)
    }

    /// The fault for call number `n` of a call of `class`.
    fn decide(&self, n: u64, class: Class) -> Option<Injected> {
        let mut rng = Rng::new(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let roll = rng.below(u64::from(PER_MILLE)) as u32;
        let mut edge = self.error_before;
        if roll < edge {
            return Some(Injected::ErrorBefore);
        }
        if class != Class::Read {
            edge += self.error_after;
            if roll < edge {
                return Some(Injected::ErrorAfter);
            }
        }
        if class == Class::Fenced {
            edge += self.pause;
            if roll < edge {
                return Some(Injected::Pause);
            }
        }
        edge += self.delay;
        if roll < edge {
            let max = self.max_delay.as_micros().max(1) as u64;
            return Some(Injected::Delay(Duration::from_micros(rng.below(max) + 1)));
        }
        None
    }
}

/// What the wrapper did to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Injected {
    /// Failed before reaching the backend.
    ErrorBefore,
    /// Reached the backend, then reported an error whatever the backend answered.
    ErrorAfter,
    /// Waited this long, then reached the backend.
    Delay(Duration),
    /// Waited until the test resumed it, then reached the backend.
    Pause,
    /// Failed because the wrapper had crashed.
    Crashed,
}

/// Whether a call reads, writes, or writes under a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Read,
    Write,
    Fenced,
}

/// One write made under a lease, as the backend answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseWrite {
    /// The lease presented.
    pub lease: Lease,
    /// The backend accepted the write (the caller may still have seen an injected error).
    pub accepted: bool,
}

/// One call through a [`FaultStorage`], as the shared [`FaultLog`] records it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    /// The log's sequence number when the call started.
    pub started: u64,
    /// The log's sequence number when the call returned.
    pub ended: u64,
    /// The storage method (`dequeue`, `complete`, ...).
    pub call: &'static str,
    /// The name the wrapper was given (the worker it serves).
    pub owner: String,
    /// The fault injected, if any.
    pub injected: Option<Injected>,
    /// The backend answered Ok (so a write committed), whatever the caller saw.
    pub backend_ok: bool,
    /// Leases a `dequeue` handed out.
    pub claimed: Vec<Lease>,
    /// Lease-fenced writes (several for `complete_many` and `heartbeat_many`) and whether
    /// the backend accepted each.
    pub writes: Vec<LeaseWrite>,
    /// Checkpoint keys a fenced write stored (`checkpoint`, `spawn_children`,
    /// `take_signals` that took something), with the job.
    pub checkpoints: Vec<(JobId, String)>,
}

/// A log shared by [`FaultStorage`] wrappers (one per worker, say) and the test: every
/// call with what was injected and what the backend answered, on one sequence that the
/// test can also draw from ([`FaultLog::tick`]) to order its own observations (a handler
/// that ran, a side effect) among the calls.
#[derive(Debug, Clone, Default)]
pub struct FaultLog {
    inner: Arc<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    seq: AtomicU64,
    records: Mutex<Vec<CallRecord>>,
}

impl FaultLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next number on the log's sequence.
    pub fn tick(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Every call recorded so far, in the order they returned.
    pub fn records(&self) -> Vec<CallRecord> {
        self.lock().clone()
    }

    /// How many calls had each kind of fault injected: error before, error after, delay,
    /// pause, crashed.
    pub fn injected_counts(&self) -> [u64; 5] {
        let mut out = [0; 5];
        for r in self.lock().iter() {
            let i = match r.injected {
                Some(Injected::ErrorBefore) => 0,
                Some(Injected::ErrorAfter) => 1,
                Some(Injected::Delay(_)) => 2,
                Some(Injected::Pause) => 3,
                Some(Injected::Crashed) => 4,
                None => continue,
            };
            out[i] += 1;
        }
        out
    }

    fn push(&self, record: CallRecord) {
        self.lock().push(record);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<CallRecord>> {
        // Records are pushed whole, so a poisoned lock still holds consistent data.
        self.inner.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A lease-fenced write stopped by a pause fault. It goes on to the backend when resumed
/// or dropped.
#[derive(Debug)]
pub struct PausedCall {
    /// The storage method.
    pub call: &'static str,
    /// The lease the write presents.
    pub lease: Lease,
    /// The name of the wrapper that paused it.
    pub owner: String,
    resume: oneshot::Sender<()>,
}

impl PausedCall {
    /// Lets the write go on to the backend.
    pub fn resume(self) {
        let _ = self.resume.send(());
    }
}

/// A claim the backend has answered, held back from the worker until the test lets it
/// through (see [`FaultStorage::with_claim_holds`]). It goes on when resumed or dropped.
#[derive(Debug)]
pub struct HeldClaim {
    /// How many jobs the backend leased to it.
    pub claimed: usize,
    resume: oneshot::Sender<()>,
}

impl HeldClaim {
    /// Lets the claim's answer through to the worker.
    pub fn resume(self) {
        let _ = self.resume.send(());
    }
}

/// A storage wrapper that injects faults by a [`FaultPlan`]. See the module docs.
#[derive(Clone)]
pub struct FaultStorage {
    inner: DynStorage,
    plan: Arc<FaultPlan>,
    owner: String,
    calls: Arc<AtomicU64>,
    crashed: Arc<AtomicBool>,
    log: FaultLog,
    pauses: Option<mpsc::UnboundedSender<PausedCall>>,
    claim_holds: Option<mpsc::UnboundedSender<HeldClaim>>,
    wakeups: bool,
}

impl std::fmt::Debug for FaultStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultStorage")
            .field("inner", &self.inner.name())
            .field("owner", &self.owner)
            .field("plan", &self.plan)
            .field("crashed", &self.is_crashed())
            .finish()
    }
}

/// What the backend's answer tells the log about a call.
type Describe<'a, T> = Box<dyn FnOnce(&T, &mut CallRecord) + Send + 'a>;

impl FaultStorage {
    /// Wraps `inner`, injecting faults by `plan`, with a log of its own.
    pub fn new(inner: DynStorage, plan: FaultPlan) -> Self {
        FaultStorage {
            inner,
            plan: Arc::new(plan),
            owner: String::new(),
            calls: Arc::default(),
            crashed: Arc::default(),
            log: FaultLog::new(),
            pauses: None,
            claim_holds: None,
            wakeups: true,
        }
    }

    /// Records into `log` (shared with other wrappers and the test) instead.
    pub fn with_log(mut self, log: FaultLog) -> Self {
        self.log = log;
        self
    }

    /// Names the wrapper in its records and paused calls (the worker it serves).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Sends paused writes to `pauses`, which enables the plan's pause faults.
    pub fn with_pauses(mut self, pauses: mpsc::UnboundedSender<PausedCall>) -> Self {
        self.pauses = Some(pauses);
        self
    }

    /// Sends every claim (`dequeue`), once the backend has answered it, to `holds`, and
    /// gives its answer to the caller only when the test resumes it: the claim's snapshot
    /// is taken, and whatever happens meanwhile (a handler ending, a job enqueued) happens
    /// between its snapshot and its answer reaching the worker.
    pub fn with_claim_holds(mut self, holds: mpsc::UnboundedSender<HeldClaim>) -> Self {
        self.claim_holds = Some(holds);
        self
    }

    /// Hides the backend's wake-ups ([`Storage::wakeups`] says none): a worker on this
    /// wrapper learns of jobs enqueued by anyone but its own queue only by claiming, as
    /// when their notification is still on its way.
    pub fn without_wakeups(mut self) -> Self {
        self.wakeups = false;
        self
    }

    /// The backend behind the wrapper.
    pub fn inner(&self) -> &DynStorage {
        &self.inner
    }

    /// The shared log.
    pub fn log(&self) -> &FaultLog {
        &self.log
    }

    /// Crashes now: every later call fails without reaching the backend. A call already
    /// past the check completes, as a call in flight when a process dies may.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// True once crashed.
    pub fn is_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// How many calls went through the wrapper.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn injected_error(&self, call: &'static str, what: &str) -> Error {
        Error::Storage(StorageError::new(
            self.plan.error_kind,
            format!("injected fault: {what} ({call})"),
        ))
    }

    /// Runs one call under the plan and records it.
    async fn run<'a, T, Fut>(
        &'a self,
        call: &'static str,
        class: Class,
        leases: &[Lease],
        fut: Fut,
        describe: Describe<'a, T>,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>> + Send + 'a,
        T: Send,
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut record = CallRecord {
            started: self.log.tick(),
            ended: 0,
            call,
            owner: self.owner.clone(),
            injected: None,
            backend_ok: false,
            claimed: Vec::new(),
            writes: Vec::new(),
            checkpoints: Vec::new(),
        };
        if self.plan.crash_after.is_some_and(|at| n >= at) {
            self.crash();
        }
        let injected = if self.is_crashed() {
            Some(Injected::Crashed)
        } else {
            self.plan.decide(n, class)
        };
        record.injected = injected;
        let out = match injected {
            Some(Injected::Crashed) => Err(Error::Storage(StorageError::new(
                StorageErrorKind::Unavailable,
                format!("injected fault: the worker crashed ({call})"),
            ))),
            Some(Injected::ErrorBefore) => Err(self.injected_error(call, "failed before the call")),
            other => {
                match other {
                    Some(Injected::Delay(d)) => tokio::time::sleep(d).await,
                    Some(Injected::Pause) => self.pause(call, leases).await,
                    _ => {}
                }
                let r = fut.await;
                if let Ok(v) = &r {
                    record.backend_ok = true;
                    describe(v, &mut record);
                } else if class == Class::Fenced && record.writes.is_empty() {
                    record.writes = leases
                        .iter()
                        .map(|l| LeaseWrite {
                            lease: l.clone(),
                            accepted: false,
                        })
                        .collect();
                }
                match (other, r) {
                    (Some(Injected::ErrorAfter), Ok(_)) => {
                        Err(self.injected_error(call, "failed after the write committed"))
                    }
                    (_, r) => r,
                }
            }
        };
        record.ended = self.log.tick();
        self.log.push(record);
        out
    }

    async fn pause(&self, call: &'static str, leases: &[Lease]) {
        let (Some(tx), Some(lease)) = (&self.pauses, leases.first()) else {
            return;
        };
        let (resume, resumed) = oneshot::channel();
        let paused = PausedCall {
            call,
            lease: lease.clone(),
            owner: self.owner.clone(),
            resume,
        };
        if tx.send(paused).is_ok() {
            // Resumed or dropped: either way the write goes on.
            let _ = resumed.await;
        }
    }

    async fn read<'a, T: Send, Fut>(&'a self, call: &'static str, fut: Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>> + Send + 'a,
    {
        self.run(call, Class::Read, &[], fut, Box::new(|_, _| {}))
            .await
    }

    async fn write<'a, T: Send, Fut>(&'a self, call: &'static str, fut: Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>> + Send + 'a,
    {
        self.run(call, Class::Write, &[], fut, Box::new(|_, _| {}))
            .await
    }

    /// A write fenced by one lease, storing `checkpoints` when accepted.
    async fn fenced<'a, T: Send, Fut>(
        &'a self,
        call: &'static str,
        lease: &Lease,
        checkpoints: Vec<String>,
        fut: Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>> + Send + 'a,
    {
        let l = lease.clone();
        self.run(
            call,
            Class::Fenced,
            std::slice::from_ref(lease),
            fut,
            Box::new(move |_, r| {
                r.checkpoints = checkpoints.into_iter().map(|k| (l.job_id, k)).collect();
                r.writes.push(LeaseWrite {
                    lease: l,
                    accepted: true,
                });
            }),
        )
        .await
    }
}

/// Per-item outcomes of a batch write, beside the leases presented.
fn item_writes<T>(leases: &[Lease], results: &[Result<T>]) -> Vec<LeaseWrite> {
    leases
        .iter()
        .zip(results)
        .map(|(l, r)| LeaseWrite {
            lease: l.clone(),
            accepted: r.is_ok(),
        })
        .collect()
}

#[async_trait]
impl Storage for FaultStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn migrate(&self) -> Result<()> {
        self.write("migrate", self.inner.migrate()).await
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        self.read("now", self.inner.now()).await
    }

    fn wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        if self.wakeups {
            self.inner.wakeups()
        } else {
            None
        }
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        self.write("enqueue", self.inner.enqueue(job)).await
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.write("enqueue_many", self.inner.enqueue_many(jobs))
            .await
    }

    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>> {
        self.read("get_job", self.inner.get_job(job_id)).await
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.read("list_jobs", self.inner.list_jobs(filter)).await
    }

    async fn counts(&self) -> Result<Vec<QueueCount>> {
        self.read("counts", self.inner.counts()).await
    }

    async fn finished_counts(&self, since: DateTime<Utc>) -> Result<Vec<QueueCount>> {
        self.read("finished_counts", self.inner.finished_counts(since))
            .await
    }

    async fn list_attempts(&self, job_id: JobId) -> Result<Vec<AttemptRecord>> {
        self.read("list_attempts", self.inner.list_attempts(job_id))
            .await
    }

    async fn cancel(&self, job_id: JobId) -> Result<bool> {
        self.write("cancel", self.inner.cancel(job_id)).await
    }

    async fn delete_job(&self, job_id: JobId) -> Result<bool> {
        self.write("delete_job", self.inner.delete_job(job_id))
            .await
    }

    async fn enqueue_with_children(
        &self,
        parent: NewJob,
        children: Vec<NewJob>,
    ) -> Result<(Enqueued, Vec<Enqueued>)> {
        self.write(
            "enqueue_with_children",
            self.inner.enqueue_with_children(parent, children),
        )
        .await
    }

    fn finishes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.finishes()
    }

    async fn watch_job(&self, job_id: JobId) -> Result<Option<Job>> {
        self.read("watch_job", self.inner.watch_job(job_id)).await
    }

    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        let answer = self
            .run(
                "dequeue",
                Class::Write,
                &[],
                self.inner.dequeue(params),
                Box::new(|claimed: &Vec<ClaimedJob>, r| {
                    r.claimed = claimed.iter().map(|c| c.lease.clone()).collect();
                }),
            )
            .await;
        if let Some(holds) = &self.claim_holds {
            let (resume, resumed) = oneshot::channel();
            let held = HeldClaim {
                claimed: answer.as_ref().map_or(0, Vec::len),
                resume,
            };
            if holds.send(held).is_ok() {
                // Resumed or dropped: either way the answer goes on.
                let _ = resumed.await;
            }
        }
        answer
    }

    async fn complete(&self, lease: &Lease, result: Value) -> Result<()> {
        self.fenced(
            "complete",
            lease,
            Vec::new(),
            self.inner.complete(lease, result),
        )
        .await
    }

    async fn complete_many(&self, items: Vec<Completion>) -> Result<Vec<Result<()>>> {
        let leases: Vec<Lease> = items.iter().map(|c| c.lease.clone()).collect();
        let described = leases.clone();
        self.run(
            "complete_many",
            Class::Fenced,
            &leases,
            self.inner.complete_many(items),
            Box::new(move |results: &Vec<Result<()>>, r| {
                r.writes = item_writes(&described, results);
            }),
        )
        .await
    }

    async fn checkpoint_many(&self, items: Vec<CheckpointWrite>) -> Result<Vec<Result<()>>> {
        let leases: Vec<Lease> = items.iter().map(|c| c.lease.clone()).collect();
        let described = leases.clone();
        self.run(
            "checkpoint_many",
            Class::Fenced,
            &leases,
            self.inner.checkpoint_many(items),
            Box::new(move |results: &Vec<Result<()>>, r| {
                r.writes = item_writes(&described, results);
            }),
        )
        .await
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<()> {
        self.fenced("fail", lease, Vec::new(), self.inner.fail(lease, failure))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.fenced("release", lease, Vec::new(), self.inner.release(lease))
            .await
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        self.fenced("snooze", lease, Vec::new(), self.inner.snooze(lease, delay))
            .await
    }

    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()> {
        self.fenced(
            "set_progress",
            lease,
            Vec::new(),
            self.inner.set_progress(lease, progress),
        )
        .await
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        self.fenced(
            "heartbeat",
            lease,
            Vec::new(),
            self.inner.heartbeat(lease, extend),
        )
        .await
    }

    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        let described = leases.to_vec();
        self.run(
            "heartbeat_many",
            Class::Fenced,
            leases,
            self.inner.heartbeat_many(leases, extend),
            Box::new(move |results: &Vec<Result<Lease>>, r| {
                r.writes = item_writes(&described, results);
            }),
        )
        .await
    }

    async fn release_stale_locks(&self) -> Result<StaleLocks> {
        self.write("release_stale_locks", self.inner.release_stale_locks())
            .await
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()> {
        let key = vec![checkpoint.key.clone()];
        self.fenced(
            "checkpoint",
            lease,
            key,
            self.inner.checkpoint(lease, checkpoint),
        )
        .await
    }

    async fn list_checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>> {
        self.read("list_checkpoints", self.inner.list_checkpoints(job_id))
            .await
    }

    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64> {
        self.write("delete_checkpoints", self.inner.delete_checkpoints(job_id))
            .await
    }

    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()> {
        self.fenced(
            "suspend",
            lease,
            Vec::new(),
            self.inner.suspend(lease, wake_at),
        )
        .await
    }

    async fn spawn_children(&self, params: SpawnChildrenParams<'_>) -> Result<Vec<JobId>> {
        let lease = params.lease.clone();
        let key = vec![params.key.to_string()];
        self.fenced(
            "spawn_children",
            &lease,
            key,
            self.inner.spawn_children(params),
        )
        .await
    }

    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        self.write("send_signal", self.inner.send_signal(job_id, name, payload))
            .await
    }

    async fn take_signals(&self, params: TakeSignalsParams<'_>) -> Result<Vec<Value>> {
        let lease = params.lease.clone();
        let presented = [lease.clone()];
        let key = params.key.to_string();
        self.run(
            "take_signals",
            Class::Fenced,
            &presented,
            self.inner.take_signals(params),
            Box::new(move |taken: &Vec<Value>, r| {
                // Only a take that consumed something stores its checkpoint.
                if !taken.is_empty() {
                    r.checkpoints.push((lease.job_id, key));
                }
                r.writes.push(LeaseWrite {
                    lease,
                    accepted: true,
                });
            }),
        )
        .await
    }

    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        self.read("peek_signal", self.inner.peek_signal(job_id, name))
            .await
    }

    async fn upsert_schedule(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.write(
            "upsert_schedule",
            self.inner.upsert_schedule(name, definition, now),
        )
        .await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.read("schedules", self.inner.schedules()).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        self.write(
            "set_schedule_paused",
            self.inner.set_schedule_paused(name, paused),
        )
        .await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        self.write("delete_schedule", self.inner.delete_schedule(name))
            .await
    }

    async fn advance_schedule(
        &self,
        params: AdvanceScheduleParams<'_>,
    ) -> Result<Option<Vec<JobId>>> {
        self.write("advance_schedule", self.inner.advance_schedule(params))
            .await
    }

    async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64> {
        self.write("retry_jobs", self.inner.retry_jobs(ids, keep_checkpoints))
            .await
    }

    async fn reschedule_job(&self, job_id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        self.write("reschedule_job", self.inner.reschedule_job(job_id, run_at))
            .await
    }

    async fn finish_jobs(&self, ids: &[JobId], outcome: ManualOutcome) -> Result<u64> {
        self.write("finish_jobs", self.inner.finish_jobs(ids, outcome))
            .await
    }

    async fn purge_finished(&self, older_than: DateTime<Utc>) -> Result<u64> {
        self.write("purge_finished", self.inner.purge_finished(older_than))
            .await
    }

    async fn delete_jobs(&self, filter: JobFilter) -> Result<DeletedBatch> {
        self.write("delete_jobs", self.inner.delete_jobs(filter))
            .await
    }

    async fn set_key_limit(&self, key: &str, max_running: Option<u32>) -> Result<()> {
        self.write("set_key_limit", self.inner.set_key_limit(key, max_running))
            .await
    }

    async fn key_limits(&self) -> Result<Vec<(String, u32)>> {
        self.read("key_limits", self.inner.key_limits()).await
    }

    async fn set_queue_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        self.write(
            "set_queue_rate_limit",
            self.inner.set_queue_rate_limit(queue, limit),
        )
        .await
    }

    async fn queue_rate_limits(&self) -> Result<Vec<(String, RateLimit)>> {
        self.read("queue_rate_limits", self.inner.queue_rate_limits())
            .await
    }

    async fn purge_retained(&self, batch: RetentionBatch) -> Result<RetentionPurged> {
        self.write("purge_retained", self.inner.purge_retained(batch))
            .await
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.write(
            "set_queue_paused",
            self.inner.set_queue_paused(queue, paused),
        )
        .await
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        self.read("paused_queues", self.inner.paused_queues()).await
    }

    async fn register_worker(&self, worker: WorkerRecord) -> Result<()> {
        self.write("register_worker", self.inner.register_worker(worker))
            .await
    }

    async fn touch_worker(&self, name: &str) -> Result<bool> {
        self.write("touch_worker", self.inner.touch_worker(name))
            .await
    }

    async fn deregister_worker(&self, name: &str) -> Result<bool> {
        self.write("deregister_worker", self.inner.deregister_worker(name))
            .await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.read("list_workers", self.inner.list_workers()).await
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        self.write("prune_workers", self.inner.prune_workers(before))
            .await
    }
}

/// Expands to one `#[test]` per case of [`conformance`]: the fault wrapper's errors,
/// crash and pause on the harness's backend.
///
/// ```ignore
/// durable_jobs::fault_conformance_tests!(MyHarness);
/// ```
#[macro_export]
macro_rules! fault_conformance_tests {
    ($harness:ty) => {
        mod fault_conformance {
            use super::*;
            $crate::__fault_cases!($harness;
                error_before_reaches_nothing,
                error_after_commits_and_reports_an_error,
                crash_refuses_every_later_call,
                paused_write_past_its_lease_is_refused,
                same_seed_injects_the_same_faults,
            );
        }
    };
}

/// Expands each named fault case into a `#[test]`. Used by
/// [`crate::fault_conformance_tests`].
#[doc(hidden)]
#[macro_export]
macro_rules! __fault_cases {
    ($harness:ty; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testing::run_case::<$harness, _>(|h| {
                    Box::pin($crate::testing::fault::conformance::$case(h))
                });
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::{FaultPlan, Injected};
    use crate::Error;

    #[test]
    fn rates_are_checked() {
        let over = FaultPlan::new(1).error_before(1_001);
        assert!(matches!(
            over,
            Err(Error::InvalidOption {
                option: "error_before",
                ..
            })
        ));
        let total = FaultPlan::new(1)
            .error_before(600)
            .and_then(|p| p.error_after(600));
        assert!(matches!(
            total,
            Err(Error::InvalidOption {
                option: "fault_plan",
                ..
            })
        ));
    }

    #[test]
    fn reads_are_never_failed_after_or_paused() {
        let plan = FaultPlan::new(9)
            .error_after(500)
            .and_then(|p| p.pause(500))
            .expect("plan");
        for n in 0..500 {
            assert_eq!(plan.decide(n, super::Class::Read), None);
            assert_ne!(plan.decide(n, super::Class::Write), Some(Injected::Pause));
        }
    }
}
