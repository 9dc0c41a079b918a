//! Measures what one checkpointed step costs on PostgreSQL: a single job runs a loop of
//! no-op `ctx.step` calls, each one a fenced checkpoint write (one round trip and one
//! commit), through a real `Worker`. Also runs several such jobs at once. Uses a fresh
//! schema on the production code path (database clock, no test clock) and drops it.
//! The server comes from `durable_jobs_postgres::testing` (`DATABASE_URL`, else
//! 127.0.0.1:5432, else a throwaway cluster). The PostgreSQL twin of `sqlite_steps`.
//!
//! ```text
//! cargo run --release -p durable-jobs-postgres --example pg_steps -- [steps] [jobs] [pool]
//! ```
//! Defaults: 5000 steps, 8 parallel jobs, a pool of 10 connections.

use durable_jobs::{JobContext, JobOptions, Queue, Storage, TaskError, Worker, WorkerOptions};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe};
use durable_jobs_postgres::testing::{server_url, unique_schema};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
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

async fn setting(pg: &PostgresStorage, name: &str) -> String {
    sqlx::query_scalar::<_, String>(AssertSqlSafe(format!("SHOW {name}")))
        .fetch_one(pg.pool())
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

async fn measure(
    pg: &PostgresStorage,
    steps: u64,
    parallel: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::new(Arc::new(pg.clone()));
    queue.register("steps", |ctx: JobContext, n: u64| async move {
        for i in 0..n {
            ctx.step("noop", move |_| async move { Ok::<_, TaskError>(i) })
                .await?;
        }
        Ok::<_, TaskError>(n)
    });
    println!(
        "postgres steps: server fsync={}, synchronous_commit={}",
        setting(pg, "fsync").await,
        setting(pg, "synchronous_commit").await
    );
    let one = run(&queue, 1, steps).await?.as_secs_f64();
    println!(
        "1 job x {steps} steps: {one:.3}s = {:.0} steps/s, {:.1} us/step",
        steps as f64 / one,
        one * 1e6 / steps as f64
    );
    let many = run(&queue, parallel, steps).await?.as_secs_f64();
    let total = steps * parallel as u64;
    println!(
        "{parallel} jobs x {steps} steps: {many:.3}s = {:.0} steps/s in all",
        total as f64 / many
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: u64 = arg(1, 5000);
    let parallel: usize = arg(2, 8);
    let pool: u32 = arg(3, 10);
    let pg = PostgresStorage::connect_with(
        &server_url()?,
        PostgresOptions::new()
            .schema(unique_schema("dj_steps"))
            .max_connections(pool),
    )
    .await?;
    pg.migrate().await?;
    let outcome = measure(&pg, steps, parallel).await;
    // The schema goes whether or not the measurement succeeded.
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
    pg.pool().close().await;
    outcome
}
