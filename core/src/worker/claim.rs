//! One queue's loop: claim jobs in batches while slots are free, run them, hand their
//! outcomes to the completer, and on shutdown return what is still running.

use super::claim_order::{self, Ranked};
use super::complete::{Finish, RunMeta};
use super::execute::{classify, execute, Ended};
use super::options::QueueConfig;
use super::prefetch::{self, Verdict};
use super::shared::{HeldLease, LeaseSignal, Shared, NOT_IDLE};
use super::sizing::Sizer;
use super::threads::AttemptThreads;
use super::timer::plus;
use crate::instrumented::Backoff;
use crate::metric::JobMetrics;
use crate::storage::Storage;
use crate::storage::{ClaimedJob, DequeueParams};
use crate::task::{panic_message, TaskError};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};

type Outcome = Result<Value, TaskError>;

struct Running {
    set: JoinSet<Outcome>,
    /// Sizes the local queue from handler durations and claim round trips.
    sizer: Sizer,
    meta: HashMap<Id, RunMeta>,
    /// Each spawned attempt's blocking threads.
    threads: HashMap<Id, AttemptThreads>,
    /// False once handlers' first polls ran long [`SLOW_STARTS_IN_A_ROW`] times in a row:
    /// from then on every handler of this loop starts as a task of its own, so slow
    /// starts cannot stall the loop again.
    inline: bool,
    /// Slow first polls in a row so far.
    slow_starts: u32,
    /// The metric handles of the last job started: a loop's jobs mostly share a queue
    /// and task, and a match here skips the shared cache's lock and lookup.
    last_metrics: Option<Arc<JobMetrics>>,
    /// Handlers that ended so far, in place or as tasks: a claim that found nothing says
    /// the loop is idle only if none ended while it was out (one that did may have
    /// enqueued a job the claim's snapshot missed).
    ended: u64,
}

/// A first poll longer than this counts as slow.
const SLOW_FIRST_POLL: Duration = Duration::from_millis(1);
/// Slow first polls in a row that turn inline starts off. More than one, because on a
/// busy machine the thread can be preempted during any quick poll and make it look slow;
/// a handler that really computes before its first wait is slow every time.
const SLOW_STARTS_IN_A_ROW: u32 = 3;

impl Running {
    fn len(&self) -> usize {
        self.set.len()
    }

    /// Starts a claimed job's handler. Its first poll runs right here: a handler that
    /// finishes without waiting (the common short job) then costs no task, no wake-up
    /// and no hop between threads, and its outcome goes straight to the completer. One
    /// that waits continues as a task of its own, polled again from there (with its own
    /// waker: the first poll's waker does nothing).
    fn start(
        &mut self,
        shared: &Arc<Shared>,
        c: ClaimedJob,
        lost: LeaseSignal,
        now_us: i64,
        out: &mpsc::UnboundedSender<Finish>,
    ) {
        let metrics = match &self.last_metrics {
            Some(m) if *m.task == *c.job.task && *m.queue == *c.job.queue => m.clone(),
            _ => {
                let m = shared.metrics.get(&c.job.queue, &c.job.task);
                self.last_metrics = Some(m.clone());
                m
            }
        };
        let meta = RunMeta::with_metrics(&c, metrics);
        meta.metrics.started.increment(1);
        // In microseconds since the Unix epoch on both sides (`now_us` is the reading the
        // lease check took): chrono's subtraction goes through calendar dates, which cost
        // more than the rest of this bookkeeping.
        let waited = now_us.saturating_sub(c.job.run_at.timestamp_micros());
        meta.metrics.wait.record(waited.max(0) as f64 / 1e6);
        let threads = lost.threads();
        let mut fut: Pin<Box<dyn Future<Output = Outcome> + Send>> =
            Box::pin(execute(shared.clone(), c, lost, threads.clone()));
        if self.inline {
            let mut cx = Context::from_waker(Waker::noop());
            let first = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
            // One clock read for both the slow-poll check and the handler's run time:
            // timed from the attempt's start, which adds only the microseconds of making
            // its span and future to a millisecond bound.
            let ran = meta.started.elapsed();
            if ran > SLOW_FIRST_POLL {
                self.slow_starts += 1;
                self.inline = self.slow_starts < SLOW_STARTS_IN_A_ROW;
            } else {
                self.slow_starts = 0;
            }
            match first {
                // The attempt's future goes before its outcome: it holds the claimed job,
                // which storage then need not copy when it writes the outcome.
                Ok(Poll::Ready(outcome)) => {
                    drop(fut);
                    self.ended += 1;
                    self.sizer.handler_ran(ran);
                    return settle(shared, meta, ran, Ended::Returned(outcome), out);
                }
                Err(panic) => {
                    drop(fut);
                    self.ended += 1;
                    self.sizer.handler_ran(ran);
                    let ended = Ended::Panicked(panic_message(panic));
                    return settle(shared, meta, ran, ended, out);
                }
                Ok(Poll::Pending) => {}
            }
        }
        let handle = self.set.spawn(fut);
        self.meta.insert(handle.id(), meta);
        self.threads.insert(handle.id(), threads);
    }

    fn finish(
        &mut self,
        shared: &Arc<Shared>,
        done: Result<(Id, Outcome), JoinError>,
        out: &mpsc::UnboundedSender<Finish>,
    ) {
        let (id, ended) = match done {
            Ok((id, o)) => (id, Ended::Returned(o)),
            Err(e) if e.is_panic() => (e.id(), Ended::Panicked(panic_message(e.into_panic()))),
            Err(e) => (e.id(), Ended::Aborted),
        };
        let threads = self.threads.remove(&id);
        let Some(meta) = self.meta.remove(&id) else {
            return;
        };
        self.ended += 1;
        let ran = meta.started.elapsed();
        self.sizer.handler_ran(ran);
        // Aborted at shutdown while a blocking thread still runs: release the job (and
        // stop renewing its lease) only once the thread returned, so no second attempt
        // can start beside it. The task holds a sender, so the completer waits for it.
        if let (Ended::Aborted, Some(threads)) = (&ended, threads) {
            if threads.running() > 0 {
                tracing::warn!(
                    job_id = meta.job_id,
                    "a blocking handler's thread outlived the shutdown grace; the lease is held until it returns"
                );
                let (shared, out) = (shared.clone(), out.clone());
                tokio::spawn(async move {
                    threads.all_returned().await;
                    let ran = meta.started.elapsed();
                    settle(&shared, meta, ran, Ended::Aborted, &out);
                });
                return;
            }
        }
        settle(shared, meta, ran, ended, out);
    }
}

/// Hands a finished attempt's outcome to the completer; `ran` is how long it ran.
fn settle(
    shared: &Shared,
    meta: RunMeta,
    ran: Duration,
    ended: Ended,
    out: &mpsc::UnboundedSender<Finish>,
) {
    shared.leases().remove(&meta.job_id);
    meta.metrics.duration.record(ran.as_secs_f64());
    let finish = classify(shared, meta, ended);
    if out.send(finish).is_err() {
        // The completer only stops after every loop has ended, so this is unreachable
        // in practice; the lease then expires and the job is reclaimed.
        tracing::error!("completer gone; outcome left to lease expiry");
    }
}

pub(crate) async fn run_queue(
    shared: Arc<Shared>,
    index: usize,
    cfg: QueueConfig,
    out: mpsc::UnboundedSender<Finish>,
) {
    let mut running = Running {
        set: JoinSet::new(),
        sizer: Sizer::new(
            shared.opts.prefetch,
            cfg.concurrency,
            shared.opts.lease_duration,
        ),
        meta: HashMap::new(),
        threads: HashMap::new(),
        inline: true,
        slow_starts: 0,
        last_metrics: None,
        ended: 0,
    };
    let mut wakes = shared.wakes();
    let mut stop = shared.stopping.subscribe();
    let mut st = ClaimState {
        buffer: VecDeque::new(),
        maybe_more: true,
        drained_at: None,
        probing: false,
        error_wait: Duration::ZERO,
        backoff: Backoff::default(),
        claiming: 0,
    };
    // Claims run as tasks, up to `claims_in_flight` at once, so one claim's round trip
    // does not stall the next while slots are free.
    let mut claims: JoinSet<ClaimOutcome> = JoinSet::new();
    let params = |limit| DequeueParams {
        queues: vec![cfg.name.clone()],
        tasks: shared.tasks.clone(),
        limit,
        lease_duration: shared.opts.lease_duration,
        holder: shared.name.clone(),
        forbidden_flags: shared.opts.forbidden_flags.clone(),
    };
    loop {
        while let Some(done) = running.set.try_join_next_with_id() {
            running.finish(&shared, done, &out);
        }
        while let Some(done) = claims.try_join_next() {
            st.take(&shared, index, done, &mut running, &claims);
        }
        if shared.is_stopping() {
            break;
        }
        // Jobs held at once: running plus the local queue, whose depth follows what the
        // loop measures (or the user's fixed prefetch).
        let capacity = cfg.concurrency + running.sizer.local_queue();
        let batch = capacity.min(shared.opts.max_claim_batch);
        // Refill only once a good share of the batch is free, so a busy queue claims in
        // batches instead of one job per finished job.
        let refill_at = (batch / 2).max(1);
        let held = running.len() + st.buffer.len() + st.claiming;
        // The depth can shrink below what is already held.
        let free = capacity.saturating_sub(held);
        // A loop with one slot claims one batch at a time: claims racing on the server
        // split the first jobs between them, and with one slot the split shows as jobs
        // started out of priority order (the merge into the local queue only mends it
        // for claims that come back while the other's jobs still wait).
        let in_flight_cap = if st.probing || cfg.concurrency == 1 {
            1
        } else {
            shared.opts.claims_in_flight
        };
        if st.maybe_more
            && st.error_wait.is_zero()
            && claims.len() < in_flight_cap
            && free > 0
            && (free >= refill_at || held == 0)
        {
            wakes.mark_seen();
            let generation = shared.wake_generation();
            shared.idle_at[index].store(NOT_IDLE, Ordering::SeqCst);
            st.drained_at = None;
            let want = free.min(batch);
            st.claiming += want;
            let storage = shared.queue.storage().clone();
            let p = params(want);
            let clock = shared.opts.clock.clone();
            let ended = running.ended;
            claims.spawn(async move {
                let sent_at = clock.now();
                let sent = Instant::now();
                let result = storage.dequeue(p).await;
                ClaimOutcome {
                    generation,
                    ended,
                    want,
                    sent_at,
                    took: sent.elapsed(),
                    result,
                }
            });
            // Let the claim task send its query now: handlers started in place below
            // would otherwise keep this thread (and the task, queued behind the loop)
            // busy until the loop next waits, leaving the server idle meanwhile.
            tokio::task::yield_now().await;
            continue;
        }
        // Claims go out first (above), then the buffered jobs start; those that finish in
        // place free their slots at once, so look at claiming again before waiting. A
        // buffered job whose lease was lost or ran short is dropped instead (see
        // `prefetch`): its handler must not run beside the worker that holds it now.
        let mut moved = false;
        while running.len() < cfg.concurrency {
            let Some((c, lost)) = st.buffer.pop_front() else {
                break;
            };
            // One clock reading for the lease check and the job's wait metric.
            let now_us = shared.opts.clock.now_micros();
            match prefetch::judge(&shared, &c, &lost, now_us) {
                Verdict::Start => running.start(&shared, c, lost, now_us, &out),
                Verdict::Drop(reason) => prefetch::drop_unstarted(&shared, &c, reason, &out),
            }
            moved = true;
        }
        if moved {
            continue;
        }
        // Everything the last (short) claim took has run and no wake came since: the
        // loop is idle as that claim found it. A `drain` asks once more instead: a
        // handler may have enqueued through a connection of its own (SQL in a
        // transactional step), whose notification may still be on its way, and the
        // drain must not end before that job ran. That claim, found empty, marks it idle.
        if let Some(generation) = st.drained_at {
            if !st.maybe_more
                && running.len() == 0
                && st.buffer.is_empty()
                && claims.is_empty()
                && shared.idle_at[index].load(Ordering::SeqCst) != generation
            {
                if shared.draining.load(Ordering::SeqCst) {
                    st.drained_at = None;
                    st.maybe_more = true;
                    continue;
                }
                shared.idle_at[index].store(generation, Ordering::SeqCst);
                shared.progress.notify_waiters();
            }
        }
        let backoff = st.error_wait;
        tokio::select! {
            _ = stop.changed() => {}
            Some(done) = claims.join_next(), if !claims.is_empty() => {
                st.take(&shared, index, done, &mut running, &claims);
            }
            Some(done) = running.set.join_next_with_id(), if running.len() > 0 => {
                running.finish(&shared, done, &out);
            }
            _ = wakes.changed(), if backoff.is_zero() => st.maybe_more = true,
            // Polls follow the worker's clock; the backoff after a failed claim waits
            // in real time, as the outage it waits out does.
            _ = async {
                if backoff.is_zero() {
                    shared.opts.clock.sleep(shared.opts.poll_interval).await;
                } else {
                    tokio::time::sleep(backoff).await;
                }
            } => {
                st.maybe_more = true;
                // The wait is over; the backoff's step stays, so the next failure waits
                // longer, until a claim succeeds.
                st.error_wait = Duration::ZERO;
            }
        }
    }
    // Claims still in flight may have leased jobs: take them into the buffer to release.
    while let Some(done) = claims.join_next().await {
        st.take(&shared, index, done, &mut running, &claims);
    }
    // Prefetched jobs never started: give them back at once, attempt unspent.
    for (c, _) in st.buffer {
        shared.leases().remove(&c.job.id);
        let meta = RunMeta::of(&shared, &c);
        if out.send(Finish::Release { meta }).is_err() {
            tracing::error!("completer gone; prefetched job left to lease expiry");
        }
    }
    shut_down(&shared, running, &out).await;
}

/// Waits for running jobs up to the grace period, then aborts the rest; aborted jobs are
/// released without spending their attempt.
async fn shut_down(
    shared: &Arc<Shared>,
    mut running: Running,
    out: &mpsc::UnboundedSender<Finish>,
) {
    let deadline = tokio::time::Instant::now() + shared.opts.shutdown_grace;
    while running.len() > 0 {
        tokio::select! {
            Some(done) = running.set.join_next_with_id() => running.finish(shared, done, out),
            _ = tokio::time::sleep_until(deadline) => {
                running.set.abort_all();
                while let Some(done) = running.set.join_next_with_id().await {
                    running.finish(shared, done, out);
                }
            }
        }
    }
}

/// A finished claim task.
struct ClaimOutcome {
    /// The wake generation seen just before the claim.
    generation: u64,
    /// How many handlers had ended when it was sent (see `Running::ended`).
    ended: u64,
    /// How many jobs it asked for.
    want: usize,
    /// When it was sent, on the worker's clock: the leases it took last from then.
    sent_at: chrono::DateTime<chrono::Utc>,
    /// Its round trip.
    took: Duration,
    result: crate::Result<Vec<ClaimedJob>>,
}

/// One queue loop's claim-side state.
struct ClaimState {
    /// Claimed jobs not started yet (the prefetch buffer), with their lease-lost signals,
    /// in claim order (see [`claim_order`]).
    buffer: VecDeque<(ClaimedJob, LeaseSignal)>,
    /// False once a claim came back short: the queue looked drained until a wake-up.
    maybe_more: bool,
    /// The wake generation of the last claim that came back short, while no claim has
    /// been sent since: the queue looked drained then. Once what that claim took has
    /// run, the loop is idle as of that generation without asking again (completions
    /// wake no claim unless they can free work, see `complete::RunMeta::frees_work`).
    drained_at: Option<u64>,
    /// True while the last claim to come back was short: until one comes back full, one
    /// claim at a time. A wake-up on an idle queue usually announces one job; claims sent
    /// side by side would race for it on the server, and the losers come back empty.
    probing: bool,
    /// How long to wait before the next claim after a failed one (zero: not waiting).
    error_wait: Duration,
    /// Grows with failed claims in a row, resets on a successful one.
    backoff: Backoff,
    /// Jobs asked for by claims still in flight.
    claiming: usize,
}

impl Ranked for (ClaimedJob, LeaseSignal) {
    fn claimed(&self) -> &ClaimedJob {
        &self.0
    }
}

impl ClaimState {
    /// Takes a finished claim's jobs into the buffer, or notes that the queue looked empty
    /// (idle, when nothing else is held or being claimed) or that the claim failed.
    fn take(
        &mut self,
        shared: &Shared,
        index: usize,
        done: Result<ClaimOutcome, JoinError>,
        running: &mut Running,
        claims: &JoinSet<ClaimOutcome>,
    ) {
        let outcome = match done {
            Ok(o) => o,
            Err(e) => {
                // A claim task only ends abnormally if it panicked inside storage; what it
                // may have leased is reclaimed when the lease expires.
                tracing::error!(error = %e, "claim task ended abnormally");
                self.error_wait = self.backoff.fail();
                return;
            }
        };
        self.claiming -= outcome.want;
        match outcome.result {
            Ok(claimed) => {
                self.backoff.succeed();
                if claimed.is_empty() {
                    shared.health.contact();
                } else {
                    shared.health.claimed();
                    // Round trips of claims that found work size the local queue: an
                    // idle poll's is shorter than one under load and says nothing about
                    // how long the slots wait for jobs.
                    running.sizer.claim_took(outcome.took);
                }
                // A short claim means the queue looked drained, unless a wake came after
                // the claim began: the loop may have consumed that wake while the claim
                // was in flight, and the work it announced may postdate the claim.
                self.maybe_more =
                    claimed.len() == outcome.want || shared.wake_generation() != outcome.generation;
                if !self.maybe_more {
                    self.drained_at = Some(outcome.generation);
                }
                self.probing = claimed.len() < outcome.want;
                if claimed.is_empty() {
                    if running.len() == 0
                        && self.buffer.is_empty()
                        && claims.is_empty()
                        && outcome.ended == running.ended
                    {
                        shared.idle_at[index].store(outcome.generation, Ordering::SeqCst);
                        shared.progress.notify_waiters();
                    }
                    return;
                }
                shared.in_flight.fetch_add(claimed.len(), Ordering::SeqCst);
                // Leases are renewed from the claim on, buffered or running.
                let lasts_until = plus(outcome.sent_at, shared.opts.lease_duration);
                let mut leases = shared.leases();
                let jobs = claimed.into_iter().map(|c| {
                    let lost = LeaseSignal::new();
                    let lost_rx = lost.clone();
                    let held = HeldLease {
                        lease: c.lease.clone(),
                        lost,
                        lasts_until,
                    };
                    leases.insert(c.job.id, held);
                    (c, lost_rx)
                });
                claim_order::merge(&mut self.buffer, jobs);
            }
            Err(e) if e.needs_operator() => shared.fail_fatally(e),
            Err(e) => {
                shared.health.failure();
                self.error_wait = self.backoff.fail();
                tracing::warn!(
                    error = %e,
                    kind = ?e.storage_kind(),
                    failures = self.backoff.failures(),
                    retry_in = ?self.error_wait,
                    "claim failed; retrying"
                );
            }
        }
    }
}
