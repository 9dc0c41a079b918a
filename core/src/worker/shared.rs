//! State shared by one running worker's tasks.

use super::health::HealthState;
use super::options::WorkerOptions;
use super::threads::{AttemptState, AttemptThreads};
use crate::error::Error;
use crate::idhash::IdMap;
use crate::job::Lease;
use crate::metric::MetricsCache;
use crate::queue::Queue;
use crate::storage::Storage;
use crate::workflow::CheckpointCommitter;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Marks a queue loop that is not idle.
pub(crate) const NOT_IDLE: u64 = u64::MAX;

/// What one worker run shares between its queue loops, completer and maintenance tasks.
pub(crate) struct Shared {
    pub(crate) queue: Queue,
    pub(crate) opts: WorkerOptions,
    pub(crate) name: String,
    pub(crate) tasks: Vec<String>,
    /// True once the run is stopping; handlers see it as cancellation.
    pub(crate) stopping: watch::Sender<bool>,
    /// True for a `drain`: a queue loop confirms it is idle with one more claim once
    /// its work has run (see `claim::ClaimState::drained_at`).
    pub(crate) draining: AtomicBool,
    /// True once the run's last outcome is written (the completer ended): leases are
    /// renewed until then, through the shutdown grace and past it for a blocking
    /// handler's thread.
    pub(crate) finished: watch::Sender<bool>,
    /// Bumped by the worker itself when work may have appeared (retries, releases,
    /// reclaimed leases).
    pub(crate) internal_wake: watch::Sender<u64>,
    storage_wake: Option<watch::Receiver<u64>>,
    queue_wake: watch::Receiver<u64>,
    /// Leases of held jobs (running or buffered), renewed by the heartbeat task.
    pub(crate) leases: Mutex<IdMap<HeldLease>>,
    /// Jobs claimed whose outcome is not yet written.
    pub(crate) in_flight: AtomicUsize,
    /// Per queue loop: the wake generation at which it last found nothing to claim with
    /// nothing running, or [`NOT_IDLE`].
    pub(crate) idle_at: Vec<AtomicU64>,
    /// Notified when in_flight or idle_at change, for drain's idle check.
    pub(crate) progress: Notify,
    pub(crate) counters: Counters,
    /// Metric handles per queue and task.
    pub(crate) metrics: MetricsCache,
    /// What [`crate::Worker::health`] reports; outlives the run.
    pub(crate) health: Arc<HealthState>,
    /// An error retrying cannot fix: the run stops and returns it.
    fatal: Mutex<Option<Error>>,
    /// When the run started, on the clock its timers follow: their ticks count from here.
    pub(crate) started: chrono::DateTime<chrono::Utc>,
    /// The writer that group-commits the checkpoints of every job this run executes.
    pub(crate) checkpoints: CheckpointCommitter,
}

/// Tells a held job's handler (or the buffer, before it starts) that its lease was
/// lost. Clones share the flag.
///
/// A flag and a [`Notify`] in the job's [`AttemptState`], rather than a `watch` channel:
/// every claimed job makes one, and dropping a `watch` sender wakes its eight notifiers
/// even when no one waits, which cost more than the rest of a no-op job's bookkeeping.
#[derive(Clone, Default)]
pub(crate) struct LeaseSignal(Arc<AttemptState>);

impl LeaseSignal {
    /// A lease not lost.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The attempt's blocking threads, counted in the same allocation.
    pub(crate) fn threads(&self) -> AttemptThreads {
        AttemptThreads::sharing(self.0.clone())
    }

    /// Marks the lease lost and wakes whoever waits for that.
    pub(crate) fn set_lost(&self) {
        self.0.lost.store(true, Ordering::SeqCst);
        self.0.lost_changed.notify_waiters();
    }

    /// True once the lease was lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.0.lost.load(Ordering::SeqCst)
    }

    /// Resolves once the lease is lost; never, if it is not.
    pub(crate) async fn lost(&self) {
        loop {
            // Registered before the flag is read, so a loss in between is not missed.
            let changed = self.0.lost_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_lost() {
                return;
            }
            changed.await;
        }
    }
}

/// A lease this worker holds, running or buffered.
pub(crate) struct HeldLease {
    pub(crate) lease: Lease,
    /// Tells the job's handler (or the buffer, before it starts) the lease was lost.
    pub(crate) lost: LeaseSignal,
    /// Until when the lease surely lasts, on the worker's clock: the lease duration
    /// counted from when the claim or the last renewal that succeeded was *sent*. Storage
    /// set the expiry later than that, on its own clock, so this never overstates it
    /// whatever the skew between the clocks.
    pub(crate) lasts_until: chrono::DateTime<chrono::Utc>,
}

impl HeldLease {
    /// True when `lease` is this one (not an earlier or later claim of the same job).
    pub(crate) fn is(&self, lease: &Lease) -> bool {
        self.lease.token == lease.token && self.lease.attempt == lease.attempt
    }
}

/// What a run did, counted as outcomes are written.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) suspended: AtomicU64,
    pub(crate) snoozed: AtomicU64,
    pub(crate) lost: AtomicU64,
}

/// What a worker run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed for good.
    pub failed: u64,
    /// Attempts that failed and were scheduled to retry.
    pub retried: u64,
    /// Jobs returned unfinished without spending an attempt: at shutdown, and prefetched
    /// jobs whose lease ran too short to start (see [`crate::Event::LeaseDropped`]).
    pub released: u64,
    /// Workflow runs that suspended to wait (sleep, signal, children).
    pub suspended: u64,
    /// Attempts that snoozed: rescheduled without spending the attempt.
    pub snoozed: u64,
    /// Outcomes not written because the lease was lost (reclaimed or cancelled), and
    /// prefetched jobs dropped unstarted because their lease was lost.
    pub lost: u64,
}

impl Shared {
    pub(crate) fn new(
        queue: Queue,
        opts: WorkerOptions,
        name: String,
        health: Arc<HealthState>,
    ) -> Self {
        let (stopping, _) = watch::channel(false);
        let (finished, _) = watch::channel(false);
        let (internal_wake, _) = watch::channel(0);
        let storage_wake = queue.storage().wakeups();
        let queue_wake = queue.subscribe_wake();
        let loops = opts.queues.len();
        let checkpoint_writers = opts.checkpoint_writers;
        let started = opts.clock.now();
        // Through the queue's instrumented handle, so checkpoint writes are observed
        // like every other storage call.
        let queue_storage = queue.storage().clone();
        Shared {
            tasks: queue.task_names(),
            queue,
            opts,
            name,
            stopping,
            finished,
            internal_wake,
            storage_wake,
            queue_wake,
            leases: Mutex::new(IdMap::default()),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle_at: (0..loops).map(|_| AtomicU64::new(NOT_IDLE)).collect(),
            progress: Notify::new(),
            counters: Counters::default(),
            metrics: MetricsCache::default(),
            health,
            fatal: Mutex::new(None),
            started,
            checkpoints: CheckpointCommitter::start(Arc::new(queue_storage), checkpoint_writers),
        }
    }

    /// Stops the run because of an error that retrying cannot fix (a schema that was
    /// never migrated or is newer than this library): the run returns it.
    pub(crate) fn fail_fatally(&self, error: Error) {
        tracing::error!(error = %error, "worker stopping: retrying cannot fix this error");
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_none() {
            *fatal = Some(error);
        }
        drop(fatal);
        self.stopping.send_replace(true);
    }

    /// The fatal error that stopped the run, if any.
    pub(crate) fn take_fatal(&self) -> Option<Error> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The sum of every wake source's version: it changes whenever any of them does, and
    /// reading it involves no task hop, so drain's idle check cannot miss a wake.
    pub(crate) fn wake_generation(&self) -> u64 {
        let s = self.storage_wake.as_ref().map_or(0, |r| *r.borrow());
        let q = *self.queue_wake.borrow();
        let i = *self.internal_wake.borrow();
        s.wrapping_add(q).wrapping_add(i)
    }

    /// Receivers for every wake source, for one loop to wait on.
    pub(crate) fn wakes(&self) -> Wakes {
        Wakes {
            sources: [
                self.storage_wake.clone(),
                Some(self.queue_wake.clone()),
                Some(self.internal_wake.subscribe()),
            ],
        }
    }

    pub(crate) fn bump_internal_wake(&self) {
        self.internal_wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub(crate) fn leases(&self) -> std::sync::MutexGuard<'_, IdMap<HeldLease>> {
        // Single inserts and removes; a poisoned map is still consistent.
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn report(&self) -> WorkerReport {
        let c = &self.counters;
        WorkerReport {
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            suspended: c.suspended.load(Ordering::Relaxed),
            snoozed: c.snoozed.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
        }
    }

    /// True when no outcome is pending and every loop found nothing to claim since the
    /// last wake.
    pub(crate) fn is_drained(&self) -> bool {
        if self.in_flight.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let generation = self.wake_generation();
        self.idle_at
            .iter()
            .all(|g| g.load(Ordering::SeqCst) == generation)
    }
}

/// The wake sources one queue loop waits on.
pub(crate) struct Wakes {
    sources: [Option<watch::Receiver<u64>>; 3],
}

impl Wakes {
    /// Marks every source's current version as seen.
    pub(crate) fn mark_seen(&mut self) {
        for rx in self.sources.iter_mut().flatten() {
            rx.borrow_and_update();
        }
    }

    /// Resolves when any source changes after the last `mark_seen`. A source whose
    /// sender is gone is dropped, so it cannot spin.
    pub(crate) async fn changed(&mut self) {
        let [a, b, c] = &mut self.sources;
        let res = tokio::select! {
            r = changed(a) => (0, r),
            r = changed(b) => (1, r),
            r = changed(c) => (2, r),
        };
        if res.1.is_err() {
            self.sources[res.0] = None;
        }
    }
}

async fn changed(rx: &mut Option<watch::Receiver<u64>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}
