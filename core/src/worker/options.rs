//! Worker options and their validation.

use super::timer::TimerClock;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::maintenance::retention::{
    RetentionPolicy, DEFAULT_RETENTION_BATCH, DEFAULT_RETENTION_INTERVAL,
};
use crate::options::validate_queue_name;
use std::sync::Arc;
use std::time::Duration;

/// Jobs one queue runs at once when no concurrency is given. Defaults to 10.
pub const DEFAULT_CONCURRENCY: usize = 10;
/// How often an idle worker looks for due jobs without a wake-up. Defaults to 1 second.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a claim's lease lasts before it must be renewed. Defaults to 30 seconds.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);
/// How long shutdown waits for running jobs before returning them. Defaults to 30 seconds.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often expired leases are swept. Defaults to 5 seconds.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The most completions written in one storage call. Defaults to 1000: with one writer
/// (see [`DEFAULT_COMPLETION_WRITERS`]) a batch collects whatever finished while the
/// previous write was in flight, so under load each statement and each commit carries
/// hundreds of outcomes, and at rest a lone outcome is written at once.
pub const DEFAULT_COMPLETION_BATCH: usize = 1000;
/// How many claims one routing queue may have in flight at once. Defaults to 3: once
/// quick handlers ran in place on the queue loop, a third claim kept the PostgreSQL
/// server busier in the benchmark's drains (4 of 5 interleaved pairs faster at
/// concurrency 10, 5 of 5 at 500, about +8% there). Claims never hold more jobs than the
/// queue's concurrency plus its prefetch, so a small queue is unaffected.
pub const DEFAULT_CLAIMS_IN_FLIGHT: usize = 3;
/// How many outcome writes may be in flight at once. Defaults to 1: in the benchmark's
/// drains, one writer with batches of up to 1000 beat four writers with batches of 250 on
/// every backend (PostgreSQL: about 15% more jobs/s, 8 of 10 interleaved runs; memory and
/// SQLite too): parallel writers split the same outcomes into more, smaller statements
/// and commits (four writers averaged 125 outcomes per write in a PostgreSQL drain).
pub const DEFAULT_COMPLETION_WRITERS: usize = 1;
/// How many checkpoint writes (the group commit of durable calls and steps) may be in
/// flight at once. Defaults to 1: on the benchmark's PostgreSQL (same 2-core machine),
/// one writer gave 12.5k/11.7k/12.8k checkpointed steps/s with 8 jobs against
/// 10.7k/10.7k/11.1k for two writers and about 10.2k for three (three interleaved
/// rounds): the server's CPU, not the round trip, bounds the steps there, and more
/// writers split the same checkpoints into more statements and commits. More writers pay
/// where a round trip is long and the server idle (a remote database).
pub const DEFAULT_CHECKPOINT_WRITERS: usize = 1;
/// How often the scheduler looks for due schedule ticks. Defaults to 1 second.
pub const DEFAULT_SCHEDULER_INTERVAL: Duration = Duration::from_secs(1);
/// The most jobs claimed in one storage call. Defaults to 500.
pub const DEFAULT_MAX_CLAIM_BATCH: usize = 500;
/// How often a worker samples the jobs-per-queue-and-status gauges with one counts query.
/// Defaults to 15 seconds (a typical Prometheus scrape interval); zero turns it off.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(15);
/// How long a dead worker's registry entry stays listed (as dead) before a live worker's
/// sweep removes it. Defaults to 1 hour.
pub const DEFAULT_WORKER_RETENTION: Duration = Duration::from_secs(3600);

/// One queue a worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's name.
    pub name: String,
    /// Jobs it runs at once.
    pub concurrency: usize,
}

/// How a [`crate::Worker`] runs. Setters never fail; [`crate::Worker::new`] validates.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    pub(crate) queues: Vec<QueueConfig>,
    pub(crate) poll_interval: Duration,
    pub(crate) lease_duration: Duration,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) sweep_interval: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) completion_batch: usize,
    pub(crate) completion_writers: usize,
    pub(crate) checkpoint_writers: usize,
    pub(crate) prefetch: Option<usize>,
    pub(crate) claims_in_flight: usize,
    pub(crate) max_claim_batch: usize,
    pub(crate) name: Option<String>,
    pub(crate) forbidden_flags: Vec<String>,
    pub(crate) scheduler: bool,
    pub(crate) scheduler_interval: Duration,
    pub(crate) metrics_interval: Duration,
    pub(crate) worker_retention: Duration,
    pub(crate) clock: TimerClock,
    pub(crate) retention: RetentionPolicy,
    pub(crate) retention_interval: Duration,
    pub(crate) retention_batch: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            queues: Vec::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            lease_duration: DEFAULT_LEASE_DURATION,
            heartbeat_interval: None,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            completion_batch: DEFAULT_COMPLETION_BATCH,
            completion_writers: DEFAULT_COMPLETION_WRITERS,
            checkpoint_writers: DEFAULT_CHECKPOINT_WRITERS,
            prefetch: None,
            claims_in_flight: DEFAULT_CLAIMS_IN_FLIGHT,
            max_claim_batch: DEFAULT_MAX_CLAIM_BATCH,
            name: None,
            forbidden_flags: Vec::new(),
            scheduler: true,
            scheduler_interval: DEFAULT_SCHEDULER_INTERVAL,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            worker_retention: DEFAULT_WORKER_RETENTION,
            clock: TimerClock::default(),
            retention: RetentionPolicy::default(),
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            retention_batch: DEFAULT_RETENTION_BATCH,
        }
    }
}

impl WorkerOptions {
    /// Defaults; with no queue added, the worker serves `default` with
    /// [`DEFAULT_CONCURRENCY`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `queue`, running up to `concurrency` of its jobs at once.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push(QueueConfig {
            name: queue.into(),
            concurrency,
        });
        self
    }

    /// How often to look for due jobs without a wake-up. Defaults to
    /// [`DEFAULT_POLL_INTERVAL`].
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The lease each claim takes. Defaults to [`DEFAULT_LEASE_DURATION`].
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.lease_duration = lease;
        self
    }

    /// How often running jobs' leases are renewed. Defaults to a third of the lease.
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = Some(every);
        self
    }

    /// How often expired leases are swept. Defaults to [`DEFAULT_SWEEP_INTERVAL`].
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every;
        self
    }

    /// How long shutdown waits for running jobs. Defaults to [`DEFAULT_SHUTDOWN_GRACE`].
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The most completions per storage write. Defaults to [`DEFAULT_COMPLETION_BATCH`].
    pub fn completion_batch(mut self, n: usize) -> Self {
        self.completion_batch = n;
        self
    }

    /// How many outcome writes may run at once. Defaults to [`DEFAULT_COMPLETION_WRITERS`].
    pub fn completion_writers(mut self, n: usize) -> Self {
        self.completion_writers = n;
        self
    }

    /// How many checkpoint writes may run at once. Defaults to
    /// [`DEFAULT_CHECKPOINT_WRITERS`]. Checkpoints that arrive while every writer is busy
    /// share the next write; each call or step still returns only once its own
    /// checkpoint is durable.
    pub fn checkpoint_writers(mut self, n: usize) -> Self {
        self.checkpoint_writers = n;
        self
    }

    /// Claims up to this many jobs ahead of free slots into a local queue per routing
    /// queue (graphile-worker's local queue), so short jobs do not wait for a claim round
    /// trip each. Prefetched jobs are leased (and renewed) like running ones, and released
    /// unspent at shutdown; other workers cannot take them meanwhile.
    ///
    /// A prefetched job starts only while this worker still holds its lease with time to
    /// spare: at least half of the lease minus the heartbeat interval left (10 s of the
    /// default 30 s lease), counted on [`WorkerOptions::clock`] from when the claim or the
    /// last renewal that landed was sent. Renewals that land keep every held lease above
    /// that, so the rule only trips once they failed or stalled. A job whose lease was
    /// lost meanwhile (reclaimed by another worker, or cancelled) is dropped without
    /// writing anything; one whose lease ran short is released unspent. Both are reported
    /// as [`crate::Event::LeaseDropped`]; neither runs its handler here.
    ///
    /// By default each routing queue sizes its local queue from what it measures: deep
    /// enough that its slots stay busy for four claim round trips at the rate its handlers
    /// finish, never deeper than the jobs its slots start within a tenth of the lease, and
    /// at most [`crate::worker::DEFAULT_MAX_PREFETCH`]. Quick jobs thus get a deep local
    /// queue and slow ones none. Setting a depth here (0 turns the local queue off)
    /// replaces that sizing.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// How many claims one routing queue may have in flight at once. Defaults to
    /// [`DEFAULT_CLAIMS_IN_FLIGHT`]. A queue with a concurrency of one claims one batch at
    /// a time whatever this says: claims racing on the server split the first jobs
    /// between them, and with one slot that would show as jobs started out of priority
    /// order.
    pub fn claims_in_flight(mut self, n: usize) -> Self {
        self.claims_in_flight = n;
        self
    }

    /// The most jobs per claim. Defaults to [`DEFAULT_MAX_CLAIM_BATCH`].
    pub fn max_claim_batch(mut self, n: usize) -> Self {
        self.max_claim_batch = n;
        self
    }

    /// The worker's name, recorded on the jobs it claims. Defaults to `worker-<pid>-<random>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Refuses jobs carrying any of these flags.
    pub fn forbid_flags<I, S>(mut self, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.forbidden_flags
            .extend(flags.into_iter().map(Into::into));
        self
    }

    /// Runs the scheduler in this worker. Defaults to true; any number of workers may run
    /// it, each tick is enqueued once.
    pub fn scheduler(mut self, on: bool) -> Self {
        self.scheduler = on;
        self
    }

    /// How often the scheduler looks for due ticks. Defaults to
    /// [`DEFAULT_SCHEDULER_INTERVAL`].
    pub fn scheduler_interval(mut self, every: Duration) -> Self {
        self.scheduler_interval = every;
        self
    }

    /// How often this worker samples the `durable_jobs_jobs` gauges (jobs per queue and
    /// status) with one counts query. Defaults to [`DEFAULT_METRICS_INTERVAL`]; zero turns
    /// the sampling off. The counts read every job's index entry, so on a deep table a
    /// sample can take a while: the worker then skips ticks until a hundred times the
    /// last sample's duration has passed (at most about 1% of its time counting). The
    /// first sample comes at a random point of the first interval, so workers started
    /// together do not all count at once.
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.metrics_interval = every;
        self
    }

    /// How long dead workers stay in the registry, shown as dead, before this worker's
    /// sweep removes them. Defaults to [`DEFAULT_WORKER_RETENTION`].
    pub fn worker_retention(mut self, keep: Duration) -> Self {
        self.worker_retention = keep;
        self
    }

    /// The clock the worker's timers follow: the poll interval, heartbeats, lease sweeps,
    /// scheduler passes and metric samples wait until that much time has passed on it.
    /// Defaults to the system clock (tokio's timer). Give it the [`crate::ManualClock`] a
    /// memory storage runs on, and moving that clock fires the timers, so a test never
    /// waits in real time for a poll, a sweep or a schedule tick. Handler timeouts, the
    /// shutdown grace and the backoff after a failed storage call stay on real time: they
    /// bound work that takes real time.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = TimerClock::new(Arc::new(clock));
        self
    }

    /// How long finished jobs are kept, per final status, before this worker's retention
    /// purge deletes them. Defaults to [`RetentionPolicy::default`] (completed and
    /// cancelled 1 day, failed 7 days); [`RetentionPolicy::keep_forever`] turns it off.
    pub fn retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// How often this worker runs the retention purge. Defaults to
    /// [`DEFAULT_RETENTION_INTERVAL`].
    pub fn retention_interval(mut self, every: Duration) -> Self {
        self.retention_interval = every;
        self
    }

    /// The most workflow trees one retention batch deletes. Defaults to
    /// [`DEFAULT_RETENTION_BATCH`].
    pub fn retention_batch(mut self, n: usize) -> Self {
        self.retention_batch = n;
        self
    }

    pub(crate) fn validate(mut self) -> Result<Self> {
        if self.queues.is_empty() {
            self.queues.push(QueueConfig {
                name: crate::options::DEFAULT_QUEUE.into(),
                concurrency: DEFAULT_CONCURRENCY,
            });
        }
        for (i, q) in self.queues.iter().enumerate() {
            validate_queue_name(&q.name)?;
            if q.concurrency == 0 {
                return Err(invalid(
                    "concurrency",
                    format!(
                        "queue `{}` needs a concurrency of at least 1, found 0",
                        q.name
                    ),
                ));
            }
            if self.queues[..i].iter().any(|p| p.name == q.name) {
                return Err(invalid(
                    "queue",
                    format!("queue `{}` is listed twice", q.name),
                ));
            }
        }
        let positive = [
            ("poll_interval", self.poll_interval),
            ("lease_duration", self.lease_duration),
            ("sweep_interval", self.sweep_interval),
            ("scheduler_interval", self.scheduler_interval),
            ("retention_interval", self.retention_interval),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(invalid(
                    name,
                    "expected a positive duration, found zero".into(),
                ));
            }
        }
        if let Some(hb) = self.heartbeat_interval {
            if hb.is_zero() || hb >= self.lease_duration {
                return Err(invalid(
                    "heartbeat_interval",
                    format!(
                        "expected more than zero and less than the lease ({:?}), found {hb:?}",
                        self.lease_duration
                    ),
                ));
            }
        }
        if self.completion_batch == 0
            || self.max_claim_batch == 0
            || self.completion_writers == 0
            || self.checkpoint_writers == 0
            || self.claims_in_flight == 0
            || self.retention_batch == 0
        {
            return Err(invalid("batch", "batch sizes must be at least 1".into()));
        }
        Ok(self)
    }

    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.heartbeat_interval.unwrap_or(self.lease_duration / 3)
    }
}

fn invalid(option: &'static str, message: String) -> Error {
    Error::InvalidOption { option, message }
}
