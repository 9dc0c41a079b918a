//! Measures what one checkpointed step costs on SQLite: a single job runs a loop of
//! no-op `ctx.step` calls, each one a fenced checkpoint commit, through a real `Worker`.
//! Also runs several such jobs at once, where the writer thread commits their
//! checkpoints together. Uses a fresh file in a temporary directory and removes it.
//!
//! ```text
//! cargo run --release -p durable-jobs-sqlite --example sqlite_steps -- [steps] [jobs] [sync]
//! ```
//! Defaults: 5000 steps, 8 parallel jobs, `normal` synchronous (`full` fsyncs each commit).

use durable_jobs::{JobContext, JobOptions, Queue, TaskError, Worker, WorkerOptions};
use durable_jobs_sqlite::{SqliteOptions, SqliteStorage, Synchronous};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Runs `jobs` jobs of `steps` no-op steps each and returns the wall time.
async fn run(
    queue: &Queue,
    jobs: usize,
    steps: u64,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let ids = queue
        .enqueue_many("steps", vec![steps; jobs], JobOptions::new())
        .await?;
    let worker = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .queue("default", jobs.max(1))
            .poll_interval(Duration::from_millis(20)),
    )?;
    let started = Instant::now();
    let report = worker.drain().await?;
    let elapsed = started.elapsed();
    if report.completed as usize != jobs {
        return Err(format!("expected {jobs} completed jobs, report says {report:?}").into());
    }
    for id in ids {
        let job = queue.get_job(id).await?.ok_or("job vanished")?;
        if job.result != Some(serde_json::json!(steps)) {
            return Err(format!("job {id} returned {:?}", job.result).into());
        }
    }
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: u64 = arg(1, 5000);
    let parallel: usize = arg(2, 8);
    let sync = match arg(3, String::from("normal")).as_str() {
        "full" => Synchronous::Full,
        _ => Synchronous::Normal,
    };
    let dir = tempfile::tempdir()?;
    let storage = SqliteStorage::open_with(
        dir.path().join("steps.db"),
        SqliteOptions::new().synchronous(sync),
    )
    .await?;
    let queue = Queue::new(Arc::new(storage.clone()));
    queue.register("steps", |ctx: JobContext, n: u64| async move {
        for i in 0..n {
            ctx.step("noop", move |_| async move { Ok::<_, TaskError>(i) })
                .await?;
        }
        Ok::<_, TaskError>(n)
    });

    let one = run(&queue, 1, steps).await?.as_secs_f64();
    println!(
        "1 job x {steps} steps ({sync:?}): {one:.3}s = {:.0} steps/s, {:.1} us/step",
        steps as f64 / one,
        one * 1e6 / steps as f64
    );
    let many = run(&queue, parallel, steps).await?.as_secs_f64();
    let total = steps * parallel as u64;
    println!(
        "{parallel} jobs x {steps} steps ({sync:?}): {many:.3}s = {:.0} steps/s in all",
        total as f64 / many
    );
    storage.close().await;
    Ok(())
}
