//! The storage wrapper our scenarios run through with `--profile` or `--experiment`.
//!
//! `--profile` times every call the engine makes, so a slow scenario shows whether time
//! goes to claims, completions, or waiting between them.
//!
//! `--experiment` tries a change to the storage or engine without touching their code,
//! to measure what it would gain before anyone writes it for real:
//! - `prefetch=N`: every database claim asks for at least N jobs and keeps the surplus in
//!   a local buffer that later claims are served from (graphile_worker's "local queue").
//!   Benchmark-only: buffered jobs hold their lease while they wait and are not released
//!   at shutdown, which the drain scenario never exercises because it runs every job.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use durable_jobs::storage::{
    Capabilities, ClaimedJob, Completion, DequeueParams, Failure, JobFilter, QueueCount, Storage,
};
use durable_jobs::{Checkpoint, DynStorage, Enqueued, Job, JobId, Lease, NewJob, Result};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default, Clone, Copy)]
struct Stat {
    calls: u64,
    items: u64,
    total: Duration,
    max: Duration,
}

/// Wraps a storage and records calls, items and wall time per method; optionally runs
/// the experiments described in the module docs.
pub struct Timed {
    inner: DynStorage,
    stats: Mutex<BTreeMap<&'static str, Stat>>,
    created: Instant,
    /// `prefetch=N`: the least a database claim asks for (0: off), and the surplus.
    prefetch: usize,
    buffer: Mutex<VecDeque<ClaimedJob>>,
}

impl Timed {
    pub fn new(inner: DynStorage) -> Self {
        Timed {
            inner,
            stats: Mutex::new(BTreeMap::new()),
            created: Instant::now(),
            prefetch: 0,
            buffer: Mutex::new(VecDeque::new()),
        }
    }

    /// Turns on the `prefetch=N` experiment.
    pub fn with_prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    fn take_buffered(&self, limit: usize) -> Vec<ClaimedJob> {
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let n = limit.min(buf.len());
        buf.drain(..n).collect()
    }

    async fn dequeue_prefetching(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        let buffered = self.take_buffered(params.limit);
        if !buffered.is_empty() {
            self.record("dequeue (buffer)", buffered.len(), Duration::ZERO);
            return Ok(buffered);
        }
        let limit = params.limit;
        let wide = DequeueParams {
            limit: limit.max(self.prefetch),
            ..params
        };
        let mut got = self
            .time("dequeue", Vec::len, self.inner.dequeue(wide))
            .await?;
        if got.len() > limit {
            let rest = got.split_off(limit);
            self.buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(rest);
        }
        Ok(got)
    }

    fn record(&self, name: &'static str, items: usize, took: Duration) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let e = s.entry(name).or_default();
        e.calls += 1;
        e.items += items as u64;
        e.total += took;
        e.max = e.max.max(took);
    }

    async fn time<T>(
        &self,
        name: &'static str,
        items: impl FnOnce(&T) -> usize,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let t0 = Instant::now();
        let r = f.await;
        let n = r.as_ref().map(items).unwrap_or(0);
        self.record(name, n, t0.elapsed());
        r
    }

    /// Prints the breakdown, with `label` naming the scenario.
    pub fn print(&self, label: &str) {
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "    profile of {label} ({:.2} s since the storage was made):",
            self.created.elapsed().as_secs_f64()
        );
        eprintln!(
            "      {:<16} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "method", "calls", "items", "items/call", "avg ms", "max ms", "total s"
        );
        for (name, st) in s.iter() {
            eprintln!(
                "      {:<16} {:>8} {:>10} {:>10.1} {:>10.3} {:>10.3} {:>10.3}",
                name,
                st.calls,
                st.items,
                st.items as f64 / st.calls.max(1) as f64,
                st.total.as_secs_f64() * 1000.0 / st.calls.max(1) as f64,
                st.max.as_secs_f64() * 1000.0,
                st.total.as_secs_f64()
            );
        }
    }
}

fn one<T>(_: &T) -> usize {
    1
}

#[async_trait]
impl Storage for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn migrate(&self) -> Result<()> {
        self.time("migrate", one, self.inner.migrate()).await
    }
    async fn now(&self) -> Result<DateTime<Utc>> {
        self.time("now", one, self.inner.now()).await
    }
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        self.time("enqueue", one, self.inner.enqueue(job)).await
    }
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.time("enqueue_many", Vec::len, self.inner.enqueue_many(jobs))
            .await
    }
    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        if self.prefetch > 0 {
            return self.dequeue_prefetching(params).await;
        }
        self.time("dequeue", Vec::len, self.inner.dequeue(params))
            .await
    }
    async fn complete(&self, lease: &Lease, result: Value) -> Result<()> {
        self.time("complete", one, self.inner.complete(lease, result))
            .await
    }
    async fn complete_many(&self, items: Vec<Completion>) -> Result<Vec<Result<()>>> {
        self.time("complete_many", Vec::len, self.inner.complete_many(items))
            .await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<()> {
        self.time("fail", one, self.inner.fail(lease, failure))
            .await
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        self.time("release", one, self.inner.release(lease)).await
    }
    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        self.time("heartbeat", one, self.inner.heartbeat(lease, extend))
            .await
    }
    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        self.time(
            "heartbeat_many",
            Vec::len,
            self.inner.heartbeat_many(leases, extend),
        )
        .await
    }
    async fn reclaim_expired(&self) -> Result<u64> {
        self.time(
            "reclaim_expired",
            |n| *n as usize,
            self.inner.reclaim_expired(),
        )
        .await
    }
    async fn save_checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()> {
        self.time(
            "save_checkpoint",
            one,
            self.inner.save_checkpoint(lease, checkpoint),
        )
        .await
    }
    async fn checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>> {
        self.time("checkpoints", Vec::len, self.inner.checkpoints(job_id))
            .await
    }
    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64> {
        self.time(
            "delete_checkpoints",
            one,
            self.inner.delete_checkpoints(job_id),
        )
        .await
    }
    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>> {
        self.time("get_job", one, self.inner.get_job(job_id)).await
    }
    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.time("list_jobs", Vec::len, self.inner.list_jobs(filter))
            .await
    }
    async fn counts(&self) -> Result<Vec<QueueCount>> {
        self.time("counts", Vec::len, self.inner.counts()).await
    }
    async fn cancel(&self, job_id: JobId) -> Result<bool> {
        self.time("cancel", one, self.inner.cancel(job_id)).await
    }
    fn wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.wakeups()
    }
    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()> {
        self.time("suspend", one, self.inner.suspend(lease, wake_at))
            .await
    }
    async fn spawn_children(
        &self,
        lease: &Lease,
        key: &str,
        name: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        self.time(
            "spawn_children",
            Vec::len,
            self.inner.spawn_children(lease, key, name, jobs),
        )
        .await
    }
    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        self.time(
            "send_signal",
            one,
            self.inner.send_signal(job_id, name, payload),
        )
        .await
    }
    async fn take_signals(
        &self,
        lease: &Lease,
        name: &str,
        limit: usize,
        key: &str,
    ) -> Result<Vec<Value>> {
        self.time(
            "take_signals",
            Vec::len,
            self.inner.take_signals(lease, name, limit, key),
        )
        .await
    }
    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        self.time("peek_signal", one, self.inner.peek_signal(job_id, name))
            .await
    }
    async fn delete_job(&self, job_id: JobId) -> Result<bool> {
        self.time("delete_job", one, self.inner.delete_job(job_id))
            .await
    }
}
