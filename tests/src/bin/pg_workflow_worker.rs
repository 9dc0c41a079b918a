//! A worker process running durable workflows on a PostgreSQL schema, for the workflow
//! crash tests (`tests/postgres_workflow_crash.rs`); the PostgreSQL twin of
//! `sqlite_workflow_worker`.
//!
//! ```text
//! pg_workflow_worker --url URL --schema NAME --log FILE --mode run|finish
//!                    [--lease-ms N] [--concurrency N] [--step-ms N]
//! ```
//! The tasks and modes are in `durable_jobs_tests::workflow_worker`.

use durable_jobs::Storage;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use durable_jobs_tests::workflow_worker::WorkflowWorker;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Args {
    url: String,
    schema: String,
    worker: WorkflowWorker,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut url, mut schema, mut log, mut mode) = (None, None, None, None);
    let (mut lease_ms, mut concurrency, mut step_ms) = (2_000u64, 4usize, 40u64);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value),
            "--schema" => schema = Some(value),
            "--log" => log = Some(PathBuf::from(value)),
            "--mode" => mode = Some(value),
            "--lease-ms" => lease_ms = number(&value)?,
            "--step-ms" => step_ms = number(&value)?,
            "--concurrency" => {
                concurrency = usize::try_from(number(&value)?).map_err(|e| e.to_string())?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        schema: schema.ok_or("--schema is required")?,
        worker: WorkflowWorker {
            log: log.ok_or("--log is required")?,
            mode: mode.ok_or("--mode is required")?,
            lease: Duration::from_millis(lease_ms),
            concurrency,
            step: Duration::from_millis(step_ms),
        },
    })
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pg_workflow_worker: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    // Room for every job slot's checkpoint reads and writes, the claim loop, heartbeats
    // and the sweeper at once.
    let storage = PostgresStorage::connect_with(
        &args.url,
        PostgresOptions::new().schema(&args.schema).max_connections(
            u32::try_from(args.worker.concurrency)
                .unwrap_or(u32::MAX)
                .saturating_add(4),
        ),
    )
    .await?;
    storage.migrate().await?;
    args.worker.run(Arc::new(storage.clone())).await?;
    storage.pool().close().await;
    Ok(())
}
