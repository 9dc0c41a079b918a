//! The one storage handle every client call goes through.
//!
//! [`crate::Queue`], [`crate::Worker`], workflows, the scheduler and the maintenance
//! services reach the backend only through [`InstrumentedStorage`], so what every storage
//! call needs is written here once: a `tracing` span per call, a duration histogram and an
//! error counter by operation and [`crate::StorageErrorKind`], and the [`StorageLayer`]s an
//! application (or the benchmark's profiler) adds to watch calls without forwarding them.
//! The worker's loops retry transient failures with [`Backoff`].

use crate::error::{Error, Result};
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
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The name of the histogram of storage call durations, by `operation`.
pub const STORAGE_CALL_SECONDS: &str = "durable_jobs_storage_call_duration_seconds";
/// The name of the counter of failed storage calls, by `operation` and `kind`.
pub const STORAGE_ERRORS_TOTAL: &str = "durable_jobs_storage_errors_total";

/// One finished storage call, as a [`StorageLayer`] sees it.
#[derive(Debug)]
pub struct StorageCall<'a> {
    /// The storage method (`dequeue`, `complete_many`, ...).
    pub operation: &'static str,
    /// How many items the call carried or returned (jobs claimed, completions written),
    /// 1 for single-item calls.
    pub items: usize,
    /// Wall time from the call to its answer.
    pub elapsed: Duration,
    /// The error, when it failed.
    pub error: Option<&'a Error>,
}

/// Something that watches every storage call a [`crate::Queue`] makes: a profiler, an
/// extra metrics sink, an audit log. Layers see calls after they finish and cannot change
/// them, so a layer can never break the storage contract.
pub trait StorageLayer: Send + Sync + 'static {
    /// Called once per storage call, after it answered.
    fn on_call(&self, call: &StorageCall<'_>);
}

/// A backend wrapped with the instrumentation every call shares. Cheap to clone.
#[derive(Clone)]
pub struct InstrumentedStorage {
    inner: DynStorage,
    layers: Arc<[Arc<dyn StorageLayer>]>,
}

impl std::fmt::Debug for InstrumentedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedStorage")
            .field("backend", &self.inner.name())
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl InstrumentedStorage {
    /// Wraps `inner` with no extra layers.
    pub fn new(inner: DynStorage) -> Self {
        Self::with_layers(inner, Vec::new())
    }

    /// Wraps `inner`, and calls each layer after every storage call.
    pub fn with_layers(inner: DynStorage, layers: Vec<Arc<dyn StorageLayer>>) -> Self {
        InstrumentedStorage {
            inner,
            layers: layers.into(),
        }
    }

    /// The backend underneath, for calls that need the backend's own type.
    pub fn inner(&self) -> &DynStorage {
        &self.inner
    }

    /// Runs one storage call: a span around it, then its duration, its error's kind and
    /// the layers.
    async fn observe<T, F>(
        &self,
        operation: &'static str,
        items: fn(&T) -> usize,
        fut: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let span = tracing::debug_span!(
            "durable_jobs.storage",
            operation,
            backend = self.inner.name()
        );
        let started = Instant::now();
        let out = fut.instrument(span).await;
        let elapsed = started.elapsed();
        metrics::histogram!(STORAGE_CALL_SECONDS, "operation" => operation)
            .record(elapsed.as_secs_f64());
        if let Err(e) = &out {
            record_error(operation, e);
        }
        if !self.layers.is_empty() {
            let call = StorageCall {
                operation,
                items: out.as_ref().map_or(0, items),
                elapsed,
                error: out.as_ref().err(),
            };
            for layer in self.layers.iter() {
                layer.on_call(&call);
            }
        }
        out
    }
}

/// Counts a failed call by operation and kind, and logs it at debug level (the caller
/// decides whether it is worth a warning).
fn record_error(operation: &'static str, e: &Error) {
    let kind = match e {
        Error::Storage(s) => s.kind().as_str(),
        Error::LeaseLost { .. } => "lease_lost",
        _ => "rejected",
    };
    metrics::counter!(STORAGE_ERRORS_TOTAL, "operation" => operation, "kind" => kind).increment(1);
    tracing::debug!(operation, kind, error = %e, "storage call failed");
}

/// The (queue, task) runs of a batch of new jobs, so a bulk enqueue of one task counts
/// `durable_jobs_jobs_enqueued_total` once per run instead of once per job.
struct EnqueueGroups(Vec<(String, String, std::ops::Range<usize>)>);

impl EnqueueGroups {
    fn of(jobs: &[NewJob]) -> Self {
        let mut groups: Vec<(String, String, std::ops::Range<usize>)> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            match groups.last_mut() {
                Some((q, t, r)) if *q == j.queue && *t == j.task => r.end = i + 1,
                _ => groups.push((j.queue.clone(), j.task.clone(), i..i + 1)),
            }
        }
        EnqueueGroups(groups)
    }

    /// Counts the jobs at the indexes `created` accepts (a deduplicated enqueue created
    /// nothing).
    fn count(self, created: impl Fn(usize) -> bool) {
        for (queue, task, range) in self.0 {
            let n = range.filter(|&i| created(i)).count() as u64;
            if n > 0 {
                crate::metric::jobs_enqueued(queue, task, n);
            }
        }
    }
}

fn one<T>(_: &T) -> usize {
    1
}

#[async_trait]
impl Storage for InstrumentedStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn migrate(&self) -> Result<()> {
        self.observe("migrate", one, self.inner.migrate()).await
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        self.observe("now", one, self.inner.now()).await
    }

    fn wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.wakeups()
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let groups = EnqueueGroups::of(std::slice::from_ref(&job));
        let out = self
            .observe("enqueue", one, self.inner.enqueue(job))
            .await?;
        groups.count(|_| out.created);
        Ok(out)
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let groups = EnqueueGroups::of(&jobs);
        let out = self
            .observe("enqueue_many", Vec::len, self.inner.enqueue_many(jobs))
            .await?;
        groups.count(|i| out.get(i).is_some_and(|e| e.created));
        Ok(out)
    }

    async fn enqueue_with_children(
        &self,
        parent: NewJob,
        children: Vec<NewJob>,
    ) -> Result<(Enqueued, Vec<Enqueued>)> {
        let groups = EnqueueGroups::of(std::slice::from_ref(&parent));
        let child_groups = EnqueueGroups::of(&children);
        let (parent, children) = self
            .observe(
                "enqueue_with_children",
                |(_, c): &(Enqueued, Vec<Enqueued>)| c.len() + 1,
                self.inner.enqueue_with_children(parent, children),
            )
            .await?;
        groups.count(|_| parent.created);
        child_groups.count(|i| children.get(i).is_some_and(|e| e.created));
        Ok((parent, children))
    }

    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>> {
        self.observe("get_job", one, self.inner.get_job(job_id))
            .await
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.observe("list_jobs", Vec::len, self.inner.list_jobs(filter))
            .await
    }

    async fn counts(&self) -> Result<Vec<QueueCount>> {
        self.observe("counts", Vec::len, self.inner.counts()).await
    }

    async fn finished_counts(&self, since: DateTime<Utc>) -> Result<Vec<QueueCount>> {
        self.observe(
            "finished_counts",
            Vec::len,
            self.inner.finished_counts(since),
        )
        .await
    }

    async fn list_attempts(&self, job_id: JobId) -> Result<Vec<AttemptRecord>> {
        self.observe("list_attempts", Vec::len, self.inner.list_attempts(job_id))
            .await
    }

    async fn cancel(&self, job_id: JobId) -> Result<bool> {
        self.observe("cancel", one, self.inner.cancel(job_id)).await
    }

    async fn delete_job(&self, job_id: JobId) -> Result<bool> {
        self.observe("delete_job", one, self.inner.delete_job(job_id))
            .await
    }

    fn finishes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.finishes()
    }

    async fn watch_job(&self, job_id: JobId) -> Result<Option<Job>> {
        self.observe("watch_job", one, self.inner.watch_job(job_id))
            .await
    }

    async fn delete_jobs(&self, filter: JobFilter) -> Result<DeletedBatch> {
        self.observe(
            "delete_jobs",
            |b: &DeletedBatch| usize::try_from(b.deleted).unwrap_or(usize::MAX),
            self.inner.delete_jobs(filter),
        )
        .await
    }

    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        self.observe("dequeue", Vec::len, self.inner.dequeue(params))
            .await
    }

    async fn complete(&self, lease: &Lease, result: Value) -> Result<()> {
        self.observe("complete", one, self.inner.complete(lease, result))
            .await
    }

    async fn complete_many(&self, items: Vec<Completion>) -> Result<Vec<Result<()>>> {
        self.observe("complete_many", Vec::len, self.inner.complete_many(items))
            .await
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<()> {
        self.observe("fail", one, self.inner.fail(lease, failure))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.observe("release", one, self.inner.release(lease))
            .await
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        self.observe("heartbeat", one, self.inner.heartbeat(lease, extend))
            .await
    }

    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        self.observe(
            "heartbeat_many",
            Vec::len,
            self.inner.heartbeat_many(leases, extend),
        )
        .await
    }

    async fn release_stale_locks(&self) -> Result<StaleLocks> {
        self.observe(
            "release_stale_locks",
            |s: &StaleLocks| s.released.len(),
            self.inner.release_stale_locks(),
        )
        .await
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        self.observe("snooze", one, self.inner.snooze(lease, delay))
            .await
    }

    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()> {
        self.observe(
            "set_progress",
            one,
            self.inner.set_progress(lease, progress),
        )
        .await
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()> {
        self.observe("checkpoint", one, self.inner.checkpoint(lease, checkpoint))
            .await
    }

    async fn list_checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>> {
        self.observe(
            "list_checkpoints",
            Vec::len,
            self.inner.list_checkpoints(job_id),
        )
        .await
    }

    async fn list_checkpoints_many(&self, job_ids: Vec<JobId>) -> Result<Vec<Vec<Checkpoint>>> {
        self.observe(
            "list_checkpoints_many",
            Vec::len,
            self.inner.list_checkpoints_many(job_ids),
        )
        .await
    }

    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64> {
        self.observe(
            "delete_checkpoints",
            one,
            self.inner.delete_checkpoints(job_id),
        )
        .await
    }

    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()> {
        self.observe("suspend", one, self.inner.suspend(lease, wake_at))
            .await
    }

    async fn spawn_children(&self, params: SpawnChildrenParams<'_>) -> Result<Vec<JobId>> {
        let groups = EnqueueGroups::of(&params.jobs);
        let out = self
            .observe(
                "spawn_children",
                Vec::len,
                self.inner.spawn_children(params),
            )
            .await?;
        groups.count(|_| true);
        Ok(out)
    }

    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        self.observe(
            "send_signal",
            one,
            self.inner.send_signal(job_id, name, payload),
        )
        .await
    }

    async fn take_signals(&self, params: TakeSignalsParams<'_>) -> Result<Vec<Value>> {
        self.observe("take_signals", Vec::len, self.inner.take_signals(params))
            .await
    }

    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        self.observe("peek_signal", one, self.inner.peek_signal(job_id, name))
            .await
    }

    // ----- Workflows: group-committed checkpoints -----

    async fn checkpoint_many(&self, items: Vec<CheckpointWrite>) -> Result<Vec<Result<()>>> {
        self.observe(
            "checkpoint_many",
            Vec::len,
            self.inner.checkpoint_many(items),
        )
        .await
    }

    async fn upsert_schedule(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.observe(
            "upsert_schedule",
            one,
            self.inner.upsert_schedule(name, definition, now),
        )
        .await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.observe("schedules", Vec::len, self.inner.schedules())
            .await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        self.observe(
            "set_schedule_paused",
            one,
            self.inner.set_schedule_paused(name, paused),
        )
        .await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        self.observe("delete_schedule", one, self.inner.delete_schedule(name))
            .await
    }

    async fn advance_schedule(
        &self,
        params: AdvanceScheduleParams<'_>,
    ) -> Result<Option<Vec<JobId>>> {
        let groups = EnqueueGroups::of(&params.jobs);
        let out = self
            .observe(
                "advance_schedule",
                |r: &Option<Vec<JobId>>| r.as_ref().map_or(0, Vec::len),
                self.inner.advance_schedule(params),
            )
            .await?;
        if out.is_some() {
            groups.count(|_| true);
        }
        Ok(out)
    }

    async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64> {
        self.observe(
            "retry_jobs",
            one,
            self.inner.retry_jobs(ids, keep_checkpoints),
        )
        .await
    }

    async fn reschedule_job(&self, job_id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        self.observe(
            "reschedule_job",
            one,
            self.inner.reschedule_job(job_id, run_at),
        )
        .await
    }

    async fn finish_jobs(&self, ids: &[JobId], outcome: ManualOutcome) -> Result<u64> {
        self.observe("finish_jobs", one, self.inner.finish_jobs(ids, outcome))
            .await
    }

    async fn purge_finished(&self, older_than: DateTime<Utc>) -> Result<u64> {
        self.observe("purge_finished", one, self.inner.purge_finished(older_than))
            .await
    }

    async fn purge_retained(&self, batch: RetentionBatch) -> Result<RetentionPurged> {
        self.observe(
            "purge_retained",
            |p: &RetentionPurged| p.jobs() as usize,
            self.inner.purge_retained(batch),
        )
        .await
    }

    async fn set_key_limit(&self, key: &str, max_running: Option<u32>) -> Result<()> {
        self.observe(
            "set_key_limit",
            one,
            self.inner.set_key_limit(key, max_running),
        )
        .await
    }

    async fn key_limits(&self) -> Result<Vec<(String, u32)>> {
        self.observe("key_limits", Vec::len, self.inner.key_limits())
            .await
    }

    async fn set_queue_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        self.observe(
            "set_queue_rate_limit",
            one,
            self.inner.set_queue_rate_limit(queue, limit),
        )
        .await
    }

    async fn queue_rate_limits(&self) -> Result<Vec<(String, RateLimit)>> {
        self.observe(
            "queue_rate_limits",
            Vec::len,
            self.inner.queue_rate_limits(),
        )
        .await
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.observe(
            "set_queue_paused",
            one,
            self.inner.set_queue_paused(queue, paused),
        )
        .await
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        self.observe("paused_queues", Vec::len, self.inner.paused_queues())
            .await
    }

    async fn register_worker(&self, worker: WorkerRecord) -> Result<()> {
        self.observe("register_worker", one, self.inner.register_worker(worker))
            .await
    }

    async fn touch_worker(&self, name: &str) -> Result<bool> {
        self.observe("touch_worker", one, self.inner.touch_worker(name))
            .await
    }

    async fn deregister_worker(&self, name: &str) -> Result<bool> {
        self.observe("deregister_worker", one, self.inner.deregister_worker(name))
            .await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.observe("list_workers", Vec::len, self.inner.list_workers())
            .await
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        self.observe("prune_workers", one, self.inner.prune_workers(before))
            .await
    }
}

/// A growing, capped, jittered delay between retries of a failing storage call: doubles
/// from [`Backoff::INITIAL`] to [`Backoff::MAX`], each wait drawn between half and all of
/// the current step so a fleet of workers that lost the same server does not return to
/// it in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            step: Duration::ZERO,
            failures: 0,
        }
    }
}

impl Backoff {
    /// The first delay after a failure.
    pub const INITIAL: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(10);

    /// Records a failure; returns how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.step = if self.step.is_zero() {
            Self::INITIAL
        } else {
            (self.step * 2).min(Self::MAX)
        };
        jitter(self.step)
    }

    /// Records a success: the next failure starts from [`Backoff::INITIAL`] again.
    pub fn succeed(&mut self) {
        self.step = Duration::ZERO;
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The current step (zero after a success): the most the next wait can be.
    pub fn step(&self) -> Duration {
        self.step
    }
}

/// A duration between half of `d` and `d`, from a cheap per-call random source.
fn jitter(d: Duration) -> Duration {
    let r = (crate::job::new_lease_token() as u64) % 1_000;
    let half = d / 2;
    half + half.mul_f64(r as f64 / 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::default();
        let mut steps = Vec::new();
        for _ in 0..10 {
            let wait = b.fail();
            assert!(
                wait <= b.step() && wait >= b.step() / 2,
                "{wait:?} vs {:?}",
                b.step()
            );
            steps.push(b.step());
        }
        assert_eq!(steps[0], Backoff::INITIAL);
        assert_eq!(steps[1], Duration::from_millis(200));
        assert_eq!(*steps.last().expect("steps"), Backoff::MAX);
        assert_eq!(b.failures(), 10);
        b.succeed();
        assert_eq!(b.step(), Duration::ZERO);
        b.fail();
        assert_eq!(b.step(), Backoff::INITIAL);
    }
}
