//! Observability: metrics with a Prometheus exporter and worker health, on SQLite with no
//! server.
//!
//! Run with `cargo run --example observability`. It installs a Prometheus recorder (the
//! `metrics` facade: the application picks the exporter), runs a few jobs (one retried,
//! one failing for good), then prints the worker's health, the worker registry and the
//! Prometheus text exposition an app would serve on `/metrics`:
//! `durable_jobs_jobs_completed_total` by queue and task, the job duration histogram's
//! buckets, and the per-queue, per-status gauges.

use durable_jobs::{JobContext, JobOptions, NoRetry, Queue, TaskError, Worker, WorkerOptions};
use durable_jobs_sqlite::SqliteStorage;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Histogram buckets for job durations, in seconds.
const BUCKETS: &[f64] = &[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Install the exporter before the workers start: they take their metric handles then.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("durable_jobs_job_duration_seconds".into()),
            BUCKETS,
        )?
        .install_recorder()?;

    let dir =
        std::env::temp_dir().join(format!("durable-jobs-observability-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let storage = SqliteStorage::open(dir.join("jobs.db")).await?;
    let queue = Queue::new(Arc::new(storage));
    queue.set_default_retry_policy(durable_jobs::RetryPolicy::exponential(
        Duration::ZERO,
        Duration::ZERO,
    ));

    queue.register("resize_image", |_ctx: JobContext, px: u32| async move {
        tokio::time::sleep(Duration::from_millis(u64::from(px) / 100)).await;
        Ok::<_, TaskError>(format!("resized to {px}px"))
    });
    let flaky = Arc::new(AtomicU32::new(0));
    queue.register("send_email", move |_ctx: JobContext, to: String| {
        let flaky = flaky.clone();
        async move {
            if flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(TaskError::retry("smtp timeout"));
            }
            Ok(format!("sent to {to}"))
        }
    });
    queue.register("charge", |_ctx: JobContext, _cents: u64| async move {
        Err::<(), TaskError>(NoRetry("card declined").into())
    });

    for px in [200, 800, 1600] {
        queue
            .enqueue("resize_image", &px, JobOptions::new().queue("media"))
            .await?;
    }
    queue
        .enqueue("send_email", &"ada@example.com", JobOptions::new())
        .await?;
    queue.enqueue("charge", &1299u64, JobOptions::new()).await?;

    let worker = Arc::new(Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .name("example-worker")
            .queue("default", 4)
            .queue("media", 2)
            .metrics_interval(Duration::from_millis(50)),
    )?);
    let report = worker.drain().await?;
    println!(
        "drained: {} completed, {} retried, {} failed",
        report.completed, report.retried, report.failed
    );
    // A short run lets the sampler set the per-queue, per-status gauges; meanwhile the
    // worker is in the registry and reports its health.
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("health: {:?}", worker.health());
    for w in queue.workers().await? {
        println!(
            "registered: {} on {} (pid {}), queues {:?}, dead: {}",
            w.record.name,
            w.record.host,
            w.record.pid,
            w.record
                .queues
                .iter()
                .map(|q| format!("{}x{}", q.name, q.concurrency))
                .collect::<Vec<_>>(),
            w.dead
        );
    }
    worker.shutdown_handle().shutdown();
    running.await??;
    println!("health after the run: {:?}\n", worker.health().state);

    let text = prometheus.render();
    println!("{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("durable_jobs_jobs_completed_total")
                && !l.trim_end().ends_with(" 0")),
        "the exposition shows completed jobs"
    );
    assert!(
        text.contains("durable_jobs_job_duration_seconds_bucket"),
        "the exposition shows the duration histogram's buckets"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
