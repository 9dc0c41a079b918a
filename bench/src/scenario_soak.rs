//! The `soak` scenario: `--duration` seconds at a steady enqueue rate on a throwaway
//! PostgreSQL cluster the bench starts itself (initdb and pg_ctl, autovacuum on as in
//! production; the shared server runs with autovacuum off), reporting the tables' and
//! indexes' sizes, dead tuples and the enqueue-to-start latency p99 over time.
//!
//! Finished jobs are removed as a deployment would: by the worker's automatic retention,
//! keeping completed jobs [`KEEP`] (the default keeps them a day, which a ten-minute soak
//! would never reach) and running a purge pass every [`PURGE_EVERY`].

use crate::cli::Config;
use crate::report::{Results, Side};
use crate::stats::percentile;
use durable_jobs::{
    JobContext, JobOptions, Queue, RetentionPolicy, Storage, TaskError, Worker, WorkerOptions,
};
use durable_jobs_postgres::testing::ThrowawayCluster;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use serde::Deserialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the worker's retention pass runs.
const PURGE_EVERY: Duration = Duration::from_secs(10);
/// How long finished jobs are kept.
const KEEP: Duration = Duration::from_secs(60);
/// The producer's tick: each tick enqueues the jobs due since the last one, in one call.
const TICK: Duration = Duration::from_millis(10);
/// Where the soak's warm-up ends: the target is a flat size and p99 after it.
const MINUTE: Duration = Duration::from_secs(60);
/// Our worker's concurrency.
const CONCURRENCY: usize = 50;

#[derive(Deserialize)]
struct Stamp {
    /// Microseconds since the Unix epoch when the producer enqueued the job.
    at: u64,
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn err(ctx: &'static str) -> impl Fn(durable_jobs::Error) -> String {
    move |e| format!("durable-jobs {ctx}: {e}")
}

/// One sample of the database's shape.
struct Shape {
    total_mb: f64,
    index_mb: f64,
    live: i64,
    dead: i64,
}

/// Sizes over every table of the database (only ours live there): total (heap, TOAST
/// and indexes), indexes alone, live and dead tuples as the statistics collector sees
/// them.
async fn shape(admin: &PgPool) -> Result<Shape, String> {
    let row = sqlx::query(
        "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::float8,
                coalesce(sum(pg_indexes_size(relid)), 0)::float8,
                coalesce(sum(n_live_tup), 0)::int8,
                coalesce(sum(n_dead_tup), 0)::int8
         FROM pg_stat_user_tables",
    )
    .fetch_one(admin)
    .await
    .map_err(|e| format!("table sizes: {e}"))?;
    let mb = |b: f64| b / (1024.0 * 1024.0);
    Ok(Shape {
        total_mb: mb(row.get(0)),
        index_mb: mb(row.get(1)),
        live: row.get(2),
        dead: row.get(3),
    })
}

/// Runs the soak once and records its figures (ours only).
pub async fn run(cfg: &Config, res: &mut Results, errors: &mut Vec<String>) {
    let sec = "postgres soak (throwaway cluster, autovacuum on)";
    eprintln!(
        "  soak: {} s at {}/s, concurrency {CONCURRENCY}, automatic retention every {:?} \
         keeping completed jobs {:?}",
        cfg.soak_duration.as_secs(),
        cfg.soak_rate,
        PURGE_EVERY,
        KEEP
    );
    let cluster = match tokio::task::spawn_blocking(ThrowawayCluster::start).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return errors.push(format!("soak: start a throwaway cluster: {e}")),
        Err(e) => return errors.push(format!("soak: start a throwaway cluster: {e}")),
    };
    let out = soak(cfg, cluster.url()).await;
    // Stopping the cluster runs pg_ctl: off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    match out {
        Ok(figures) => {
            for (row, unit, higher, v) in figures {
                res.row(sec, &row, unit, higher, None);
                res.add(sec, &row, Side::Ours, v);
            }
        }
        Err(e) => {
            eprintln!("  soak FAILED: {e}");
            errors.push(format!("soak: {e}"));
        }
    }
}

type Figures = Vec<(String, &'static str, bool, f64)>;

async fn soak(cfg: &Config, url: &str) -> Result<Figures, String> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(|e| format!("connect to the throwaway cluster: {e}"))?;
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&admin)
        .await
        .map_err(|e| format!("SHOW autovacuum: {e}"))?;
    eprintln!("  soak: throwaway cluster at {url}, autovacuum {autovacuum}");
    let storage =
        PostgresStorage::connect_with(url, PostgresOptions::new().max_connections(cfg.pool))
            .await
            .map_err(err("connect"))?;
    let queue = Queue::new(Arc::new(storage));
    queue.storage().migrate().await.map_err(err("migrate"))?;
    let window: Arc<Mutex<Vec<f64>>> = Arc::default();
    let w = window.clone();
    queue.register("stamp", move |_ctx: JobContext, s: Stamp| {
        let w = w.clone();
        async move {
            let ms = micros_now().saturating_sub(s.at) as f64 / 1e3;
            w.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
            Ok::<_, TaskError>(())
        }
    });
    let worker = Worker::new(
        queue.clone(),
        WorkerOptions::new()
            .queue("default", CONCURRENCY)
            .retention(RetentionPolicy::default().completed(Some(KEEP)))
            .retention_interval(PURGE_EVERY),
    )
    .map_err(err("worker"))?;
    let sample_every = (cfg.soak_duration / 20).max(Duration::from_secs(5));
    let mut figures = Figures::new();
    let drive = async {
        let t0 = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut enqueued, mut next_sample) = (0u64, sample_every);
        // The size when the first minute is over; then the largest size and the worst
        // p99 of the windows that began after it: flat means these stay near the first.
        let mut at_minute: Option<f64> = None;
        let mut after_minute: Option<(f64, f64)> = None;
        let mut window_start = Duration::ZERO;
        let mut last = (0.0, 0.0);
        eprintln!(
            "  {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
            "t (s)", "enqueued", "total MB", "index MB", "live", "dead", "p50 ms", "p99 ms"
        );
        while t0.elapsed() < cfg.soak_duration {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * cfg.soak_rate) as u64;
            if due > enqueued {
                let at = micros_now();
                let batch: Vec<_> = (enqueued..due)
                    .map(|_| serde_json::json!({ "at": at }))
                    .collect();
                queue
                    .enqueue_many("stamp", batch, JobOptions::new())
                    .await
                    .map_err(err("enqueue_many"))?;
                enqueued = due;
            }
            if t0.elapsed() >= next_sample {
                next_sample += sample_every;
                let lat = std::mem::take(&mut *window.lock().unwrap_or_else(|e| e.into_inner()));
                let s = shape(&admin).await?;
                let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
                eprintln!(
                    "  {:>6.0} {:>10} {:>9.1} {:>9.1} {:>9} {:>9} {:>8.2} {:>8.2}",
                    t0.elapsed().as_secs_f64(),
                    enqueued,
                    s.total_mb,
                    s.index_mb,
                    s.live,
                    s.dead,
                    p50,
                    p99
                );
                let now = t0.elapsed();
                if window_start >= MINUTE {
                    let (mb, worst) = after_minute.unwrap_or((0.0, 0.0));
                    after_minute = Some((mb.max(s.total_mb), worst.max(p99)));
                } else if at_minute.is_none() && now >= MINUTE {
                    at_minute = Some(s.total_mb);
                }
                window_start = now;
                last = (s.total_mb, p99);
            }
        }
        let rate = cfg.soak_rate;
        if let Some(mb) = at_minute {
            figures.push((
                format!("total size at the first minute ({rate}/s)"),
                "MB",
                false,
                mb,
            ));
        }
        if let Some((mb, p99)) = after_minute {
            figures.push((
                format!("largest total size after the first minute ({rate}/s)"),
                "MB",
                false,
                mb,
            ));
            figures.push((
                format!(
                    "worst enqueue->start p99 of the windows after the first minute ({rate}/s)"
                ),
                "ms",
                false,
                p99,
            ));
        }
        figures.push((
            format!("total size at the end ({rate}/s)"),
            "MB",
            false,
            last.0,
        ));
        figures.push((
            format!("enqueue->start p99, last window ({rate}/s)"),
            "ms",
            false,
            last.1,
        ));
        Ok::<_, String>(())
    };
    let mut driven = Ok(());
    let report = worker
        .run_until(async { driven = drive.await })
        .await
        .map_err(err("worker run"));
    driven?;
    report?;
    admin.close().await;
    Ok(figures)
}
