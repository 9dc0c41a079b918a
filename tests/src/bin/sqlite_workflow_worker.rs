//! A worker process running durable workflows on a SQLite file, for the workflow crash
//! tests (`tests/sqlite_workflow_crash.rs`).
//!
//! ```text
//! sqlite_workflow_worker --db FILE --log FILE --mode run|finish
//!                        [--lease-ms N] [--concurrency N] [--step-ms N]
//! ```
//! The tasks and modes are in `durable_jobs_tests::workflow_worker`.

use durable_jobs_sqlite::SqliteStorage;
use durable_jobs_tests::workflow_worker::WorkflowWorker;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Args {
    db: PathBuf,
    worker: WorkflowWorker,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut db, mut log, mut mode) = (None, None, None);
    let (mut lease_ms, mut concurrency, mut step_ms) = (2_000u64, 4usize, 40u64);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--db" => db = Some(PathBuf::from(value)),
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
        db: db.ok_or("--db is required")?,
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
            eprintln!("sqlite_workflow_worker: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let storage = SqliteStorage::open(&args.db).await?;
    args.worker.run(Arc::new(storage.clone())).await?;
    storage.close().await;
    Ok(())
}
