//! A worker process for the PostgreSQL chaos test (`tests/chaos_postgres.rs`): plain jobs
//! and three-step workflows, each execution logged to a file with one `O_APPEND` write.
//!
//! ```text
//! chaos_worker --url URL --schema NAME --log FILE [--lease-ms N] [--concurrency N] [--step-ms N]
//! ```
//! Tasks on queue `default`:
//! - `chaos.job`: logs `job <job> <attempt> <token> <pid> - 0 <micros>` as it starts,
//!   works `step-ms`, returns `{attempt, token, pid}`.
//! - `chaos.flow`: three steps `s0`..`s2`; each logs `step <job> <attempt> <token> <pid>
//!   <key> <existed> <micros>` (`existed`: the step's checkpoint was already stored when
//!   it started, read fresh from storage) halfway through its `step-ms`, and returns
//!   `{attempt, token, pid}` (its checkpoint); the workflow returns the same.
//!
//! `<micros>` is the wall clock when the execution started. The worker runs until SIGTERM
//! (also one sent while it still connects), then shuts down gracefully and prints its report
//! (`completed=.. lost=..`).

use durable_jobs::{DynStorage, JobContext, Queue, Storage, TaskError, Worker, WorkerOptions};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Args {
    url: String,
    schema: String,
    log: PathBuf,
    lease: Duration,
    concurrency: usize,
    step: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut url, mut schema, mut log) = (None, None, None);
    let (mut lease_ms, mut concurrency, mut step_ms) = (2_000u64, 4u64, 60u64);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value),
            "--schema" => schema = Some(value),
            "--log" => log = Some(PathBuf::from(value)),
            "--lease-ms" => lease_ms = number(&value)?,
            "--concurrency" => concurrency = number(&value)?,
            "--step-ms" => step_ms = number(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        schema: schema.ok_or("--schema is required")?,
        log: log.ok_or("--log is required")?,
        lease: Duration::from_millis(lease_ms),
        concurrency: usize::try_from(concurrency).map_err(|e| e.to_string())?,
        step: Duration::from_millis(step_ms),
    })
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chaos_worker: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Appends executions to the log, one line per `write` so lines never interleave.
#[derive(Clone)]
struct Log {
    file: Arc<File>,
    storage: DynStorage,
    step: Duration,
}

impl Log {
    fn line(&self, kind: &str, ctx: &JobContext, key: &str, existed: bool, started: u128) {
        let line = format!(
            "{kind} {} {} {} {} {key} {} {started}\n",
            ctx.job_id(),
            ctx.lease().attempt,
            ctx.lease().token,
            std::process::id(),
            u8::from(existed),
        );
        // A log that cannot be written makes the test's counts wrong: stop loudly.
        if let Err(e) = (&*self.file).write_all(line.as_bytes()) {
            eprintln!("chaos_worker: log: {e}");
            std::process::exit(3);
        }
    }

    async fn step(&self, ctx: &JobContext) -> Result<(), TaskError> {
        let started = micros();
        let key = ctx.scope().to_string();
        let existed = self
            .storage
            .list_checkpoints(ctx.job_id())
            .await
            .map_err(|e| TaskError::retry(format!("read checkpoints: {e}")))?
            .iter()
            .any(|c| c.key == key);
        tokio::time::sleep(self.step / 2).await;
        self.line("step", ctx, &key, existed, started);
        tokio::time::sleep(self.step / 2).await;
        Ok(())
    }
}

fn outcome(ctx: &JobContext) -> serde_json::Value {
    json!({
        "attempt": ctx.lease().attempt,
        "token": ctx.lease().token,
        "pid": std::process::id(),
    })
}

/// Connects and migrates, again while the server is restarting (the test restarts it at
/// any time, also while a replacement worker starts).
async fn connect(args: &Args) -> durable_jobs::Result<PostgresStorage> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let storage = PostgresStorage::connect_with(
                &args.url,
                PostgresOptions::new().schema(&args.schema).max_connections(
                    u32::try_from(args.concurrency)
                        .unwrap_or(u32::MAX)
                        .saturating_add(4),
                ),
            )
            .await?;
            storage.migrate().await?;
            Ok::<_, durable_jobs::Error>(storage)
        };
        match attempt.await {
            Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Listening first: a SIGTERM that arrives while the worker still connects is kept
    // (the default action would kill it before it could report).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let args = parse_args()?;
    let storage = connect(&args).await?;
    let log = Log {
        file: Arc::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.log)?,
        ),
        storage: Arc::new(storage.clone()),
        step: args.step,
    };
    let queue = Queue::new(Arc::new(storage.clone()));
    let l = log.clone();
    queue.register("chaos.job", move |ctx: JobContext, _: u64| {
        l.line("job", &ctx, "-", false, micros());
        let step = l.step;
        async move {
            tokio::time::sleep(step).await;
            Ok::<_, TaskError>(outcome(&ctx))
        }
    });
    queue.register("chaos.flow", move |ctx: JobContext, _: u64| {
        let l = log.clone();
        async move {
            for k in 0..3 {
                let l = l.clone();
                let _: serde_json::Value = ctx
                    .step(&format!("s{k}"), move |sctx| async move {
                        l.step(&sctx).await?;
                        Ok(outcome(&sctx))
                    })
                    .await?;
            }
            Ok::<_, TaskError>(outcome(&ctx))
        }
    });
    let worker = Worker::new(
        queue,
        WorkerOptions::new()
            .queue("default", args.concurrency)
            .lease_duration(args.lease)
            .sweep_interval(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(50))
            .metrics_interval(Duration::ZERO),
    )?;
    let report = worker
        .run_until(async move {
            term.recv().await;
        })
        .await?;
    println!(
        "completed={} failed={} retried={} released={} lost={}",
        report.completed, report.failed, report.retried, report.released, report.lost
    );
    storage.pool().close().await;
    Ok(())
}
