//! A worker process on a PostgreSQL schema, for the multi-process and crash tests
//! (`tests/postgres_*.rs`).
//!
//! ```text
//! pg_worker --url URL --schema NAME --mode drain|block|finish|capped
//!           [--lease-ms N] [--concurrency N] [--limit N]
//! ```
//! Every mode migrates (concurrently with its siblings) and serves task `record` on
//! queue `default`. Each execution inserts `(job id, attempt, pid)` into the schema's
//! `executions` table.
//! - `drain`: runs until nothing is claimable or running here, prints the report, exits.
//! - `block`: on its first job, records its lease in `blocked`, then blocks forever (the
//!   test SIGKILLs it). It records no execution.
//! - `finish`: runs until no job in the schema is unfinished (its sweeper reclaims
//!   expired leases meanwhile), then exits.
//! - `capped`: serves the key-limit workload instead (see `durable_jobs_tests::capped`;
//!   `--limit` is the key's limit), recording each start and end in `capped_events`,
//!   until no job in the schema is unfinished.

use durable_jobs::{JobContext, Queue, Storage, TaskError, Worker, WorkerOptions};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use durable_jobs_tests::{capped, pg};
use std::sync::Arc;
use std::time::Duration;

struct Args {
    url: String,
    schema: String,
    mode: String,
    lease: Duration,
    concurrency: usize,
    limit: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut url, mut schema, mut mode) = (None, None, None);
    let (mut lease_ms, mut concurrency, mut limit) = (30_000u64, 20usize, 1usize);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = Some(value),
            "--schema" => schema = Some(value),
            "--mode" => mode = Some(value),
            "--lease-ms" => lease_ms = value.parse().map_err(|e| format!("--lease-ms: {e}"))?,
            "--concurrency" => {
                concurrency = value.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--limit" => limit = value.parse().map_err(|e| format!("--limit: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        schema: schema.ok_or("--schema is required")?,
        mode: mode.ok_or("--mode is required")?,
        lease: Duration::from_millis(lease_ms),
        concurrency,
        limit,
    })
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pg_worker: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let storage = PostgresStorage::connect_with(
        &args.url,
        PostgresOptions::new()
            .schema(&args.schema)
            .max_connections(5),
    )
    .await?;
    storage.migrate().await?;
    let queue = Queue::new(Arc::new(storage.clone()));
    let block = args.mode == "block";
    let recorder = storage.clone();
    queue.register(
        pg::TASK,
        move |ctx: JobContext, _args: serde_json::Value| {
            let s = recorder.clone();
            async move {
                if block {
                    pg::record_blocked(&s, ctx.lease())
                        .await
                        .map_err(TaskError::retry)?;
                    std::future::pending::<()>().await;
                }
                pg::record_execution(&s, ctx.job_id(), ctx.attempt())
                    .await
                    .map_err(TaskError::retry)?;
                Ok::<_, TaskError>(())
            }
        },
    );
    let capped_storage = storage.clone();
    let limit = args.limit;
    queue.register(
        capped::QUEUE,
        move |ctx: JobContext, _: serde_json::Value| {
            let s = capped_storage.clone();
            async move {
                pg::record_capped_event(&s, true, ctx.job_id())
                    .await
                    .map_err(TaskError::retry)?;
                capped::hold(&s, limit, || pg::open_capped(&s))
                    .await
                    .map_err(TaskError::retry)?;
                pg::record_capped_event(&s, false, ctx.job_id())
                    .await
                    .map_err(TaskError::retry)?;
                Ok::<_, TaskError>(())
            }
        },
    );
    let served = if args.mode == "capped" {
        capped::QUEUE
    } else {
        "default"
    };
    let options = WorkerOptions::new()
        .queue(served, args.concurrency)
        .lease_duration(args.lease)
        .sweep_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50));
    let worker = Worker::new(queue, options)?;
    let report = match args.mode.as_str() {
        "drain" => worker.drain().await?,
        "block" => worker.run().await?,
        "finish" | "capped" => {
            let s = storage.clone();
            worker
                .run_until(async move {
                    while !all_finished(&s).await {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await?
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    println!(
        "completed={} failed={} retried={} released={} lost={}",
        report.completed, report.failed, report.retried, report.released, report.lost
    );
    Ok(())
}

async fn all_finished(s: &PostgresStorage) -> bool {
    match s.counts().await {
        Ok(counts) => counts.iter().all(|c| c.status.is_finished()),
        Err(e) => {
            eprintln!("pg_worker: counts: {e}");
            false
        }
    }
}
