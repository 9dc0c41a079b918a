//! A kit for testing your own jobs and workflows: a queue whose workers run on virtual
//! time, assertions on what was enqueued, an inline mode and direct execution.
//!
//! [`TestKit`] wraps a [`Queue`] over a storage that runs on a [`ManualClock`] (the memory
//! backend: `MemoryStorage::with_clock`). Its runs drain every due job with a real
//! [`Worker`] whose timers follow the same clock, and when every job that can run has run,
//! they move the clock straight to the next due time (a delayed job, a retry's backoff, a
//! durable sleep, a signal's timeout, a schedule tick) and drain again. A workflow that
//! spans a week of sleeps, retries and signals finishes in milliseconds, in the order its
//! timers would fire, with no real waiting.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), durable_jobs::testing::kit::KitError> {
//! use durable_jobs::testing::kit::JobMatcher;
//! use durable_jobs::{JobContext, JobOptions, TaskError};
//! use std::time::Duration;
//!
//! let kit = durable_jobs_memory::MemoryStorage::test_kit(); // feature `testing`
//! kit.queue().register("remind", |ctx: JobContext, user: String| async move {
//!     ctx.sleep(Duration::from_secs(3 * 86_400)).await?; // three days, durably
//!     Ok::<_, TaskError>(format!("reminded {user}"))
//! });
//! let id = kit.queue().enqueue("remind", &"ada", JobOptions::new()).await?;
//! let report = kit.run_until_idle().await?;
//! assert_eq!(report.virtual_elapsed(), Duration::from_secs(3 * 86_400));
//! assert_eq!(kit.job(id).await?.result, Some(serde_json::json!("reminded ada")));
//! kit.assert_enqueued(JobMatcher::task("remind").payload(serde_json::json!("ada"))).await;
//! # Ok(()) }
//! ```

mod matcher;
mod perform;

pub use matcher::JobMatcher;

use crate::clock::{Clock, ManualClock};
use crate::error::Error;
use crate::job::{far_future, Job, JobId, JobStatus};
use crate::options::JobOptions;
use crate::queue::Queue;
use crate::storage::{DynStorage, JobFilter, Storage};
use crate::worker::{QueueConfig, Worker, WorkerOptions, WorkerReport, DEFAULT_CONCURRENCY};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// The most clock jumps one run makes before it gives up with [`KitError::NeverIdle`],
/// unless [`TestKit::max_jumps`] says otherwise: enough for any finite workflow a test
/// runs, few enough that a job rescheduling itself forever fails fast.
pub const DEFAULT_MAX_JUMPS: u32 = 10_000;

/// Jobs read from storage per page while the kit looks at every job.
const PAGE: usize = 500;

/// What the kit's calls fail with.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The engine or the storage refused a call.
    #[error(transparent)]
    Engine(#[from] Error),
    /// A run kept finding work after [`TestKit::max_jumps`] jumps of the clock: a job
    /// that retries or reschedules itself forever, or a schedule under
    /// [`TestKit::run_until_idle`] (which never ends: use [`TestKit::run_for`]).
    #[error(
        "still busy after {jumps} jumps of the virtual clock (now {now}): a job that retries \
         or reschedules itself forever? Raise TestKit::max_jumps, or bound the run with run_for"
    )]
    NeverIdle {
        /// Jumps made.
        jumps: u32,
        /// The virtual time when the run gave up.
        now: DateTime<Utc>,
    },
    /// [`TestKit::job`] asked for a job that does not exist.
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
}

/// What one run of the kit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KitReport {
    /// What the workers did, summed over every drain of the run.
    pub work: WorkerReport,
    /// How many times workers drained the queues.
    pub drains: u32,
    /// How many times the clock jumped to a next due time.
    pub jumps: u32,
    /// The virtual time when the run began.
    pub started_at: DateTime<Utc>,
    /// The virtual time when it ended.
    pub ended_at: DateTime<Utc>,
}

impl KitReport {
    fn starting(at: DateTime<Utc>) -> Self {
        KitReport {
            work: WorkerReport::default(),
            drains: 0,
            jumps: 0,
            started_at: at,
            ended_at: at,
        }
    }

    fn add(&mut self, r: WorkerReport) {
        sum(&mut self.work, r);
        self.drains += 1;
    }

    /// How far the virtual clock moved during the run.
    pub fn virtual_elapsed(&self) -> Duration {
        (self.ended_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// Adds `r`'s counts to `into`.
fn sum(into: &mut WorkerReport, r: WorkerReport) {
    into.completed += r.completed;
    into.failed += r.failed;
    into.retried += r.retried;
    into.released += r.released;
    into.suspended += r.suspended;
    into.lost += r.lost;
}

/// A queue for tests whose workers run on virtual time. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TestKit {
    queue: Queue,
    clock: ManualClock,
    options: WorkerOptions,
    inline: bool,
    max_jumps: u32,
}

impl TestKit {
    /// A kit over `storage`, which must read its time from `clock` (for the memory
    /// backend: `MemoryStorage::with_clock(clock.clone())`, or `MemoryStorage::test_kit()`
    /// for both at once; SQLite: `SqliteOptions::manual_clock`). Register handlers on
    /// [`TestKit::queue`].
    pub fn new(storage: DynStorage, clock: ManualClock) -> Self {
        TestKit {
            queue: Queue::new(storage),
            clock,
            options: WorkerOptions::new(),
            inline: false,
            max_jumps: DEFAULT_MAX_JUMPS,
        }
    }

    /// The options of the workers the kit runs (concurrency, lease duration, forbidden
    /// flags...). Their timers always follow the kit's clock. With no queue named, each
    /// drain serves every queue that holds a job, with [`DEFAULT_CONCURRENCY`].
    pub fn worker_options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Inline mode: [`TestKit::enqueue`] runs the job (and whatever else is due, such as
    /// the jobs it enqueues) before it returns. Off by default. Jobs that the code under
    /// test enqueues through the [`Queue`] itself run at the next run of the kit: call
    /// [`TestKit::run_due`] after it.
    pub fn inline(mut self, on: bool) -> Self {
        self.inline = on;
        self
    }

    /// The most jumps of the clock one run makes; [`DEFAULT_MAX_JUMPS`] by default.
    pub fn max_jumps(mut self, jumps: u32) -> Self {
        self.max_jumps = jumps;
        self
    }

    /// The queue: register handlers, enqueue, signal, cancel through it.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The virtual clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The virtual time now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Moves the clock forward by `by` without running anything: jobs that fall due run
    /// at the next run ([`TestKit::run_due`] and the others).
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// One job as stored now.
    ///
    /// # Errors
    /// [`KitError::NoSuchJob`] when it does not exist; storage errors.
    pub async fn job(&self, id: JobId) -> Result<Job, KitError> {
        self.queue.get_job(id).await?.ok_or(KitError::NoSuchJob(id))
    }

    /// Enqueues a job as [`Queue::enqueue`] does. In [inline mode](TestKit::inline) it
    /// then runs every due job, this one included, at the current virtual time. Returns
    /// the job as stored when the call returns: in inline mode with its result, its
    /// error and the retry it scheduled, or waiting when it suspended.
    ///
    /// # Errors
    /// As [`Queue::enqueue`] and [`TestKit::run_due`].
    pub async fn enqueue<A: Serialize + ?Sized>(
        &self,
        task: &str,
        args: &A,
        options: JobOptions,
    ) -> Result<Job, KitError> {
        let id = self.queue.enqueue(task, args, options).await?;
        if self.inline {
            self.run_due().await?;
        }
        self.job(id).await
    }

    /// Runs every job due now, and what they make due now (children, retries without a
    /// delay, woken parents), without moving the clock.
    ///
    /// # Errors
    /// Worker option errors, and storage errors that stop a worker.
    pub async fn run_due(&self) -> Result<KitReport, KitError> {
        let mut report = KitReport::starting(self.now());
        report.add(self.drain().await?);
        report.ended_at = self.now();
        Ok(report)
    }

    /// Runs until no job will ever become due by itself: runs what is due, jumps the
    /// clock to the earliest time a pending, retrying or waiting job falls due (or a
    /// running job's lease expires), and runs again. Jobs waiting for a signal or for
    /// children with no timer, and jobs no worker can claim (a paused queue, a task with
    /// no handler), stay as they are. Schedules are not followed here, as their ticks
    /// never end; [`TestKit::run_for`] follows them.
    ///
    /// # Errors
    /// [`KitError::NeverIdle`] after [`TestKit::max_jumps`] jumps; as [`TestKit::run_due`].
    pub async fn run_until_idle(&self) -> Result<KitReport, KitError> {
        self.run(None).await
    }

    /// Runs for `span` of virtual time: as [`TestKit::run_until_idle`], but also jumping
    /// to schedule ticks, and never past `now + span`, where the clock ends.
    ///
    /// # Errors
    /// As [`TestKit::run_until_idle`].
    pub async fn run_for(&self, span: Duration) -> Result<KitReport, KitError> {
        let until = self
            .now()
            .checked_add_signed(chrono::Duration::from_std(span).unwrap_or(chrono::Duration::MAX))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.run(Some(until)).await
    }

    /// Runs until the virtual time `at`, as [`TestKit::run_for`]. A time in the past
    /// runs what is due now.
    ///
    /// # Errors
    /// As [`TestKit::run_until_idle`].
    pub async fn run_until(&self, at: DateTime<Utc>) -> Result<KitReport, KitError> {
        self.run(Some(at.max(self.now()))).await
    }

    async fn run(&self, until: Option<DateTime<Utc>>) -> Result<KitReport, KitError> {
        let mut report = KitReport::starting(self.now());
        loop {
            report.add(self.drain().await?);
            let Some(next) = self.next_due(until).await? else {
                break;
            };
            if report.jumps >= self.max_jumps {
                return Err(KitError::NeverIdle {
                    jumps: report.jumps,
                    now: self.now(),
                });
            }
            self.clock.set(next);
            report.jumps += 1;
        }
        if let Some(until) = until {
            if self.now() < until {
                self.clock.set(until);
                report.add(self.drain().await?);
            }
        }
        report.ended_at = self.now();
        Ok(report)
    }

    /// Drains with a fresh worker on the kit's clock until nothing claimable is left.
    /// Serving every queue that holds a job, it drains again when the jobs it ran filled
    /// a queue it did not serve.
    async fn drain(&self) -> Result<WorkerReport, KitError> {
        let options = self
            .options
            .clone()
            .clock(self.clock.clone())
            .name("testkit");
        if !options.queues.is_empty() {
            return Ok(Worker::new(self.queue.clone(), options)?.drain().await?);
        }
        let mut total = WorkerReport::default();
        let mut served = self.queue_names().await?;
        loop {
            let mut options = options.clone();
            options.queues = served
                .iter()
                .map(|name| QueueConfig {
                    name: name.clone(),
                    concurrency: DEFAULT_CONCURRENCY,
                })
                .collect();
            sum(
                &mut total,
                Worker::new(self.queue.clone(), options)?.drain().await?,
            );
            let now_held = self.queue_names().await?;
            if now_held.is_subset(&served) {
                return Ok(total);
            }
            served.extend(now_held);
        }
    }

    /// Every queue that holds a job, and `default`.
    async fn queue_names(&self) -> Result<BTreeSet<String>, KitError> {
        let mut names: BTreeSet<String> = self
            .queue
            .storage()
            .counts()
            .await?
            .into_iter()
            .map(|c| c.queue)
            .collect();
        names.insert(crate::job::DEFAULT_QUEUE.to_string());
        Ok(names)
    }

    /// The earliest time after now at which something falls due: an unfinished job's
    /// run_at (a delay, a retry, a sleep, a signal's timeout), a running job's lease
    /// expiry and, with a bound, a schedule's next tick; `None` when nothing falls due by
    /// `until`.
    async fn next_due(
        &self,
        until: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, KitError> {
        let now = self.now();
        // A waiting job with no timer is parked at the far future.
        let never = far_future();
        let mut times = Vec::new();
        let unfinished = [
            JobStatus::Pending,
            JobStatus::Retrying,
            JobStatus::Waiting,
            JobStatus::Running,
        ];
        for job in self.jobs(&unfinished).await? {
            let at = match (&job.status, &job.lease) {
                (JobStatus::Running, Some(lease)) => lease.expires_at,
                (JobStatus::Running, None) => continue,
                _ => job.run_at,
            };
            times.push(at);
        }
        if let Some(until) = until {
            for s in self.queue.schedules().await? {
                if let (false, Some(tick)) = (s.paused, s.next_tick) {
                    times.push(tick);
                }
            }
            times.retain(|t| *t <= until);
        }
        Ok(times.into_iter().filter(|t| *t > now && *t < never).min())
    }

    /// Every job with one of `statuses` (every job when empty), in id order.
    async fn jobs(&self, statuses: &[JobStatus]) -> Result<Vec<Job>, KitError> {
        let mut out = Vec::new();
        let mut after_id = None;
        loop {
            let page = self
                .queue
                .storage()
                .list_jobs(JobFilter {
                    statuses: statuses.to_vec(),
                    after_id,
                    limit: Some(PAGE),
                    ..JobFilter::default()
                })
                .await?;
            let full = page.len() == PAGE;
            after_id = page.last().map(|j| j.id);
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }
}
