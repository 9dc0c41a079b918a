//! Measures the SQLite backend through the real engine: bulk enqueue, single enqueues
//! from concurrent tasks (coalesced by the writer thread), and the drain rate of no-op
//! jobs through a `Worker`. Uses a fresh file in a temporary directory and removes it.
//!
//! ```text
//! cargo run --release -p durable-jobs-sqlite --example sqlite_drain -- [jobs] [concurrency]
//! ```
//! Defaults: 100000 jobs, concurrency 100.

use durable_jobs::{JobContext, JobOptions, Queue, TaskError, Worker, WorkerOptions};
use durable_jobs_sqlite::SqliteStorage;
use std::sync::Arc;
use std::time::Instant;

/// The workers' poll interval. The engine's drain looks again only after a poll interval
/// once a claim came back short, so a long interval adds a fixed tail to every drain.
const POLL_MS: u64 = 50;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs = arg(1, 100_000);
    let concurrency = arg(2, 100);
    let dir = tempfile::tempdir()?;
    let storage = SqliteStorage::open(dir.path().join("drain.db")).await?;
    let queue = Queue::new(Arc::new(storage.clone()));
    queue.register("noop", |_ctx: JobContext, _n: u64| async move {
        Ok::<_, TaskError>(())
    });

    // Bulk enqueue, 1000 jobs per call.
    let started = Instant::now();
    let mut n = 0u64;
    while (n as usize) < jobs {
        let batch = (n..(n + 1000).min(jobs as u64)).collect::<Vec<_>>();
        n += batch.len() as u64;
        queue.enqueue_many("noop", batch, JobOptions::new()).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bulk enqueue: {jobs} jobs in {secs:.3}s = {:.0} jobs/s",
        jobs as f64 / secs
    );

    let report = drain(&queue, concurrency, jobs).await?;
    assert_eq!(report as usize, jobs, "every job completed");

    // Single enqueues from 50 concurrent tasks: the writer coalesces them into shared
    // commits.
    let singles = (jobs / 10).max(1000);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let q = queue.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..(singles as u64 / 50) {
                q.enqueue("noop", &(t * 1_000_000 + i), JobOptions::new())
                    .await?;
            }
            Ok::<_, durable_jobs::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = singles / 50 * 50;
    println!(
        "single enqueue (50 concurrent tasks): {done} jobs in {secs:.3}s = {:.0} jobs/s",
        done as f64 / secs
    );
    drain(&queue, concurrency, done).await?;
    storage.close().await;
    Ok(())
}

async fn drain(
    queue: &Queue,
    concurrency: usize,
    jobs: usize,
) -> Result<u64, Box<dyn std::error::Error>> {
    let worker = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .queue("default", concurrency)
            .poll_interval(std::time::Duration::from_millis(POLL_MS)),
    )?;
    let started = Instant::now();
    let report = worker.drain().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "drain (concurrency {concurrency}): {} of {jobs} jobs completed in {secs:.3}s = {:.0} jobs/s",
        report.completed,
        report.completed as f64 / secs
    );
    Ok(report.completed)
}
