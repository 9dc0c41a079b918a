//! A worker process on a SQLite file, for the multi-process and crash tests
//! (`tests/sqlite_*.rs`).
//!
//! ```text
//! sqlite_worker --db FILE --log FILE --mode drain|block|finish|capped
//!               [--marker FILE] [--lease-ms N] [--concurrency N] [--limit N]
//! ```
//! Every mode serves task `record` on queue `default`. Each execution appends one line,
//! `<job id> <attempt> <pid>`, to the log with a single `O_APPEND` write, so lines from
//! several processes never interleave.
//! - `drain`: runs until nothing is claimable or running here, prints the report, exits.
//! - `block`: on its first job, creates the marker file and then blocks forever (the
//!   test SIGKILLs it). It records nothing.
//! - `finish`: runs until no job in the file is unfinished (its sweeper reclaims expired
//!   leases meanwhile), then exits.
//! - `capped`: serves the key-limit workload instead (see `durable_jobs_tests::capped`;
//!   `--limit` is the key's limit), logging `start|end <job id> <pid>` lines, until no job
//!   in the file is unfinished.

use durable_jobs::{JobContext, Queue, Storage, TaskError, Worker, WorkerOptions};
use durable_jobs_sqlite::SqliteStorage;
use durable_jobs_tests::capped;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Args {
    db: PathBuf,
    log: PathBuf,
    mode: String,
    marker: Option<PathBuf>,
    lease: Duration,
    concurrency: usize,
    limit: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut db, mut log, mut mode, mut marker) = (None, None, None, None);
    let (mut lease_ms, mut concurrency, mut limit) = (30_000u64, 10usize, 1usize);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        match flag.as_str() {
            "--db" => db = Some(PathBuf::from(value)),
            "--log" => log = Some(PathBuf::from(value)),
            "--mode" => mode = Some(value),
            "--marker" => marker = Some(PathBuf::from(value)),
            "--lease-ms" => lease_ms = value.parse().map_err(|e| format!("--lease-ms: {e}"))?,
            "--concurrency" => {
                concurrency = value.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--limit" => limit = value.parse().map_err(|e| format!("--limit: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        db: db.ok_or("--db is required")?,
        log: log.ok_or("--log is required")?,
        mode: mode.ok_or("--mode is required")?,
        marker,
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
            eprintln!("sqlite_worker: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let storage = SqliteStorage::open(&args.db).await?;
    let queue = Queue::new(Arc::new(storage.clone()));
    let log: Arc<File> = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.log)?,
    );
    let block = args.mode == "block";
    let marker = args.marker.clone();
    let capped_log = Arc::clone(&log);
    queue.register(
        "record",
        move |ctx: JobContext, _args: serde_json::Value| {
            let log = Arc::clone(&log);
            let marker = marker.clone();
            async move {
                if block {
                    if let Some(m) = &marker {
                        std::fs::write(m, ctx.job_id().to_string())
                            .map_err(|e| TaskError::retry(format!("marker: {e}")))?;
                    }
                    std::future::pending::<()>().await;
                }
                let line = format!(
                    "{} {} {}\n",
                    ctx.job_id(),
                    ctx.attempt(),
                    std::process::id()
                );
                // One write call on an O_APPEND file: lines of several processes stay whole.
                (&*log)
                    .write_all(line.as_bytes())
                    .map_err(|e| TaskError::retry(format!("log: {e}")))?;
                Ok::<_, TaskError>(())
            }
        },
    );
    let capped_storage = storage.clone();
    let limit = args.limit;
    let capped_path = args.log.clone();
    queue.register(
        capped::QUEUE,
        move |ctx: JobContext, _: serde_json::Value| {
            let log = Arc::clone(&capped_log);
            let storage = capped_storage.clone();
            let log_path = capped_path.clone();
            async move {
                let line =
                    |event: &str| format!("{event} {} {}\n", ctx.job_id(), std::process::id());
                // One write call on an O_APPEND file: lines of several processes stay whole,
                // in the order they were written.
                (&*log)
                    .write_all(line("start").as_bytes())
                    .map_err(|e| TaskError::retry(format!("log: {e}")))?;
                capped::hold(&storage, limit, || {
                    let path = log_path.clone();
                    async move { open_in_log(&path) }
                })
                .await
                .map_err(TaskError::retry)?;
                (&*log)
                    .write_all(line("end").as_bytes())
                    .map_err(|e| TaskError::retry(format!("log: {e}")))?;
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
    storage.close().await;
    Ok(())
}

async fn all_finished(s: &SqliteStorage) -> bool {
    match s.counts().await {
        Ok(counts) => counts.iter().all(|c| c.status.is_finished()),
        Err(e) => {
            eprintln!("sqlite_worker: counts: {e}");
            false
        }
    }
}

/// Capped jobs that logged their start and not their end, across every process.
fn open_in_log(path: &std::path::Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read log: {e}"))?;
    let events: Vec<bool> = text
        .lines()
        .filter_map(|l| match l.split(' ').next() {
            Some("start") => Some(true),
            Some("end") => Some(false),
            _ => None,
        })
        .collect();
    Ok(capped::open_now(&events))
}
