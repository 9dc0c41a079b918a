//! The peer: graphile_worker (crates.io), configured the way its own perf test runs it:
//! local queue of 5000, completions batched every 5 ms, 5 ms poll interval, concurrency 500
//! (the drain scenario also runs it at our other concurrencies for a like-for-like ratio).

use crate::cli::Config;
use crate::pgdb::FreshDb;
use crate::stats::{payload, rate, Countdown, CpuMeter, LatencyProbe, LATENCY_WAIT};
use graphile_worker::{
    IntoTaskHandlerResult, JobSpec, LocalQueueConfig, RawJobSpec, TaskHandler, WorkerContext,
    WorkerOptions, WorkerShutdownConfig, WorkerUtils,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCHEMA: &str = "graphile_worker";
/// graphile_worker's perf test settings.
const LOCAL_QUEUE_SIZE: usize = 5000;
const BATCH_DELAY: Duration = Duration::from_millis(5);
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The no-op job: counts itself and returns.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Noop {
    id: usize,
    data: String,
}

impl TaskHandler for Noop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        if let Some(c) = ctx.get_ext::<Arc<Countdown>>() {
            c.hit();
        }
        Ok::<(), String>(())
    }
}

/// The latency job: stamps the instant its handler starts.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Ping {
    seq: usize,
}

impl TaskHandler for Ping {
    const IDENTIFIER: &'static str = "ping";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        if let Some(p) = ctx.get_ext::<Arc<LatencyProbe>>() {
            p.ran(self.seq);
        }
        Ok::<(), String>(())
    }
}

fn specs(range: std::ops::Range<usize>) -> Vec<RawJobSpec> {
    range
        .map(|i| RawJobSpec {
            identifier: Noop::IDENTIFIER.to_string(),
            payload: payload(i),
            spec: JobSpec::default(),
        })
        .collect()
}

fn err<E: std::fmt::Display>(ctx: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("graphile_worker {ctx}: {e}")
}

async fn setup(cfg: &Config) -> Result<(FreshDb, PgPool, WorkerUtils), String> {
    let db = FreshDb::create(&cfg.database_url).await?;
    let pool = db.pool(cfg.pool).await?;
    let utils = WorkerUtils::new(pool.clone(), SCHEMA);
    utils
        .migrate()
        .await
        .map_err(|e| format!("graphile_worker migrate: {e}"))?;
    Ok((db, pool, utils))
}

async fn teardown(db: FreshDb, pool: PgPool) -> Result<(), String> {
    pool.close().await;
    db.drop_db().await
}

fn options(pool: &PgPool, concurrency: usize) -> WorkerOptions {
    WorkerOptions::default()
        .pg_pool(pool.clone())
        .schema(SCHEMA)
        .concurrency(concurrency)
        .poll_interval(POLL_INTERVAL)
        .complete_job_batch_delay(BATCH_DELAY)
        .local_queue(LocalQueueConfig::default().with_size(LOCAL_QUEUE_SIZE))
        .worker_shutdown(WorkerShutdownConfig::default().listen_os_shutdown_signals(false))
}

/// Bulk enqueue: `cfg.jobs` jobs through `add_raw_jobs` in batches of `cfg.batch`, one
/// client. Payloads are built before the clock starts. Returns jobs/s.
pub async fn enqueue(cfg: &Config) -> Result<f64, String> {
    let (db, pool, utils) = setup(cfg).await?;
    let batches: Vec<Vec<RawJobSpec>> = (0..cfg.jobs)
        .step_by(cfg.batch)
        .map(|s| specs(s..(s + cfg.batch).min(cfg.jobs)))
        .collect();
    let t0 = Instant::now();
    let cpu = CpuMeter::start();
    for b in &batches {
        utils.add_raw_jobs(b).await.map_err(err("add_raw_jobs"))?;
    }
    let elapsed = t0.elapsed();
    cpu.report(cfg.jobs);
    let stored = count_jobs(&pool).await?;
    teardown(db, pool).await?;
    if stored != cfg.jobs as i64 {
        return Err(format!(
            "graphile_worker stored {stored} of {} jobs",
            cfg.jobs
        ));
    }
    Ok(rate(cfg.jobs, elapsed))
}

async fn count_jobs(pool: &PgPool) -> Result<i64, String> {
    sqlx::query_scalar("SELECT count(*) FROM graphile_worker._private_jobs")
        .fetch_one(pool)
        .await
        .map_err(|e| format!("count graphile jobs: {e}"))
}

/// Drain: `cfg.jobs` no-op jobs inserted beforehand; the clock runs from just after the
/// worker was initialised until the last handler ran. Returns jobs/s.
pub async fn drain(cfg: &Config, concurrency: usize) -> Result<f64, String> {
    let (db, pool, utils) = setup(cfg).await?;
    for s in (0..cfg.jobs).step_by(10_000) {
        utils
            .add_raw_jobs(&specs(s..(s + 10_000).min(cfg.jobs)))
            .await
            .map_err(err("add_raw_jobs"))?;
    }
    let countdown = Arc::new(Countdown::new(cfg.jobs));
    let worker = options(&pool, concurrency)
        .add_extension(countdown.clone())
        .define_job::<Noop>()
        .init()
        .await
        .map_err(|e| format!("graphile_worker init: {e}"))?;
    let worker = Arc::new(worker);
    let w = worker.clone();
    let t0 = Instant::now();
    let cpu = CpuMeter::start();
    let handle = tokio::spawn(async move { w.run().await });
    let waited = countdown.wait(cfg.timeout).await;
    cpu.report(cfg.jobs);
    countdown.report_start(t0);
    worker.request_shutdown();
    let run = handle.await;
    let done = waited?;
    run.map_err(|e| format!("graphile_worker run panicked: {e}"))?
        .map_err(|e| format!("graphile_worker run: {e}"))?;
    let left = count_jobs(&pool).await?;
    teardown(db, pool).await?;
    if left != 0 {
        return Err(format!("graphile_worker left {left} jobs after the drain"));
    }
    Ok(rate(cfg.jobs, done - t0))
}

/// Idle latency: one job at a time at `cfg.latency_rate` jobs/s into an idle worker
/// (after a warm-up), from just before `add_raw_job` to the handler's first line.
/// Returns the latencies in ms.
pub async fn latency(cfg: &Config) -> Result<Vec<f64>, String> {
    let (db, pool, utils) = setup(cfg).await?;
    let warmup = 20;
    let probe = Arc::new(LatencyProbe::new(warmup + cfg.latency_jobs));
    let worker = options(&pool, 500)
        .add_extension(probe.clone())
        .define_job::<Ping>()
        .init()
        .await
        .map_err(|e| format!("graphile_worker init: {e}"))?;
    let worker = Arc::new(worker);
    let w = worker.clone();
    let handle = tokio::spawn(async move { w.run().await });
    let result = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.latency_rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..warmup + cfg.latency_jobs {
            tick.tick().await;
            probe.start(seq);
            utils
                .add_raw_job(Ping::IDENTIFIER, Ping { seq }, JobSpec::default())
                .await
                .map_err(err("add_raw_job"))?;
            if seq == 0 {
                // The worker is up (and listening) once the first warm-up job ran.
                probe.wait_ran(0, cfg.timeout).await?;
            }
        }
        probe.finish(cfg.timeout.min(LATENCY_WAIT)).await;
        Ok::<_, String>(probe.latencies_ms().split_off(warmup))
    }
    .await;
    worker.request_shutdown();
    let run = handle.await;
    let lat = result?;
    run.map_err(|e| format!("graphile_worker run panicked: {e}"))?
        .map_err(|e| format!("graphile_worker run: {e}"))?;
    teardown(db, pool).await?;
    Ok(lat)
}
