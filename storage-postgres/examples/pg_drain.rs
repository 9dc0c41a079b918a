//! Drain rate of no-op jobs through the real Worker on PostgreSQL.
//!
//! Enqueues N no-op jobs (default 100,000) into a fresh schema in bulk, runs
//! `Worker::drain` until none is left, checks every job completed, prints the rates and
//! drops the schema. The server comes from `durable_jobs_postgres::testing`
//! (`DATABASE_URL`, else 127.0.0.1:5432, else a throwaway cluster).
//!
//! ```text
//! cargo run --release -p durable-jobs-postgres --example pg_drain -- [jobs] [concurrency] [pool]
//! ```

use durable_jobs::{
    DynStorage, JobContext, JobStatus, NewJob, Queue, Storage, TaskError, Worker, WorkerOptions,
};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe};
use durable_jobs_postgres::testing::{server_url, unique_schema};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use std::sync::Arc;
use std::time::Instant;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs = arg(1, 100_000);
    let concurrency = arg(2, 200);
    let pool = arg(3, 10) as u32;
    // A fresh schema on the production code path (database clock, no test clock).
    let pg = PostgresStorage::connect_with(
        &server_url()?,
        PostgresOptions::new()
            .schema(unique_schema("dj_drain"))
            .max_connections(pool),
    )
    .await?;
    pg.migrate().await?;
    let storage: DynStorage = Arc::new(pg.clone());

    let started = Instant::now();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|i| NewJob::new("noop", serde_json::json!({ "i": i })))
            .collect();
        storage.enqueue_many(batch).await?;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();

    let queue = Queue::new(storage.clone());
    queue.register(
        "noop",
        |_ctx: JobContext, _args: serde_json::Value| async move { Ok::<_, TaskError>(()) },
    );
    let worker = Worker::new(queue, WorkerOptions::new().queue("default", concurrency))?;
    let started = Instant::now();
    let report = worker.drain().await?;
    let drain_secs = started.elapsed().as_secs_f64();

    let completed: u64 = storage
        .counts()
        .await?
        .iter()
        .filter(|c| c.status == JobStatus::Completed)
        .map(|c| c.count)
        .sum();
    println!(
        "postgres drain: {jobs} no-op jobs, concurrency {concurrency}, pool {pool}\n  \
         enqueue_many (10k per statement): {enqueue_secs:.2}s = {:.0} jobs/s\n  \
         worker drain: {drain_secs:.2}s = {:.0} jobs/s (report: completed {}, failed {}, lost {})",
        jobs as f64 / enqueue_secs,
        jobs as f64 / drain_secs,
        report.completed,
        report.failed,
        report.lost,
    );
    for name in [
        durable_jobs_postgres::migrate::graphile_schema(pg.schema()),
        pg.schema().to_string(),
    ] {
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
        )))
        .execute(pg.pool())
        .await?;
    }
    if completed != jobs as u64 || report.completed != jobs as u64 {
        return Err(format!(
            "expected {jobs} completed jobs, found {completed} in storage, {} in the report",
            report.completed
        )
        .into());
    }
    Ok(())
}
