//! The durable-jobs benchmark binary: throughput and latency of our backends, side by
//! side with graphile_worker on the same Postgres in the same run. See bench/README.md.

mod cli;
mod graphile;
mod pgdb;
mod raw_sql;
mod report;
mod stats;

use report::{Results, Side, Target};
use stats::percentile;
use std::future::Future;

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
    let mut res = Results::default();
    let mut errors = vec![];
    for run in 1..=cfg.runs {
        eprintln!("run {run}/{}", cfg.runs);
        if cfg.backend("postgres") {
            postgres(&cfg, &mut res, &mut errors).await;
        }
    }
    res.print(cfg.runs);
    if !errors.is_empty() {
        println!();
        println!("{} scenario(s) failed:", errors.len());
        for e in &errors {
            println!("  {e}");
        }
        std::process::exit(1);
    }
}

async fn postgres(cfg: &cli::Config, res: &mut Results, errors: &mut Vec<String>) {
    let sec = "postgres";
    let n = cfg.jobs;
    let theirs = cfg.system("graphile");
    if cfg.scenario("enqueue") {
        let row = format!("bulk enqueue {n} jobs, batches of {}", cfg.batch);
        res.row(sec, &row, "jobs/s", true, Some(Target::RatioAtLeast(3.0)));
        if theirs {
            let what = format!("graphile_worker {row}");
            if let Some(v) = measure(errors, &what, graphile::enqueue(cfg)).await {
                show(v, "jobs/s");
                res.add(sec, &row, Side::Theirs, v);
            }
        }
    }
    if cfg.scenario("drain") {
        for &c in &cfg.concurrency {
            let row = format!("drain {n} no-op jobs, concurrency {c}");
            res.row(sec, &row, "jobs/s", true, Some(Target::RatioAtLeast(1.2)));
            if theirs {
                let what = format!("graphile_worker {row}");
                if let Some(v) = measure(errors, &what, graphile::drain(cfg, c)).await {
                    show(v, "jobs/s");
                    res.add(sec, &row, Side::Theirs, v);
                }
            }
        }
    }
    if cfg.scenario("latency") {
        let p50 = format!("idle enqueue->start latency p50 ({}/s)", cfg.latency_rate);
        let p99 = format!("idle enqueue->start latency p99 ({}/s)", cfg.latency_rate);
        res.row(sec, &p50, "ms", false, Some(Target::AtMost(2.0)));
        res.row(sec, &p99, "ms", false, Some(Target::AtMost(10.0)));
        if theirs {
            let what = "graphile_worker idle latency";
            if let Some(lat) = measure(errors, what, graphile::latency(cfg)).await {
                let (a, b) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
                eprintln!("p50 {a:.2} ms, p99 {b:.2} ms, max {:.2} ms", percentile(&lat, 100.0));
                res.add(sec, &p50, Side::Theirs, a);
                res.add(sec, &p99, Side::Theirs, b);
            }
        }
    }
    if cfg.scenario("raw") {
        // No library at all: its figure sits in the first column.
        let sec = "postgres raw SQL yardstick";
        for &b in &cfg.raw_batches {
            for &l in &cfg.raw_workers {
                let row = format!("claim+complete {n} rows, batches of {b}, {l} loop(s)");
                res.row(sec, &row, "jobs/s", true, None);
                let what = format!("raw SQL {row}");
                if let Some(v) = measure(errors, &what, raw_sql::drain(cfg, b, l)).await {
                    show(v, "jobs/s");
                    res.add(sec, &row, Side::Ours, v);
                }
            }
        }
    }
}
