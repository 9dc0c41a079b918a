//! Schedules and the management calls, on SQLite: `cargo run --example schedules`.
//!
//! Declares a cron schedule and an every-second schedule, runs a worker for a few seconds
//! so ticks fire, then inspects the queue and repairs it: counts, listing by tag, a failed
//! job retried, a pending job rescheduled and then cancelled, a queue paused and resumed,
//! and old finished jobs purged.

use durable_jobs::{
    JobFilter, JobOptions, JobStatus, NoRetry, Queue, Schedule, TaskError, Worker, WorkerOptions,
};
use durable_jobs_sqlite::SqliteStorage;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var("SCHEDULES_DB").unwrap_or_else(|_| "schedules.db".into());
    let queue = Queue::new(Arc::new(SqliteStorage::open(&path).await?));
    queue.register_fn("report", |kind: String| async move {
        println!("  running the {kind} report");
        Ok::<_, TaskError>(kind)
    });
    queue.register_fn("import", |file: String| async move {
        Err::<(), TaskError>(NoRetry(format!("{file}: malformed header")).into())
    });

    // Declared in code at startup; adding an existing name updates it in place.
    queue
        .add_schedule(
            "nightly-report",
            Schedule::cron("30 2 * * *")
                .task("report", &"nightly")
                .options(JobOptions::new().tag("reports")),
        )
        .await?;
    queue
        .add_schedule(
            "heartbeat",
            Schedule::every(Duration::from_secs(1))
                .task("report", &"heartbeat")
                .no_overlap(true),
        )
        .await?;
    for s in queue.schedules().await? {
        println!(
            "schedule {:<15} paused={} next tick {:?}",
            s.name, s.paused, s.next_tick
        );
    }

    let failed = queue
        .enqueue("import", &"users.csv", JobOptions::new().tag("imports"))
        .await?;
    let later = queue
        .enqueue(
            "report",
            &"weekly",
            JobOptions::new().delay(Duration::from_secs(3600)),
        )
        .await?;

    // Any number of workers may run the scheduler: each tick is enqueued once.
    println!("running two workers for 3 seconds...");
    let opts = || {
        WorkerOptions::new()
            .queue("default", 4)
            .scheduler_interval(Duration::from_millis(200))
    };
    let (a, b) = (
        Worker::new(queue.clone(), opts())?,
        Worker::new(queue.clone(), opts())?,
    );
    let stop = tokio::time::sleep(Duration::from_secs(3));
    let (ra, rb) = tokio::join!(
        a.run_until(stop),
        b.run_until(tokio::time::sleep(Duration::from_secs(3)))
    );
    println!("workers: {:?} / {:?}", ra?, rb?);

    for c in queue.counts().await? {
        println!("queue {:<8} {:<10} {}", c.queue, c.status, c.count);
    }
    let imports = queue
        .list_jobs(JobFilter {
            tag: Some("imports".into()),
            ..JobFilter::default()
        })
        .await?;
    println!(
        "jobs tagged imports: {:?}",
        imports.iter().map(|j| (j.id, j.status)).collect::<Vec<_>>()
    );

    // Repair: the import failed for good; once the file is fixed, retry it.
    if queue
        .get_job(failed)
        .await?
        .is_some_and(|j| j.status == JobStatus::Failed)
    {
        println!(
            "retrying job {failed}: {} requeued",
            queue.retry_jobs(&[failed], false).await?
        );
    }
    // Move the weekly report up, then change our mind and cancel it.
    let soon = chrono::Utc::now() + chrono::Duration::minutes(5);
    println!(
        "rescheduled job {later}: {}",
        queue.reschedule(later, soon).await?
    );
    println!("cancelled job {later}: {}", queue.cancel(later).await?);
    // Pause a queue during maintenance.
    queue.pause_queue("default").await?;
    println!("paused queues: {:?}", queue.paused_queues().await?);
    queue.resume_queue("default").await?;
    queue.pause_schedule("heartbeat").await?;
    // Retention: finished jobs older than a day go (none yet in a fresh database).
    println!(
        "purged {} jobs finished over a day ago",
        queue.purge_finished(Duration::from_secs(86_400)).await?
    );
    println!("state kept in {path}");
    Ok(())
}
