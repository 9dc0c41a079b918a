//! The `backlog` scenario, on every backend: a drain on top of a deep backlog the claim
//! cannot take (1M pending jobs due tomorrow, 100k parked workflows, 1M retained completed
//! jobs; on PostgreSQL seeded set-based with generate_series, elsewhere through the
//! storage calls, see `store`), against the shallow drain in the same run;
//! then, with the backlog present, the cost of an empty claim and the idle latency, both
//! before the drain (the backlog alone) and after it. Beside them, the idle latency on the
//! shallow database after its drain, measured the same way: after a drain, each claim
//! walks the index entries of the jobs the drain finished until VACUUM removes them, and
//! the shared server runs with autovacuum off, so the rows after a drain show that cost
//! whether or not a backlog is present. (On the embedded backends the producer is the
//! store itself, see `Store::producer`.)
//! Also the helpers the `retention` scenario shares: a fresh migrated database, a timed
//! drain.

use crate::cli::Config;
use crate::ours::Backend;
use crate::pgdb::FreshDb;
use crate::report::{Results, Side, Target};
use crate::stats::{payload, percentile, rate, Countdown, LatencyProbe, LATENCY_WAIT};
use crate::store::{self, Store};
use durable_jobs::{
    DequeueParams, JobContext, JobOptions, Queue, RetentionPolicy, Storage, TaskError, Worker,
    WorkerOptions,
};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pending jobs due tomorrow in the backlog.
const NOT_YET_DUE: usize = 1_000_000;
/// Parked workflows (waiting without a timer) in the backlog.
const WAITING: usize = 100_000;
/// Completed jobs kept by retention in the backlog.
const RETAINED: usize = 1_000_000;
/// Empty claims timed with the backlog present.
const EMPTY_CLAIMS: usize = 200;

#[derive(Deserialize)]
struct Ping {
    seq: usize,
}

/// A fresh database with our schema migrated in it.
pub(crate) struct Pg {
    pub db: FreshDb,
    pub storage: Arc<PostgresStorage>,
}

impl Pg {
    pub(crate) async fn new(cfg: &Config) -> Result<Pg, String> {
        let db = FreshDb::create(&cfg.database_url).await?;
        let storage = PostgresStorage::connect_with(
            &db.url,
            PostgresOptions::new().max_connections(cfg.pool),
        )
        .await
        .map_err(|e| format!("connect: {e}"))?;
        storage
            .migrate()
            .await
            .map_err(|e| format!("migrate: {e}"))?;
        Ok(Pg {
            db,
            storage: Arc::new(storage),
        })
    }

    /// Runs set-based SQL; `{jobs}` names our jobs table.
    pub(crate) async fn sql(&self, stmt: &str) -> Result<(), String> {
        let jobs = format!("\"{}\".jobs", self.storage.schema());
        let stmt = stmt.replace("{jobs}", &jobs);
        sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.clone()))
            .execute(self.storage.pool())
            .await
            .map_err(|e| format!("{stmt}: {e}"))?;
        Ok(())
    }

    pub(crate) async fn drop_db(self) -> Result<(), String> {
        self.storage.pool().close().await;
        self.db.drop_db().await
    }
}

/// The concurrency the scenario's drains run at: the last of `--concurrency`.
pub(crate) fn concurrency(cfg: &Config) -> usize {
    cfg.concurrency.last().copied().unwrap_or(10)
}

/// Enqueues `cfg.jobs` due no-op jobs and drains them with one worker (default options,
/// `--prefetch`, the given retention); the clock runs from the worker's start to the last
/// handler. Returns jobs/s.
pub(crate) async fn drain(
    cfg: &Config,
    store: &Store,
    retention: RetentionPolicy,
) -> Result<f64, String> {
    let countdown = Arc::new(Countdown::new(cfg.jobs));
    let queue = Queue::new(store.storage());
    let c = countdown.clone();
    queue.register("noop", move |_ctx: JobContext, _args: serde_json::Value| {
        let c = c.clone();
        async move {
            c.hit();
            Ok::<_, TaskError>(())
        }
    });
    for s in (0..cfg.jobs).step_by(10_000) {
        let chunk: Vec<_> = (s..(s + 10_000).min(cfg.jobs)).map(payload).collect();
        queue
            .enqueue_many("noop", chunk, JobOptions::new())
            .await
            .map_err(|e| format!("enqueue_many: {e}"))?;
    }
    let mut opts = WorkerOptions::new()
        .queue("default", concurrency(cfg))
        .retention(retention);
    if let Some(n) = cfg.prefetch {
        opts = opts.prefetch(n);
    }
    let worker = Worker::new(queue, opts).map_err(|e| format!("worker: {e}"))?;
    let t0 = Instant::now();
    let mut waited = Err(String::new());
    worker
        .run_until(async { waited = countdown.wait(cfg.timeout).await })
        .await
        .map_err(|e| format!("worker run: {e}"))?;
    Ok(rate(cfg.jobs, waited? - t0))
}

/// The backlog the claim cannot take: set-based on PostgreSQL, through the storage
/// calls elsewhere.
async fn seed_backlog(store: &Store) -> Result<(), String> {
    let Store::Postgres(pg) = store else {
        return store::seed_backlog(&store.storage(), NOT_YET_DUE, WAITING, RETAINED).await;
    };
    pg.sql(&format!(
        "INSERT INTO {{jobs}} (task, payload, run_at)
         SELECT 'noop', '{{}}', now() + interval '1 day' + i * interval '1 ms'
         FROM generate_series(1, {NOT_YET_DUE}) AS i;
         INSERT INTO {{jobs}} (task, payload, status, attempt, run_at, started_at)
         SELECT 'workflow', '{{}}', 'waiting', 1, timestamptz '9999-12-31 00:00:00+00', now()
         FROM generate_series(1, {WAITING});
         INSERT INTO {{jobs}} (task, payload, status, attempt, run_at, started_at,
                               completed_at, result)
         SELECT 'noop', '{{}}', 'completed', 1, now() - interval '1 hour',
                now() - interval '1 hour', now() - interval '1 hour', 'null'
         FROM generate_series(1, {RETAINED})"
    ))
    .await?;
    // (VACUUM refuses to run in the implicit transaction of a multi-statement call.)
    pg.sql("VACUUM ANALYZE {jobs}").await
}

/// Times empty claims (what an idle worker's poll costs); returns (p50, p99) in ms.
async fn empty_claims(store: &Store) -> Result<(f64, f64), String> {
    let storage = store.storage();
    let params = DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["noop".into()],
        limit: 100,
        lease_duration: Duration::from_secs(30),
        holder: "bench".into(),
        forbidden_flags: Vec::new(),
    };
    let mut ms = Vec::with_capacity(EMPTY_CLAIMS);
    for i in 0..EMPTY_CLAIMS + 20 {
        let t0 = Instant::now();
        let got = storage
            .dequeue(params.clone())
            .await
            .map_err(|e| format!("dequeue: {e}"))?;
        if !got.is_empty() {
            return Err(format!("an empty claim took {} jobs", got.len()));
        }
        if i >= 20 {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((percentile(&ms, 50.0), percentile(&ms, 99.0)))
}

/// Idle latency: a producer (its own pool on PostgreSQL, see [`Store::producer`])
/// enqueues one job at a time at `--latency-rate`; the worker learns of each through the
/// database. Returns ms.
async fn latency(cfg: &Config, store: &Store) -> Result<Vec<f64>, String> {
    let warmup = 20;
    let probe = Arc::new(LatencyProbe::new(warmup + cfg.latency_jobs));
    let queue = Queue::new(store.storage());
    let p = probe.clone();
    queue.register("ping", move |_ctx: JobContext, args: Ping| {
        let p = p.clone();
        async move {
            p.ran(args.seq);
            Ok::<_, TaskError>(())
        }
    });
    let producer = Queue::new(store.producer().await?);
    let mut opts = WorkerOptions::new().queue("default", cfg.latency_concurrency);
    if let Some(n) = cfg.prefetch {
        opts = opts.prefetch(n);
    }
    let worker = Worker::new(queue, opts).map_err(|e| format!("worker: {e}"))?;
    let produce = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.latency_rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..warmup + cfg.latency_jobs {
            tick.tick().await;
            probe.start(seq);
            producer
                .enqueue_raw("ping", serde_json::json!({ "seq": seq }), JobOptions::new())
                .await
                .map_err(|e| format!("enqueue: {e}"))?;
            if seq == 0 {
                probe.wait_ran(0, cfg.timeout).await?;
            }
        }
        probe.finish(cfg.timeout.min(LATENCY_WAIT)).await;
        Ok::<_, String>(())
    };
    let mut produced = Ok(());
    worker
        .run_until(async { produced = produce.await })
        .await
        .map_err(|e| format!("worker run: {e}"))?;
    produced?;
    Ok(probe.latencies_ms().split_off(warmup))
}

/// Records one of our figures under the `backlog` section, printing it.
pub(crate) fn record(
    res: &mut Results,
    sec: &str,
    row: &str,
    (unit, higher): (&'static str, bool),
    target: Option<Target>,
    v: f64,
) {
    eprintln!("  {sec}: {row}: {v:.3} {unit}");
    res.row(sec, row, unit, higher, target);
    res.add(sec, row, Side::Ours, v);
}

async fn measure(cfg: &Config, res: &mut Results, backend: Backend) -> Result<(), String> {
    let sec = &Store::section(backend, "backlog");
    let c = concurrency(cfg);
    let policy = RetentionPolicy::default();
    let shallow = Store::new(cfg, backend).await?;
    let flat = async {
        let flat = drain(cfg, &shallow, policy).await?;
        shallow.settle().await?;
        Ok::<_, String>((flat, latency(cfg, &shallow).await?))
    }
    .await;
    shallow.drop_store().await?;
    let (flat, flat_lat) = flat?;
    let deep = Store::new(cfg, backend).await?;
    let t0 = Instant::now();
    let out = async {
        seed_backlog(&deep).await?;
        eprintln!(
            "  {sec}: seeded {NOT_YET_DUE} due tomorrow, {WAITING} parked, {RETAINED} \
             completed in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        deep.settle().await?;
        let (claim50, claim99) = empty_claims(&deep).await?;
        let before = latency(cfg, &deep).await?;
        let over = drain(cfg, &deep, policy).await?;
        deep.settle().await?;
        let after = latency(cfg, &deep).await?;
        Ok::<_, String>((claim50, claim99, over, before, after))
    }
    .await;
    deep.drop_store().await?;
    let (claim50, claim99, over, lat, after) = out?;
    let n = cfg.jobs;
    let rows = [
        (
            format!("shallow drain {n} jobs, concurrency {c}"),
            ("jobs/s", true),
            None,
            flat,
        ),
        (
            format!("drain {n} jobs over the backlog, concurrency {c}"),
            ("jobs/s", true),
            None,
            over,
        ),
        (
            "backlog drain / shallow drain".to_string(),
            ("x", true),
            Some(Target::AtLeast(0.8)),
            over / flat,
        ),
        (
            "empty claim with the backlog, p50".to_string(),
            ("ms", false),
            Some(Target::AtMost(1.0)),
            claim50,
        ),
        (
            "empty claim with the backlog, p99".to_string(),
            ("ms", false),
            None,
            claim99,
        ),
        (
            format!(
                "shallow idle latency after the drain p50 ({}/s)",
                cfg.latency_rate
            ),
            ("ms", false),
            None,
            percentile(&flat_lat, 50.0),
        ),
        (
            format!(
                "shallow idle latency after the drain p99 ({}/s)",
                cfg.latency_rate
            ),
            ("ms", false),
            None,
            percentile(&flat_lat, 99.0),
        ),
        (
            format!("idle latency with the backlog p50 ({}/s)", cfg.latency_rate),
            ("ms", false),
            Some(Target::AtMost(1.0)),
            percentile(&lat, 50.0),
        ),
        (
            format!("idle latency with the backlog p99 ({}/s)", cfg.latency_rate),
            ("ms", false),
            Some(Target::AtMost(5.0)),
            percentile(&lat, 99.0),
        ),
        (
            format!(
                "idle latency with the backlog after the drain p50 ({}/s)",
                cfg.latency_rate
            ),
            ("ms", false),
            None,
            percentile(&after, 50.0),
        ),
        (
            format!(
                "idle latency with the backlog after the drain p99 ({}/s)",
                cfg.latency_rate
            ),
            ("ms", false),
            None,
            percentile(&after, 99.0),
        ),
    ];
    for (row, unit, target, v) in rows {
        record(res, sec, &row, unit, target, v);
    }
    Ok(())
}

/// The `backlog` scenario on `backend`; a failure is recorded and the bench goes on.
pub(crate) async fn run(
    cfg: &Config,
    res: &mut Results,
    errors: &mut Vec<String>,
    backend: Backend,
) {
    let sec = Store::section(backend, "backlog");
    Store::report(&sec, errors, measure(cfg, res, backend)).await;
}
