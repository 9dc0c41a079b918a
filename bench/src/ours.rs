//! Our side: durable-jobs' Queue and Worker on the memory, SQLite and Postgres backends.

use crate::cli::Config;
use crate::pgdb::FreshDb;
use crate::profile::Profiler;
use crate::stats::{payload, rate, Countdown, CpuMeter, LatencyProbe, LATENCY_WAIT};
use durable_jobs::{
    DynStorage, JobContext, JobOptions, JobStatus, Queue, Storage, StorageLayer, TaskError, Worker,
    WorkerOptions,
};
use durable_jobs_memory::MemoryStorage;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use durable_jobs_sqlite::SqliteStorage;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which backend a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    Postgres,
}

/// The args of the no-op job; deserialised like graphile's payload struct, for parity.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Noop {
    id: usize,
    data: String,
}

#[derive(Deserialize)]
struct Ping {
    seq: usize,
}

fn err(ctx: &str) -> impl Fn(durable_jobs::Error) -> String + '_ {
    move |e| format!("durable-jobs {ctx}: {e}")
}

/// A backend instance on fresh storage, and what to clean up afterwards.
struct Fresh {
    storage: DynStorage,
    /// `--profile`: the layer every queue made by [`Fresh::queue`] reports its calls to.
    profiler: Option<Arc<Profiler>>,
    pg: Option<FreshDb>,
    file: Option<PathBuf>,
}

static FILE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh SQLite file's path in the temp folder, unique in this run.
pub(crate) fn temp_sqlite_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "durable-jobs-bench-{}-{}.db",
        std::process::id(),
        FILE_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes a SQLite file with its WAL and shared-memory files.
pub(crate) fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

impl Fresh {
    async fn new(cfg: &Config, backend: Backend) -> Result<Fresh, String> {
        let mut fresh = match backend {
            Backend::Memory => Fresh {
                storage: Arc::new(MemoryStorage::new()),
                profiler: None,
                pg: None,
                file: None,
            },
            Backend::Sqlite => {
                let path = temp_sqlite_path();
                let s = SqliteStorage::open(&path)
                    .await
                    .map_err(err("open sqlite"))?;
                Fresh {
                    storage: Arc::new(s),
                    profiler: None,
                    pg: None,
                    file: Some(path),
                }
            }
            Backend::Postgres => {
                let db = FreshDb::create(&cfg.database_url).await?;
                let s = pg_storage(cfg, &db.url).await?;
                Fresh {
                    storage: Arc::new(s),
                    profiler: None,
                    pg: Some(db),
                    file: None,
                }
            }
        };
        fresh.storage.migrate().await.map_err(err("migrate"))?;
        if cfg.profile {
            fresh.profiler = Some(Arc::new(Profiler::new()));
        }
        Ok(fresh)
    }

    /// A queue over this storage; with `--profile`, its every storage call (and its
    /// workers') is shown to the profiler.
    fn queue(&self) -> Queue {
        match &self.profiler {
            Some(p) => {
                let layer: Arc<dyn StorageLayer> = p.clone();
                Queue::with_layers(self.storage.clone(), vec![layer])
            }
            None => Queue::new(self.storage.clone()),
        }
    }

    /// Prints the `--profile` breakdown, if profiling.
    fn profile(&self, label: &str) {
        if let Some(p) = &self.profiler {
            p.print(label);
        }
    }

    async fn cleanup(self) -> Result<(), String> {
        drop(self.profiler);
        drop(self.storage);
        if let Some(db) = self.pg {
            db.drop_db().await?;
        }
        if let Some(path) = self.file {
            remove_sqlite_files(&path);
        }
        Ok(())
    }
}

async fn pg_storage(cfg: &Config, url: &str) -> Result<PostgresStorage, String> {
    PostgresStorage::connect_with(url, PostgresOptions::new().max_connections(cfg.pool))
        .await
        .map_err(err("connect"))
}

fn noop_queue(queue: Queue, countdown: Arc<Countdown>) -> Queue {
    queue.register("noop", move |_ctx: JobContext, _args: Noop| {
        let c = countdown.clone();
        async move {
            c.hit();
            Ok::<_, TaskError>(())
        }
    });
    queue
}

/// Bulk enqueue: `cfg.jobs` jobs through `Queue::enqueue_many` in batches of `cfg.batch`,
/// one client. Payloads are built before the clock starts. Returns jobs/s.
pub async fn enqueue(cfg: &Config, backend: Backend) -> Result<f64, String> {
    let fresh = Fresh::new(cfg, backend).await?;
    let queue = noop_queue(fresh.queue(), Arc::new(Countdown::new(0)));
    let batches: Vec<Vec<serde_json::Value>> = (0..cfg.jobs)
        .step_by(cfg.batch)
        .map(|s| (s..(s + cfg.batch).min(cfg.jobs)).map(payload).collect())
        .collect();
    let t0 = Instant::now();
    let cpu = CpuMeter::start();
    for b in batches {
        queue
            .enqueue_many("noop", b, JobOptions::new())
            .await
            .map_err(err("enqueue_many"))?;
    }
    let elapsed = t0.elapsed();
    cpu.report(cfg.jobs);
    let stored = count(queue.storage(), JobStatus::Pending).await?;
    fresh.profile("bulk enqueue");
    drop(queue);
    fresh.cleanup().await?;
    if stored != cfg.jobs as u64 {
        return Err(format!("durable-jobs stored {stored} of {} jobs", cfg.jobs));
    }
    Ok(rate(cfg.jobs, elapsed))
}

async fn count(storage: &impl Storage, status: JobStatus) -> Result<u64, String> {
    Ok(storage
        .counts()
        .await
        .map_err(err("counts"))?
        .iter()
        .filter(|c| c.status == status)
        .map(|c| c.count)
        .sum())
}

/// Drain: `cfg.jobs` no-op jobs inserted beforehand; the clock runs from the worker's
/// start until the last handler ran. The worker then shuts down gracefully and every job
/// must be completed in storage. Returns jobs/s.
pub async fn drain(cfg: &Config, backend: Backend, concurrency: usize) -> Result<f64, String> {
    let fresh = Fresh::new(cfg, backend).await?;
    let countdown = Arc::new(Countdown::new(cfg.jobs));
    let queue = noop_queue(fresh.queue(), countdown.clone());
    for s in (0..cfg.jobs).step_by(10_000) {
        let chunk: Vec<_> = (s..(s + 10_000).min(cfg.jobs)).map(payload).collect();
        queue
            .enqueue_many("noop", chunk, JobOptions::new())
            .await
            .map_err(err("enqueue_many"))?;
    }
    let worker =
        Worker::new(queue.clone(), drain_options(cfg, concurrency)).map_err(err("worker"))?;
    let t0 = Instant::now();
    let cpu = CpuMeter::start();
    let mut waited = Err(String::new());
    let report = worker
        .run_until(async {
            waited = countdown.wait(cfg.timeout).await;
            cpu.report(cfg.jobs);
            countdown.report_start(t0);
        })
        .await
        .map_err(err("worker run"));
    let done = waited?;
    report?;
    let completed = count(queue.storage(), JobStatus::Completed).await?;
    fresh.profile(&format!(
        "drain, concurrency {concurrency} (includes the untimed setup enqueue)"
    ));
    drop((worker, queue));
    fresh.cleanup().await?;
    if completed != cfg.jobs as u64 {
        return Err(format!(
            "durable-jobs completed {completed} of {} jobs in storage after shutdown",
            cfg.jobs
        ));
    }
    Ok(rate(cfg.jobs, done - t0))
}

/// Our worker's options in the drain and latency scenarios: one queue at `concurrency`,
/// plus `--prefetch` and `--worker` tuning where given.
fn drain_options(cfg: &Config, concurrency: usize) -> WorkerOptions {
    let mut o = WorkerOptions::new().queue("default", concurrency);
    if let Some(n) = cfg.prefetch {
        o = o.prefetch(n);
    }
    if let Some(n) = cfg.claim_batch {
        o = o.max_claim_batch(n);
    }
    if let Some(n) = cfg.claims_in_flight {
        o = o.claims_in_flight(n);
    }
    if let Some(n) = cfg.completion_batch {
        o = o.completion_batch(n);
    }
    if let Some(n) = cfg.completion_writers {
        o = o.completion_writers(n);
    }
    o
}

/// Idle latency on Postgres: a separate producer (its own pool, its own Queue) enqueues
/// one job at a time at `cfg.latency_rate`, so the worker learns of it only through the
/// database (LISTEN/NOTIFY), not an in-process wake. Returns the latencies in ms.
pub async fn latency(cfg: &Config) -> Result<Vec<f64>, String> {
    let fresh = Fresh::new(cfg, Backend::Postgres).await?;
    let url = fresh.pg.as_ref().map(|d| d.url.clone()).unwrap_or_default();
    let warmup = 20;
    let probe = Arc::new(LatencyProbe::new(warmup + cfg.latency_jobs));
    let queue = fresh.queue();
    let p = probe.clone();
    queue.register("ping", move |_ctx: JobContext, args: Ping| {
        let p = p.clone();
        async move {
            p.ran(args.seq);
            Ok::<_, TaskError>(())
        }
    });
    let producer = Queue::new(Arc::new(pg_storage(cfg, &url).await?));
    // The drain's tuning too (`--prefetch`, `--worker`), so latency is measured in the
    // configuration the drain figures come from.
    let worker = Worker::new(queue.clone(), drain_options(cfg, cfg.latency_concurrency))
        .map_err(err("worker"))?;
    let produce = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.latency_rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..warmup + cfg.latency_jobs {
            tick.tick().await;
            probe.start(seq);
            producer
                .enqueue_raw("ping", serde_json::json!({ "seq": seq }), JobOptions::new())
                .await
                .map_err(err("enqueue"))?;
            if seq == 0 {
                // The worker is up (and listening) once the first warm-up job ran.
                probe.wait_ran(0, cfg.timeout).await?;
            }
        }
        probe.finish(cfg.timeout.min(LATENCY_WAIT)).await;
        Ok::<_, String>(())
    };
    let mut produced = Ok(());
    let report = worker
        .run_until(async { produced = produce.await })
        .await
        .map_err(err("worker run"));
    produced?;
    report?;
    fresh.profile("idle latency (worker side)");
    drop((worker, queue, producer));
    fresh.cleanup().await?;
    Ok(probe.latencies_ms().split_off(warmup))
}

/// `opts` with `--checkpoint-writers`, when given.
pub fn checkpoint_options(cfg: &Config, opts: WorkerOptions) -> WorkerOptions {
    match cfg.checkpoint_writers {
        Some(n) => opts.checkpoint_writers(n),
        None => opts,
    }
}

/// Checkpointed steps per second: `jobs` jobs each run `steps` no-op `ctx.step` calls.
pub async fn steps(cfg: &Config, backend: Backend, jobs: usize) -> Result<f64, String> {
    let steps = (cfg.jobs / 20).max(1);
    let fresh = Fresh::new(cfg, backend).await?;
    let queue = fresh.queue();
    queue.register("steps", |ctx: JobContext, n: usize| async move {
        for i in 0..n {
            let got: usize = ctx
                .step(
                    &format!("s{i}"),
                    move |_| async move { Ok::<_, TaskError>(i) },
                )
                .await?;
            if got != i {
                return Err(TaskError::no_retry(format!("step {i} returned {got}")));
            }
        }
        Ok::<_, TaskError>(n)
    });
    queue
        .enqueue_many("steps", std::iter::repeat_n(steps, jobs), JobOptions::new())
        .await
        .map_err(err("enqueue"))?;
    let worker = Worker::new(
        queue.clone(),
        checkpoint_options(cfg, WorkerOptions::new().queue("default", jobs)),
    )
    .map_err(err("worker"))?;
    let t0 = Instant::now();
    let report = worker.drain().await.map_err(err("drain"))?;
    let secs = t0.elapsed().as_secs_f64();
    fresh.profile(&format!("steps, {jobs} job(s)"));
    drop((worker, queue));
    fresh.cleanup().await?;
    if report.completed != jobs as u64 {
        return Err(format!(
            "{} of {jobs} step jobs completed: {report:?}",
            report.completed
        ));
    }
    Ok((steps * jobs) as f64 / secs)
}

/// Leases one worker holds in the heartbeat scenario: concurrency 500 plus a local queue
/// of 1000, the drain scenario's configuration.
pub const HELD_LEASES: usize = 1500;

/// How a heartbeat round renews its leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// One `heartbeat` call (on PostgreSQL one statement and commit) per lease: what the
    /// worker did before `heartbeat_many`.
    EachLease,
    /// `heartbeat_many` per 1000 leases, as the worker does.
    Batched,
}

/// Claims [`HELD_LEASES`] jobs, then renews all their leases `rounds` times the way
/// `renewal` says; returns leases renewed per second.
pub async fn heartbeats(
    cfg: &Config,
    backend: Backend,
    renewal: Renewal,
    rounds: usize,
) -> Result<f64, String> {
    let fresh = Fresh::new(cfg, backend).await?;
    // Through a queue's instrumented handle, as the worker renews leases, so the
    // figure includes what every storage call costs and `--profile` sees the calls.
    let queue = fresh.queue();
    let s = queue.storage();
    let jobs = (0..HELD_LEASES).map(|i| durable_jobs::NewJob::new("noop", payload(i)));
    s.enqueue_many(jobs.collect())
        .await
        .map_err(err("enqueue"))?;
    let extend = Duration::from_secs(60);
    let mut leases = Vec::with_capacity(HELD_LEASES);
    while leases.len() < HELD_LEASES {
        let claimed = s
            .dequeue(durable_jobs::DequeueParams {
                queues: vec!["default".into()],
                tasks: Vec::new(),
                limit: HELD_LEASES - leases.len(),
                lease_duration: extend,
                holder: "bench".into(),
                forbidden_flags: Vec::new(),
            })
            .await
            .map_err(err("dequeue"))?;
        if claimed.is_empty() {
            return Err(format!("claimed {} of {HELD_LEASES} jobs", leases.len()));
        }
        leases.extend(claimed.into_iter().map(|c| c.lease));
    }
    let t0 = Instant::now();
    for _ in 0..rounds {
        match renewal {
            Renewal::EachLease => {
                for lease in &leases {
                    s.heartbeat(lease, extend).await.map_err(err("heartbeat"))?;
                }
            }
            Renewal::Batched => {
                for batch in leases.chunks(1000) {
                    for r in s
                        .heartbeat_many(batch, extend)
                        .await
                        .map_err(err("heartbeat_many"))?
                    {
                        r.map_err(err("heartbeat_many item"))?;
                    }
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    fresh.profile(&format!("heartbeats, {renewal:?}"));
    drop(queue);
    fresh.cleanup().await?;
    Ok((HELD_LEASES * rounds) as f64 / secs)
}
