//! `--instrumented`: what an application that watches durable-jobs installs, so the
//! drain figures with and without the flag give the library's instrumentation cost.
//!
//! - A `tracing` subscriber: tracing-subscriber's fmt layer at info level for the
//!   durable-jobs crates (targets `durable_jobs*`), writing to `std::io::sink`, so every
//!   info span and event is really built and formatted, then thrown away. The per-job
//!   spans (`durable_jobs.attempt`, `durable_jobs.enqueue`) are at the library's default
//!   span level, debug, so this subscriber records none of them: the figure is what an
//!   application logging at info pays. Other crates' targets are
//!   left off, so graphile_worker (whose info event per finished job would be formatted
//!   too) runs uninstrumented in the same process.
//! - A metrics recorder: metrics-exporter-prometheus's recorder installed globally, no
//!   HTTP listener, with its upkeep (which drains the histograms) run every 5 s as the
//!   exporter's own listener would, and buckets for durable-jobs' histograms, as the
//!   library's docs advise (the exporter's default renders histograms as summaries,
//!   whose upkeep costs about 1,400 instructions per recorded value).
//!
//! Both are process-wide and installed once, before any queue or worker is made.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Seconds: the bucket bounds for durable-jobs' duration and wait histograms.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// How often the recorder's histograms are drained (the exporter's default).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the subscriber and the recorder; returns the recorder's handle. Must run
/// inside the Tokio runtime (the upkeep is a task).
pub fn install() -> Result<PrometheusHandle, String> {
    tracing_subscriber::registry()
        .with(Targets::new().with_target("durable_jobs", LevelFilter::INFO))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        .try_init()
        .map_err(|e| format!("installing the tracing subscriber: {e}"))?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("durable_jobs_".into()), BUCKETS)
        .map_err(|e| format!("histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// A one-line account of what the recorder holds, to show it saw the jobs.
pub fn summary(handle: &PrometheusHandle) -> String {
    let text = handle.render();
    let series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    format!(
        "the Prometheus recorder holds {series} sample lines; jobs enqueued {:.0}, completed {:.0}, \
         storage calls timed {:.0}",
        sum(durable_jobs::metric::JOBS_ENQUEUED_TOTAL),
        sum(durable_jobs::metric::JOBS_COMPLETED_TOTAL),
        sum(&format!(
            "{}_count",
            durable_jobs::instrumented::STORAGE_CALL_SECONDS
        )),
    )
}
