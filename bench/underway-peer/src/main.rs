//! The `workflow` scenario's peer: underway (crates.io `underway`, durable step functions
//! on PostgreSQL) running three no-op steps per workflow. The bench starts it with a fresh
//! database's URL and prints what it prints: workflows/s.
//!
//! USAGE: underway-peer DATABASE_URL WORKFLOWS CONCURRENCY POOL TIMEOUT_SECS
//!
//! `WORKFLOWS` workflows are enqueued before the clock starts (underway enqueues one job
//! per call; eight callers at once), then one underway worker with `CONCURRENCY` slots
//! runs them. The clock runs from the worker's start until the last workflow's third step
//! ran. An underway job is a chain of steps, each step a row of its own that the worker
//! dequeues in its own transaction and that enqueues the next.

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use underway::{Job, To};

#[derive(Serialize, Deserialize)]
struct One {
    n: u64,
}

#[derive(Serialize, Deserialize)]
struct Two {
    n: u64,
}

#[derive(Serialize, Deserialize)]
struct Three {
    n: u64,
}

/// Counts finished workflows; notifies once the last one finished.
struct Finished {
    target: usize,
    done: AtomicUsize,
    all: Notify,
}

impl Finished {
    fn hit(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            self.all.notify_one();
        }
    }
}

fn err<E: std::fmt::Display>(ctx: &'static str) -> impl Fn(E) -> String {
    move |e| format!("underway {ctx}: {e}")
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> Result<T, String> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {i} ({name}) missing or not a number"))
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(rate) => println!("{rate}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<f64, String> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).ok_or("argument 1 (DATABASE_URL) missing")?;
    let workflows: usize = arg(&args, 2, "WORKFLOWS")?;
    let concurrency: usize = arg(&args, 3, "CONCURRENCY")?;
    let pool_size: u32 = arg(&args, 4, "POOL")?;
    let timeout = Duration::from_secs(arg(&args, 5, "TIMEOUT_SECS")?);
    // underway holds a connection (its transaction) per running step, plus its two
    // listeners: a pool smaller than that would measure the pool, not underway.
    let pool = PgPoolOptions::new()
        .max_connections((concurrency as u32 + 4).max(pool_size))
        .connect(url)
        .await
        .map_err(err("connect"))?;
    underway::run_migrations(&pool)
        .await
        .map_err(err("migrations"))?;
    let finished = Arc::new(Finished {
        target: workflows,
        done: AtomicUsize::new(0),
        all: Notify::new(),
    });
    let f = finished.clone();
    let job = Job::builder()
        .step(|_cx, One { n }| async move { To::next(Two { n: n + 1 }) })
        .step(|_cx, Two { n }| async move { To::next(Three { n: n + 1 }) })
        .step(move |_cx, Three { n: _ }| {
            let f = f.clone();
            async move {
                f.hit();
                To::done()
            }
        })
        .name("bench_flow")
        .pool(pool.clone())
        .build()
        .await
        .map_err(err("build the job"))?;
    let mut enqueuers = tokio::task::JoinSet::new();
    for part in 0..8 {
        let job = job.clone();
        enqueuers.spawn(async move {
            for n in (part..workflows).step_by(8) {
                job.enqueue(&One { n: n as u64 })
                    .await
                    .map_err(err("enqueue"))?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(r) = enqueuers.join_next().await {
        r.map_err(err("enqueuer"))??;
    }
    let mut worker = job.worker();
    worker.set_concurrency_limit(concurrency);
    let stopper = worker.clone();
    let t0 = Instant::now();
    let running = tokio::spawn(async move { worker.run().await });
    // notify_one keeps a permit, so a finish before this wait is not lost.
    let waited = tokio::time::timeout(timeout, finished.all.notified()).await;
    let elapsed = t0.elapsed();
    stopper.shutdown();
    let ran = running.await.map_err(err("worker task"))?;
    if waited.is_err() {
        return Err(format!(
            "underway: timed out after {timeout:?} with {} of {workflows} workflows finished",
            finished.done.load(Ordering::Acquire)
        ));
    }
    ran.map_err(err("worker"))?;
    pool.close().await;
    Ok(workflows as f64 / elapsed.as_secs_f64())
}
