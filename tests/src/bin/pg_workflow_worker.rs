//! A worker process running durable workflows on a PostgreSQL schema, for the workflow
//! crash tests (`tests/postgres_workflow_crash.rs`); the PostgreSQL twin of
//! `sqlite_workflow_worker`.
//!
//! ```text
//! pg_workflow_worker --url URL --schema NAME --log FILE --mode run|finish
//!                    [--lease-ms N] [--concurrency N] [--step-ms N]
//! ```
//! Tasks on queue `default`:
//! - `five_steps` (payload: an integer `n`): five checkpointed steps `s0`..`s4`; step `k`
//!   returns `10 n + k`, and the job returns the five values. Each step execution appends
//!   one line `<job id> <step> <pid> <checkpointed>` to the log with a single `O_APPEND`
//!   write before it returns, where `<checkpointed>` is 1 when the step's checkpoint
//!   already existed in the schema as the step started (read fresh from the database, not
//!   from the engine: a step that runs although its checkpoint exists is the bug the test
//!   hunts). Half of `--step-ms` passes before the write and half after it, so a kill can
//!   land between the side effect and its checkpoint.
//! - `sleeper` (payload: milliseconds): step `before`, a durable `ctx.sleep`, step
//!   `after`; returns the milliseconds. Logged the same way.
//!
//! Modes: `run` works until killed; `finish` works until no job in the file is
//! unfinished, then prints its report and exits. Both use the database clock (`now()`).

use durable_jobs::{JobContext, Queue, Storage, TaskError, Worker, WorkerOptions};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Args {
    url: String,
    schema: String,
    log: PathBuf,
    mode: String,
    lease: Duration,
    concurrency: usize,
    step: Duration,
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
        log: log.ok_or("--log is required")?,
        mode: mode.ok_or("--mode is required")?,
        lease: Duration::from_millis(lease_ms),
        concurrency,
        step: Duration::from_millis(step_ms),
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

/// What a step execution needs to record itself.
#[derive(Clone)]
struct Recorder {
    log: Arc<File>,
    storage: PostgresStorage,
    pause: Duration,
}

impl Recorder {
    /// The step's side effect: notes whether its checkpoint already existed (read from
    /// the database now), then appends its line in one `O_APPEND` write.
    async fn record(&self, ctx: &JobContext, step: &str) -> Result<(), TaskError> {
        // The step's own scope is its checkpoint key (the closure runs in a context
        // nested under it).
        let key = ctx.scope().to_string();
        let existed = self
            .storage
            .checkpoints(ctx.job_id())
            .await
            .map_err(|e| TaskError::retry(format!("read checkpoints: {e}")))?
            .iter()
            .any(|c| c.key == key);
        tokio::time::sleep(self.pause / 2).await;
        let line = format!(
            "{} {} {} {}\n",
            ctx.job_id(),
            step,
            std::process::id(),
            u8::from(existed)
        );
        (&*self.log)
            .write_all(line.as_bytes())
            .map_err(|e| TaskError::retry(format!("log: {e}")))?;
        tokio::time::sleep(self.pause / 2).await;
        Ok(())
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    // Room for every job slot's checkpoint reads and writes, the claim loop, heartbeats
    // and the sweeper at once.
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
    let queue = Queue::new(Arc::new(storage.clone()));
    let rec = Recorder {
        log: Arc::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.log)?,
        ),
        storage: storage.clone(),
        pause: args.step,
    };
    let r = rec.clone();
    queue.register("five_steps", move |ctx: JobContext, n: i64| {
        let r = r.clone();
        async move {
            let mut out = Vec::with_capacity(5);
            for k in 0..5i64 {
                let r = r.clone();
                let name = format!("s{k}");
                let v: i64 = ctx
                    .step(&name.clone(), move |sctx| async move {
                        r.record(&sctx, &name).await?;
                        Ok::<_, TaskError>(10 * n + k)
                    })
                    .await?;
                out.push(v);
            }
            Ok::<_, TaskError>(out)
        }
    });
    let r = rec.clone();
    queue.register("sleeper", move |ctx: JobContext, ms: u64| {
        let r = r.clone();
        async move {
            let r2 = r.clone();
            ctx.step("before", move |sctx| async move {
                r2.record(&sctx, "before").await
            })
            .await?;
            ctx.sleep(Duration::from_millis(ms)).await?;
            ctx.step("after", move |sctx| async move {
                r.record(&sctx, "after").await
            })
            .await?;
            Ok::<_, TaskError>(ms)
        }
    });
    let options = WorkerOptions::new()
        .queue("default", args.concurrency)
        .lease_duration(args.lease)
        .sweep_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50));
    let worker = Worker::new(queue, options)?;
    let report = match args.mode.as_str() {
        "run" => worker.run().await?,
        "finish" => {
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
    storage.pool().close().await;
    Ok(())
}

async fn all_finished(s: &PostgresStorage) -> bool {
    match s.counts().await {
        Ok(counts) => counts.iter().all(|c| c.status.is_finished()),
        Err(e) => {
            eprintln!("pg_workflow_worker: counts: {e}");
            false
        }
    }
}
