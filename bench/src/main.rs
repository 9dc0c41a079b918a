//! The durable-jobs benchmark binary: throughput and latency of our backends, side by
//! side with graphile_worker on the same Postgres in the same run. See bench/README.md.

mod cli;
mod graphile;
mod instrument;
mod ours;
mod pgdb;
mod profile;
mod raw_sql;
mod raw_wide;
mod report;
mod scenario_backlog;
mod scenario_retention;
mod scenario_soak;
mod scenario_workflow;
mod stats;
mod store;
mod underway;

use ours::Backend;
use report::{Results, Side, Target};
use stats::percentile;
use std::future::Future;
use std::pin::Pin;

/// Runs one measurement, printing it as it lands; a failure is printed and recorded, and
/// the benchmark goes on with the next scenario.
async fn measure<T, F>(errors: &mut Vec<String>, what: &str, f: F) -> Option<T>
where
    F: Future<Output = Result<T, String>>,
    T: std::fmt::Debug,
{
    eprint!("  {what} ... ");
    match f.await {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("FAILED: {e}");
            errors.push(format!("{what}: {e}"));
            None
        }
    }
}

fn show(v: f64, unit: &str) {
    if unit == "ms" {
        eprintln!("{v:.2} {unit}");
    } else {
        eprintln!("{v:.0} {unit}");
    }
}

#[tokio::main]
async fn main() {
    let cfg = match cli::parse(std::env::args().skip(1)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{}", cli::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "durable-jobs bench: backends {:?}, scenarios {:?}, systems {:?}, {} jobs, {} run(s), \
         drain concurrency {:?}, batch {}, latency {} jobs at {}/s, pool {}",
        cfg.backends,
        cfg.scenarios,
        cfg.systems,
        cfg.jobs,
        cfg.runs,
        cfg.concurrency,
        cfg.batch,
        cfg.latency_jobs,
        cfg.latency_rate,
        cfg.pool
    );
    if let Some(n) = cfg.prefetch {
        println!("our workers run with WorkerOptions::prefetch({n})");
    }
    println!(
        "machine: {} cores, load average at start {}",
        cores(),
        loadavg()
    );
    // Before any queue or worker exists, so the library's metric handles bind to the
    // recorder and its callsites see the subscriber.
    let recorder = if cfg.instrumented {
        match instrument::install() {
            Ok(h) => {
                println!(
                    "INSTRUMENTED: tracing fmt subscriber (info, durable_jobs* targets, to a \
                     sink) and Prometheus metrics recorder installed for our side"
                );
                Some(h)
            }
            Err(e) => {
                eprintln!("error: --instrumented: {e}");
                std::process::exit(2);
            }
        }
    } else {
        None
    };
    let mut res = Results::default();
    let mut errors = vec![];
    for run in 1..=cfg.runs {
        eprintln!("run {run}/{}", cfg.runs);
        if cfg.backend("postgres") {
            postgres(&cfg, &mut res, &mut errors, run).await;
        }
        if cfg.backend("sqlite") {
            local(&cfg, &mut res, &mut errors, Backend::Sqlite).await;
        }
        if cfg.backend("memory") {
            local(&cfg, &mut res, &mut errors, Backend::Memory).await;
        }
    }
    res.print(cfg.runs);
    if let Some(h) = &recorder {
        println!("instrumented: {}", instrument::summary(h));
    }
    println!(
        "load average at end {} (other processes on this machine skew every figure)",
        loadavg()
    );
    if !errors.is_empty() {
        println!();
        println!("{} scenario(s) failed:", errors.len());
        for e in &errors {
            println!("  {e}");
        }
        std::process::exit(1);
    }
}

/// One side's measurement, not yet started.
type Measurement<'a> = Option<Pin<Box<dyn Future<Output = Result<f64, String>> + 'a>>>;

/// Runs ours then theirs, or theirs then ours on even runs, so neither side always goes
/// first into a warm (or a tired) server. `at` is (section, row, unit).
async fn pair(
    res: &mut Results,
    errors: &mut Vec<String>,
    run: usize,
    at: (&str, &str, &str),
    ours: Measurement<'_>,
    theirs: Measurement<'_>,
) {
    let (sec, row, unit) = at;
    let mut sides = vec![];
    if let Some(f) = ours {
        sides.push((Side::Ours, "durable-jobs", f));
    }
    if let Some(f) = theirs {
        sides.push((Side::Theirs, "graphile_worker", f));
    }
    if run.is_multiple_of(2) {
        sides.reverse();
    }
    for (side, name, f) in sides {
        if let Some(v) = measure(errors, &format!("{name} {row}"), f).await {
            show(v, unit);
            res.add(sec, row, side, v);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

async fn postgres(cfg: &cli::Config, res: &mut Results, errors: &mut Vec<String>, run: usize) {
    let sec = "postgres";
    let n = cfg.jobs;
    let (we, they) = (cfg.system("ours"), cfg.system("graphile"));
    if cfg.scenario("enqueue") {
        let row = format!("bulk enqueue {n} jobs, batches of {}", cfg.batch);
        res.row(sec, &row, "jobs/s", true, Some(Target::RatioAtLeast(3.0)));
        let o = we.then(|| Box::pin(ours::enqueue(cfg, Backend::Postgres)) as _);
        let t = they.then(|| Box::pin(graphile::enqueue(cfg)) as _);
        pair(res, errors, run, (sec, &row, "jobs/s"), o, t).await;
    }
    if cfg.scenario("drain") {
        for &c in &cfg.concurrency {
            let row = format!("drain {n} no-op jobs, concurrency {c}");
            // The performance issue's targets: 1.2x with our defaults, 1.5x with our
            // local queue matched to graphile_worker's (`--prefetch`).
            let want = if cfg.prefetch.is_some() { 1.5 } else { 1.2 };
            res.row(sec, &row, "jobs/s", true, Some(Target::RatioAtLeast(want)));
            let o = we.then(|| Box::pin(ours::drain(cfg, Backend::Postgres, c)) as _);
            let t = they.then(|| Box::pin(graphile::drain(cfg, c)) as _);
            pair(res, errors, run, (sec, &row, "jobs/s"), o, t).await;
        }
    }
    if cfg.scenario("latency") {
        let p50 = format!("idle enqueue->start latency p50 ({}/s)", cfg.latency_rate);
        let p99 = format!("idle enqueue->start latency p99 ({}/s)", cfg.latency_rate);
        res.row(sec, &p50, "ms", false, Some(Target::AtMost(1.0)));
        res.row(sec, &p99, "ms", false, Some(Target::AtMost(5.0)));
        let mut sides: Vec<(Side, &str)> = vec![];
        if we {
            sides.push((Side::Ours, "durable-jobs"));
        }
        if they {
            sides.push((Side::Theirs, "graphile_worker"));
        }
        if run.is_multiple_of(2) {
            sides.reverse();
        }
        for (side, name) in sides {
            let f = async {
                match side {
                    Side::Ours => ours::latency(cfg).await,
                    Side::Theirs => graphile::latency(cfg).await,
                }
            };
            if let Some(lat) = measure(errors, &format!("{name} idle latency"), f).await {
                let (a, b) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
                let max = percentile(&lat, 100.0);
                eprintln!("p50 {a:.2} ms, p99 {b:.2} ms, max {max:.2} ms");
                res.add(sec, &p50, side, a);
                res.add(sec, &p99, side, b);
            }
        }
    }
    if cfg.scenario("steps") {
        steps(cfg, res, errors, sec, Backend::Postgres).await;
    }
    if cfg.scenario("heartbeat") {
        heartbeats(cfg, res, errors, sec, Backend::Postgres).await;
    }
    if cfg.scenario("backlog") {
        scenario_backlog::run(cfg, res, errors, Backend::Postgres).await;
    }
    if cfg.scenario("retention") {
        scenario_retention::run(cfg, res, errors, Backend::Postgres).await;
    }
    if cfg.scenario("workflow") {
        scenario_workflow::run(cfg, res, errors, run).await;
    }
    if cfg.scenario("soak") {
        scenario_soak::run(cfg, res, errors).await;
    }
    if cfg.scenario("raw") {
        // No library at all: its figure sits in the first column.
        let sec = "postgres raw SQL yardstick";
        let row = format!(
            "plain INSERT .. FROM unnest, {n} rows, batches of {}",
            cfg.batch
        );
        let what = format!("raw SQL {row}");
        ours_only(
            res,
            errors,
            &what,
            (sec, &row, "jobs/s"),
            raw_sql::enqueue(cfg),
        )
        .await;
        for &b in &cfg.raw_batches {
            for &l in &cfg.raw_workers {
                for shape in raw_sql::Shape::ALL {
                    let row = format!("{}, {n} rows, batches of {b}, {l} loop(s)", shape.label());
                    let what = format!("raw SQL {row}");
                    let f = raw_sql::drain(cfg, b, l, shape);
                    ours_only(res, errors, &what, (sec, &row, "jobs/s"), f).await;
                }
            }
        }
    }
}

/// A figure only durable-jobs has (no graphile_worker side): adds its row to section
/// `at.0` with unit `at.2`, measures it and records it.
async fn ours_only<F>(
    res: &mut Results,
    errors: &mut Vec<String>,
    what: &str,
    (sec, row, unit): (&str, &str, &'static str),
    f: F,
) where
    F: Future<Output = Result<f64, String>>,
{
    res.row(sec, row, unit, true, None);
    if let Some(v) = measure(errors, what, f).await {
        show(v, unit);
        res.add(sec, row, Side::Ours, v);
    }
}

/// [`ours_only`] for a row named after its section: the progress line reads
/// "<section> <row>".
async fn ours_row<F>(
    res: &mut Results,
    errors: &mut Vec<String>,
    (sec, row, unit): (&str, &str, &'static str),
    f: F,
) where
    F: Future<Output = Result<f64, String>>,
{
    let what = format!("{sec} {row}");
    ours_only(res, errors, &what, (sec, row, unit), f).await;
}

/// The checkpointed-steps scenario on backend `b`, for 1 and 8 concurrent jobs.
async fn steps(
    cfg: &cli::Config,
    res: &mut Results,
    errors: &mut Vec<String>,
    sec: &str,
    b: Backend,
) {
    for jobs in [1usize, 8] {
        let row = format!(
            "checkpointed steps, {jobs} job(s) x {} steps",
            (cfg.jobs / 20).max(1)
        );
        if jobs == 8 && b == Backend::Postgres {
            res.row(sec, &row, "steps/s", true, Some(Target::AtLeast(15_000.0)));
        }
        ours_row(
            res,
            errors,
            (sec, &row, "steps/s"),
            ours::steps(cfg, b, jobs),
        )
        .await;
    }
}

/// The heartbeat scenario on backend `b`: one round renews every lease a worker holds in
/// the drain configuration, per lease and batched.
async fn heartbeats(
    cfg: &cli::Config,
    res: &mut Results,
    errors: &mut Vec<String>,
    sec: &str,
    b: Backend,
) {
    let rounds = 5;
    for renewal in [ours::Renewal::EachLease, ours::Renewal::Batched] {
        let how = match renewal {
            ours::Renewal::EachLease => "one heartbeat call each",
            ours::Renewal::Batched => "heartbeat_many per 1000",
        };
        let row = format!(
            "renew {} held leases x {rounds} rounds, {how}",
            ours::HELD_LEASES
        );
        ours_row(
            res,
            errors,
            (sec, &row, "leases/s"),
            ours::heartbeats(cfg, b, renewal, rounds),
        )
        .await;
    }
}

/// The in-process backends: ours only (graphile_worker has no such backend).
async fn local(cfg: &cli::Config, res: &mut Results, errors: &mut Vec<String>, b: Backend) {
    let sec = match b {
        Backend::Sqlite => "sqlite (temp file)",
        _ => "memory",
    };
    let n = cfg.jobs;
    if cfg.scenario("enqueue") {
        let row = format!("bulk enqueue {n} jobs, batches of {}", cfg.batch);
        ours_row(res, errors, (sec, &row, "jobs/s"), ours::enqueue(cfg, b)).await;
    }
    if cfg.scenario("drain") {
        for &c in &cfg.concurrency {
            let row = format!("drain {n} no-op jobs, concurrency {c}");
            if c == 500 {
                let want = if b == Backend::Sqlite {
                    50_000.0
                } else {
                    500_000.0
                };
                res.row(sec, &row, "jobs/s", true, Some(Target::AtLeast(want)));
            }
            ours_row(res, errors, (sec, &row, "jobs/s"), ours::drain(cfg, b, c)).await;
        }
    }
    if cfg.scenario("steps") {
        steps(cfg, res, errors, sec, b).await;
    }
    if cfg.scenario("heartbeat") {
        heartbeats(cfg, res, errors, sec, b).await;
    }
    if cfg.scenario("backlog") {
        scenario_backlog::run(cfg, res, errors, b).await;
    }
    if cfg.scenario("retention") {
        scenario_retention::run(cfg, res, errors, b).await;
    }
}
