//! The `workflow` scenario: three-step durable workflows, enqueued before the clock starts
//! and run from the worker's start until the last one's third step ran, in workflows/s;
//! ours (three checkpointed `ctx.step`s in one job, library defaults) beside underway (a
//! three-step underway job) on the same server in the same run.

use crate::cli::Config;
use crate::pgdb::FreshDb;
use crate::profile::Profiler;
use crate::report::{Results, Side, Target};
use crate::stats::{rate, Countdown};
use durable_jobs::{
    JobContext, JobOptions, JobStatus, Queue, Storage, StorageLayer, TaskError, Worker,
    WorkerOptions,
};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use std::sync::Arc;
use std::time::Instant;

fn err(ctx: &'static str) -> impl Fn(durable_jobs::Error) -> String {
    move |e| format!("durable-jobs {ctx}: {e}")
}

/// Runs the scenario once (ours and underway, in an order that alternates by run) and
/// records both figures in one row, whose ratio is ours over underway.
pub async fn run(cfg: &Config, res: &mut Results, errors: &mut Vec<String>, run: usize) {
    let sec = "postgres workflow (the graphile_worker column holds underway)";
    let (n, c) = (cfg.workflows, cfg.workflow_concurrency);
    let row = format!("{n} three-step workflows, concurrency {c}");
    res.row(
        sec,
        &row,
        "workflows/s",
        true,
        Some(Target::RatioAtLeast(3.0)),
    );
    let mut sides = vec![Side::Ours, Side::Theirs];
    if run.is_multiple_of(2) {
        sides.reverse();
    }
    for side in sides {
        let (name, figure) = match side {
            Side::Ours => ("durable-jobs", ours(cfg, n, c).await),
            Side::Theirs => ("underway", crate::underway::workflows(cfg, n, c).await),
        };
        eprint!("  {name} {row} ... ");
        match figure {
            Ok(v) => {
                eprintln!("{v:.0} workflows/s");
                res.add(sec, &row, side, v);
            }
            Err(e) => {
                eprintln!("FAILED: {e}");
                errors.push(format!("{name} {row}: {e}"));
            }
        }
    }
}

/// Ours: `workflows` jobs, each running three checkpointed no-op steps in sequence, on a
/// worker with the library's defaults at `concurrency`. Every job must be completed in
/// storage with the last step's result afterwards.
async fn ours(cfg: &Config, workflows: usize, concurrency: usize) -> Result<f64, String> {
    let db = FreshDb::create(&cfg.database_url).await?;
    let out = ours_on(cfg, &db, workflows, concurrency).await;
    db.drop_db().await?;
    out
}

async fn ours_on(
    cfg: &Config,
    db: &FreshDb,
    workflows: usize,
    concurrency: usize,
) -> Result<f64, String> {
    let storage =
        PostgresStorage::connect_with(&db.url, PostgresOptions::new().max_connections(cfg.pool))
            .await
            .map_err(err("connect"))?;
    // With `--profile`, every storage call of the queue and its worker is tallied.
    let profiler = cfg.profile.then(|| Arc::new(Profiler::new()));
    let queue = match &profiler {
        Some(p) => {
            let layer: Arc<dyn StorageLayer> = p.clone();
            Queue::with_layers(Arc::new(storage), vec![layer])
        }
        None => Queue::new(Arc::new(storage)),
    };
    queue.storage().migrate().await.map_err(err("migrate"))?;
    let countdown = Arc::new(Countdown::new(workflows));
    let done = countdown.clone();
    queue.register("flow", move |ctx: JobContext, n: u64| {
        let done = done.clone();
        async move {
            let a: u64 = ctx
                .step("one", move |_| async move { Ok::<_, TaskError>(n + 1) })
                .await?;
            let b: u64 = ctx
                .step("two", move |_| async move { Ok::<_, TaskError>(a + 1) })
                .await?;
            let c: u64 = ctx
                .step("three", move |_| async move { Ok::<_, TaskError>(b + 1) })
                .await?;
            done.hit();
            Ok::<_, TaskError>(c)
        }
    });
    for s in (0..workflows).step_by(1000) {
        let chunk: Vec<u64> = (s..(s + 1000).min(workflows)).map(|n| n as u64).collect();
        queue
            .enqueue_many("flow", chunk, JobOptions::new())
            .await
            .map_err(err("enqueue_many"))?;
    }
    let worker = Worker::new(
        queue.clone(),
        crate::ours::checkpoint_options(cfg, WorkerOptions::new().queue("default", concurrency)),
    )
    .map_err(err("worker"))?;
    let t0 = Instant::now();
    let mut waited = Err(String::new());
    let report = worker
        .run_until(async { waited = countdown.wait(cfg.timeout).await })
        .await
        .map_err(err("worker run"));
    let finished = waited?;
    report?;
    if let Some(p) = &profiler {
        p.print(&format!("{workflows} three-step workflows"));
    }
    let completed: u64 = queue
        .storage()
        .counts()
        .await
        .map_err(err("counts"))?
        .iter()
        .filter(|c| c.status == JobStatus::Completed)
        .map(|c| c.count)
        .sum();
    if completed != workflows as u64 {
        return Err(format!(
            "{completed} of {workflows} workflows completed in storage after shutdown"
        ));
    }
    Ok(rate(workflows, finished - t0))
}
