//! Writing outcomes: completions in batches, failures and releases one by one, with
//! storage errors retried so an outage does not drop outcomes.

use super::shared::Shared;
use crate::event::{Event, LeaseDropReason};
use crate::job::{JobId, Lease};
use crate::metric::JobMetrics;
use crate::storage::Storage;
use crate::storage::{Completion, Failure};
use crate::Error;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How many times a storage error on an outcome write is retried before the outcome is
/// left to lease expiry (the job then runs again: at-least-once).
const WRITE_ATTEMPTS: u32 = 8;

/// What the worker knows about a running attempt.
#[derive(Debug, Clone)]
pub(crate) struct RunMeta {
    pub(crate) job_id: JobId,
    /// The task's name, shared with its metric handles rather than copied per attempt.
    pub(crate) task: Arc<str>,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) lease: Lease,
    /// The job's metric handles (by queue and task).
    pub(crate) metrics: Arc<JobMetrics>,
    /// When the attempt started, for the duration histogram.
    pub(crate) started: std::time::Instant,
    /// Whether finishing the job can make other work claimable at once: it has a parent
    /// (a waiting workflow may wake) or a serial key (the key's next job may start).
    pub(crate) frees_work: bool,
}

impl RunMeta {
    /// What the worker keeps about a claimed job while it runs.
    pub(crate) fn of(shared: &Shared, c: &crate::storage::ClaimedJob) -> Self {
        Self::with_metrics(c, shared.metrics.get(&c.job.queue, &c.job.task))
    }

    /// As [`RunMeta::of`], with the job's metric handles already looked up.
    pub(crate) fn with_metrics(c: &crate::storage::ClaimedJob, metrics: Arc<JobMetrics>) -> Self {
        RunMeta {
            job_id: c.job.id,
            task: metrics.task.clone(),
            attempt: c.lease.attempt,
            max_attempts: c.job.max_attempts,
            lease: c.lease.clone(),
            metrics,
            started: std::time::Instant::now(),
            frees_work: c.job.parent_id.is_some() || c.job.serial_key.is_some(),
        }
    }
}

/// An attempt's outcome, to be written.
#[derive(Debug)]
pub(crate) enum Finish {
    Complete {
        meta: RunMeta,
        result: Value,
    },
    Fail {
        meta: RunMeta,
        error: String,
        retry_in: Option<Duration>,
    },
    /// A workflow waits: suspend the job until `wake_at` or until woken.
    Suspend {
        meta: RunMeta,
        wake_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Run the job again after `delay` without spending the attempt, unless its task's
    /// snooze limit is reached (then it fails).
    Snooze {
        meta: RunMeta,
        delay: Duration,
    },
    /// Return the job without spending the attempt (shutdown).
    Release {
        meta: RunMeta,
    },
    /// The lease was lost while running: nothing to write.
    Lost {
        meta: RunMeta,
    },
    /// A prefetched job dropped unstarted (see `prefetch`): nothing to write for a lost
    /// lease, a fenced release for one too short to start.
    Dropped {
        meta: RunMeta,
        reason: LeaseDropReason,
    },
}

/// Writes outcomes as they arrive, with up to `completion_writers` writes in flight.
/// Outcomes that queue up while the writers are busy go out together in the next batch,
/// so batching adds no waiting. Each job's outcome is in exactly one batch, so writes of
/// different batches never race on one job.
pub(crate) async fn run_completer(shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Finish>) {
    let (writers, batch) = (shared.opts.completion_writers, shared.opts.completion_batch);
    crate::batching::run_batches(rx, writers, batch, move |buf| {
        let shared = shared.clone();
        async move { write_batch(&shared, buf).await }
    })
    .await;
}

/// Writes one batch of outcomes, then accounts for them.
async fn write_batch(shared: &Shared, mut buf: Vec<Finish>) {
    let n = buf.len();
    let mut completions = Vec::new();
    let mut woke = false;
    for finish in buf.drain(..) {
        match finish {
            Finish::Complete { meta, result } => completions.push((meta, result)),
            Finish::Fail {
                meta,
                error,
                retry_in,
            } => {
                // A retry is work again, and a failure for good may have woken a parent.
                woke = true;
                write_failure(shared, meta, error, retry_in).await;
            }
            Finish::Release { meta } => {
                woke = true;
                let r = with_retries(|| shared.queue.storage().release(&meta.lease)).await;
                count(shared, r, |c| &c.released, &meta);
            }
            Finish::Suspend { meta, wake_at } => {
                woke = true;
                let r = with_retries(|| shared.queue.storage().suspend(&meta.lease, wake_at)).await;
                let ok = r.is_ok();
                count(shared, r, |c| &c.suspended, &meta);
                if ok {
                    shared.queue.emit(Event::Suspended {
                        job_id: meta.job_id,
                        task: meta.task.to_string(),
                        attempt: meta.attempt,
                    });
                }
            }
            Finish::Snooze { meta, delay } => {
                woke = true;
                write_snooze(shared, meta, delay).await;
            }
            Finish::Lost { meta } => {
                tracing::warn!(job_id = meta.job_id, "lease lost while the handler ran");
                shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                meta.metrics.lost.increment(1);
            }
            Finish::Dropped { meta, reason } => {
                woke |= reason == LeaseDropReason::TooShort;
                write_dropped(shared, meta, reason).await;
            }
        }
    }
    if !completions.is_empty() {
        // A completed child may have woken its parent, and a keyed job's completion lets
        // its key's next job start: look again then. Other completions make nothing
        // claimable, and a claim after each one doubled the claims of a quiet queue.
        woke |= completions.iter().any(|(meta, _)| meta.frees_work);
        write_completions(shared, completions).await;
    }
    if woke {
        shared.bump_internal_wake();
    }
    // Waiters in this process look at their jobs again (one may have finished).
    shared.queue.bump_finished();
    shared.in_flight.fetch_sub(n, Ordering::SeqCst);
    shared.progress.notify_waiters();
}

async fn write_completions(shared: &Shared, items: Vec<(RunMeta, Value)>) {
    let observed = shared.queue.observed();
    let mut metas = Vec::with_capacity(items.len());
    let mut batch = Vec::with_capacity(items.len());
    for (meta, result) in items {
        let kept = observed.then(|| result.clone());
        batch.push(Completion {
            lease: meta.lease.clone(),
            result,
        });
        metas.push((meta, kept));
    }
    let results = with_retries(|| shared.queue.storage().complete_many(batch.clone())).await;
    let results = match results {
        Ok(r) => {
            shared.health.contact();
            r
        }
        Err(e) => {
            shared.health.failure();
            tracing::error!(error = %e, jobs = metas.len(), "could not write completions; the jobs will be reclaimed when their leases expire");
            return;
        }
    };
    for ((meta, result), r) in metas.into_iter().zip(results) {
        match r {
            Ok(()) => {
                shared.counters.completed.fetch_add(1, Ordering::Relaxed);
                meta.metrics.completed.increment(1);
                if let Some(result) = result {
                    shared.queue.emit(Event::Completed {
                        job_id: meta.job_id,
                        task: meta.task.to_string(),
                        attempt: meta.attempt,
                        result,
                    });
                }
            }
            Err(e) => count::<()>(shared, Err(e), |c| &c.completed, &meta),
        }
    }
}

/// Settles a prefetched job dropped unstarted, then reports it. A lease too short to
/// start is released through the fence: if the job was reclaimed meanwhile, storage
/// refuses and the drop is reported as lost, since the job belongs to its new holder.
async fn write_dropped(shared: &Shared, meta: RunMeta, reason: LeaseDropReason) {
    let reason = match reason {
        LeaseDropReason::TooShort => {
            match with_retries(|| shared.queue.storage().release(&meta.lease)).await {
                Ok(()) => {
                    shared.counters.released.fetch_add(1, Ordering::Relaxed);
                    LeaseDropReason::TooShort
                }
                Err(Error::LeaseLost { .. }) => LeaseDropReason::Lost,
                Err(e) => {
                    tracing::error!(job_id = meta.job_id, error = %e, "could not release a prefetched job; it will be reclaimed when its lease expires");
                    return;
                }
            }
        }
        other => other,
    };
    if reason == LeaseDropReason::Lost {
        shared.counters.lost.fetch_add(1, Ordering::Relaxed);
        meta.metrics.lost.increment(1);
    }
    shared.queue.emit(Event::LeaseDropped {
        job_id: meta.job_id,
        task: meta.task.to_string(),
        attempt: meta.attempt,
        reason,
    });
}

async fn write_failure(shared: &Shared, meta: RunMeta, error: String, retry_in: Option<Duration>) {
    let failure = Failure {
        error: error.clone(),
        retry_in,
    };
    let r = with_retries(|| shared.queue.storage().fail(&meta.lease, failure.clone())).await;
    let ok = r.is_ok();
    match retry_in {
        Some(_) => count(shared, r, |c| &c.retried, &meta),
        None => count(shared, r, |c| &c.failed, &meta),
    }
    if !ok {
        return;
    }
    match retry_in {
        Some(_) => meta.metrics.retried.increment(1),
        None => meta.metrics.failed.increment(1),
    }
    let event = match retry_in {
        Some(retry_in) => Event::Retrying {
            job_id: meta.job_id,
            task: meta.task.to_string(),
            attempt: meta.attempt,
            error,
            retry_in,
        },
        None => Event::Failed {
            job_id: meta.job_id,
            task: meta.task.to_string(),
            attempt: meta.attempt,
            error,
        },
    };
    shared.queue.emit(event);
}

/// Snoozes the job, or fails it for good when its task's snooze limit is reached. The
/// snoozes so far are the `snoozed` attempts in its history: read only on this path, so
/// the limit costs nothing to jobs that never snooze.
async fn write_snooze(shared: &Shared, meta: RunMeta, delay: Duration) {
    let storage = shared.queue.storage();
    let limit = shared.queue.max_snoozes(&meta.task);
    let snoozed = match with_retries(|| storage.list_attempts(meta.job_id)).await {
        Ok(history) => history
            .iter()
            .filter(|a| a.outcome == crate::storage::AttemptOutcome::Snoozed)
            .count(),
        Err(e) => {
            tracing::error!(job_id = meta.job_id, error = %e, "could not read the snooze count; the job will be reclaimed when its lease expires");
            return;
        }
    };
    if snoozed >= limit as usize {
        let error = format!(
            "snoozed {snoozed} times, the limit for task `{}` (Queue::set_max_snoozes)",
            meta.task
        );
        write_failure(shared, meta, error, None).await;
        return;
    }
    let r = with_retries(|| storage.snooze(&meta.lease, delay)).await;
    let ok = r.is_ok();
    count(shared, r, |c| &c.snoozed, &meta);
    if ok && shared.queue.observed() {
        shared.queue.emit(Event::Snoozed {
            job_id: meta.job_id,
            task: meta.task.to_string(),
            attempt: meta.attempt,
            delay,
        });
    }
}

fn count<T>(
    shared: &Shared,
    r: crate::Result<T>,
    counter: fn(&super::shared::Counters) -> &std::sync::atomic::AtomicU64,
    meta: &RunMeta,
) {
    let job_id = meta.job_id;
    match r {
        Ok(_) => {
            counter(&shared.counters).fetch_add(1, Ordering::Relaxed);
        }
        Err(Error::LeaseLost { .. }) => {
            tracing::warn!(job_id, "outcome not written: the lease was lost");
            shared.counters.lost.fetch_add(1, Ordering::Relaxed);
            meta.metrics.lost.increment(1);
        }
        Err(e) => {
            tracing::error!(job_id, error = %e, "outcome not written; the job will be reclaimed when its lease expires");
        }
    }
}

/// Retries a storage write on transient errors (unavailable, busy, exhausted), with a
/// growing, jittered backoff; other errors (a lost lease, a constraint, corrupt data)
/// are returned at once, since writing again cannot fix them.
async fn with_retries<T, F, Fut>(mut write: F) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::Result<T>>,
{
    let mut backoff = crate::instrumented::Backoff::default();
    let mut attempt = 1;
    loop {
        match write().await {
            Err(e) if e.is_transient() && attempt < WRITE_ATTEMPTS => {
                let wait = backoff.fail();
                tracing::warn!(error = %e, attempt, retry_in = ?wait, "storage write failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}
