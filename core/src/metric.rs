//! Metrics through the `metrics` facade: the application installs the exporter (for
//! example metrics-exporter-prometheus) before it starts workers, and every name here is
//! prefixed `durable_jobs_`.
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `durable_jobs_jobs_enqueued_total` | counter | queue, task |
//! | `durable_jobs_jobs_started_total` | counter | queue, task |
//! | `durable_jobs_jobs_completed_total` | counter | queue, task |
//! | `durable_jobs_jobs_failed_total` | counter | queue, task |
//! | `durable_jobs_jobs_retried_total` | counter | queue, task |
//! | `durable_jobs_jobs_cancelled_total` | counter | queue, task |
//! | `durable_jobs_jobs_reclaimed_total` | counter | queue, task |
//! | `durable_jobs_leases_lost_total` | counter | queue, task |
//! | `durable_jobs_job_duration_seconds` | histogram | queue, task |
//! | `durable_jobs_job_wait_seconds` | histogram | queue, task |
//! | `durable_jobs_jobs` | gauge | queue, status |
//! | `durable_jobs_jobs_purged_total` | counter | status |
//! | `durable_jobs_storage_call_duration_seconds` | histogram | operation |
//! | `durable_jobs_storage_errors_total` | counter | operation, kind |
//!
//! Per-job metrics go through handles cached per queue and task, so a
//! job pays a map lookup, not a label allocation and a registry lookup per metric. The
//! gauges are sampled by the worker's maintenance loop every
//! [`crate::WorkerOptions::metrics_interval`] with one counts query, never per job.

use crate::storage::QueueCount;
use metrics::{Counter, Histogram};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Jobs enqueued, by queue and task.
pub const JOBS_ENQUEUED_TOTAL: &str = "durable_jobs_jobs_enqueued_total";
/// Attempts started, by queue and task.
pub const JOBS_STARTED_TOTAL: &str = "durable_jobs_jobs_started_total";
/// Jobs completed, by queue and task.
pub const JOBS_COMPLETED_TOTAL: &str = "durable_jobs_jobs_completed_total";
/// Jobs failed for good, by queue and task.
pub const JOBS_FAILED_TOTAL: &str = "durable_jobs_jobs_failed_total";
/// Attempts failed and scheduled to retry, by queue and task.
pub const JOBS_RETRIED_TOTAL: &str = "durable_jobs_jobs_retried_total";
/// Jobs cancelled, by queue and task.
pub const JOBS_CANCELLED_TOTAL: &str = "durable_jobs_jobs_cancelled_total";
/// Jobs whose expired lease a sweep released, by queue and task.
pub const JOBS_RECLAIMED_TOTAL: &str = "durable_jobs_jobs_reclaimed_total";
/// Outcomes not written because the lease was lost, by queue and task.
pub const LEASES_LOST_TOTAL: &str = "durable_jobs_leases_lost_total";
/// How long attempts ran, by queue and task.
pub const JOB_DURATION_SECONDS: &str = "durable_jobs_job_duration_seconds";
/// How long jobs waited from their due time to their start, by queue and task.
pub const JOB_WAIT_SECONDS: &str = "durable_jobs_job_wait_seconds";
/// Jobs per queue and status, sampled.
pub const JOBS: &str = "durable_jobs_jobs";
/// Finished jobs deleted by the retention purge, by final status.
pub const JOBS_PURGED_TOTAL: &str = "durable_jobs_jobs_purged_total";

/// The metric handles for one queue and task.
#[derive(Debug)]
pub(crate) struct JobMetrics {
    /// The queue these handles count, shared by every attempt's bookkeeping.
    pub(crate) queue: Arc<str>,
    /// The task these handles count, shared by every attempt's bookkeeping.
    pub(crate) task: Arc<str>,
    pub(crate) started: Counter,
    pub(crate) completed: Counter,
    pub(crate) failed: Counter,
    pub(crate) retried: Counter,
    pub(crate) lost: Counter,
    pub(crate) duration: Histogram,
    pub(crate) wait: Histogram,
}

impl JobMetrics {
    fn new(queue: &str, task: &str) -> Self {
        let l = |name: &'static str| metrics::counter!(name, "queue" => queue.to_string(), "task" => task.to_string());
        let h = |name: &'static str| metrics::histogram!(name, "queue" => queue.to_string(), "task" => task.to_string());
        JobMetrics {
            queue: queue.into(),
            task: task.into(),
            started: l(JOBS_STARTED_TOTAL),
            completed: l(JOBS_COMPLETED_TOTAL),
            failed: l(JOBS_FAILED_TOTAL),
            retried: l(JOBS_RETRIED_TOTAL),
            lost: l(LEASES_LOST_TOTAL),
            duration: h(JOB_DURATION_SECONDS),
            wait: h(JOB_WAIT_SECONDS),
        }
    }
}

/// Handles per (queue, task), made on first use. A worker keeps one. Keyed by queue,
/// then task, so a lookup hashes two borrowed strs and allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct MetricsCache {
    by_queue: RwLock<HashMap<String, HashMap<String, Arc<JobMetrics>>>>,
}

impl MetricsCache {
    /// The handles for a queue and task.
    pub(crate) fn get(&self, queue: &str, task: &str) -> Arc<JobMetrics> {
        {
            let map = self.by_queue.read().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = map.get(queue).and_then(|tasks| tasks.get(task)) {
                return m.clone();
            }
        }
        let mut map = self.by_queue.write().unwrap_or_else(|e| e.into_inner());
        map.entry(queue.to_string())
            .or_default()
            .entry(task.to_string())
            .or_insert_with(|| Arc::new(JobMetrics::new(queue, task)))
            .clone()
    }
}

/// Counts jobs enqueued.
pub(crate) fn jobs_enqueued(queue: String, task: String, n: u64) {
    metrics::counter!(JOBS_ENQUEUED_TOTAL, "queue" => queue, "task" => task).increment(n);
}

/// Counts a job whose expired lease was released.
pub(crate) fn job_reclaimed(queue: &str, task: &str, failed: bool) {
    let labels = [("queue", queue.to_string()), ("task", task.to_string())];
    metrics::counter!(JOBS_RECLAIMED_TOTAL, &labels).increment(1);
    if failed {
        metrics::counter!(JOBS_FAILED_TOTAL, &labels).increment(1);
    }
}

/// Counts a job cancelled by an operator.
pub(crate) fn job_cancelled(queue: &str, task: &str) {
    metrics::counter!(JOBS_CANCELLED_TOTAL, "queue" => queue.to_string(), "task" => task.to_string())
        .increment(1);
}

/// Counts finished jobs deleted by a retention batch. Labelled by status only: the
/// batch deletes whole trees in one statement and does not read their queues.
pub(crate) fn jobs_purged(purged: &crate::storage::RetentionPurged) {
    for (status, n) in [
        ("completed", purged.completed),
        ("failed", purged.failed),
        ("cancelled", purged.cancelled),
    ] {
        if n > 0 {
            metrics::counter!(JOBS_PURGED_TOTAL, "status" => status).increment(n);
        }
    }
}

/// Sets the per-queue, per-status gauges from one counts query. Statuses that no
/// longer have jobs are set to zero, so a drained queue does not keep its last figure.
pub(crate) fn sample_counts(counts: &[QueueCount], seen: &mut Vec<(String, String)>) {
    let mut now_seen = Vec::with_capacity(counts.len());
    for c in counts {
        let key = (c.queue.clone(), c.status.as_str().to_string());
        metrics::gauge!(JOBS, "queue" => key.0.clone(), "status" => key.1.clone())
            .set(c.count as f64);
        now_seen.push(key);
    }
    for old in seen.iter() {
        if !now_seen.contains(old) {
            metrics::gauge!(JOBS, "queue" => old.0.clone(), "status" => old.1.clone()).set(0.0);
        }
    }
    *seen = now_seen;
}
