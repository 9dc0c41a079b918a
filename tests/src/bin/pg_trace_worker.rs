//! A worker process on a PostgreSQL schema that reports each attempt's trace, for
//! `tests/postgres_trace.rs`.
//!
//! ```text
//! pg_trace_worker --url URL --schema NAME
//! ```
//! It migrates, serves task [`TASK`] on queue `default` until nothing is claimable or
//! running, and exits. A capturing `tracing` layer prints one line per finished
//! `durable_jobs.attempt` span, with the span's fields:
//! `attempt job_id=1 trace_id=... parent_span_id=... span_id=...`. The handler prints
//! what it sees from inside the attempt: `handler job_id=1 current_trace_id=...
//! stored=<the job's traceparent>`.

use durable_jobs::{trace, JobContext, Queue, Storage, TaskError, Worker, WorkerOptions};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The task this worker serves.
const TASK: &str = "traced";

/// An attempt span's fields, kept in the registry's span extensions until it closes.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

/// Prints every `durable_jobs.attempt` span's fields when it closes.
struct PrintAttempts;

impl<S> Layer<S> for PrintAttempts
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "durable_jobs.attempt" {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let ext = span.extensions();
        let Some(fields) = ext.get::<Fields>() else {
            return;
        };
        let line: Vec<String> = fields.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut out = std::io::stdout().lock();
        // A closed stdout only loses the report; the test then fails on its absence.
        let _ = writeln!(out, "attempt {}", line.join(" "));
        let _ = out.flush();
    }
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pg_trace_worker: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn flag(args: &[String], name: &str) -> Result<String, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("{name} is required"))
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, schema) = (flag(&args, "--url")?, flag(&args, "--schema")?);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PrintAttempts))?;
    let storage = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new().schema(&schema).max_connections(5),
    )
    .await?;
    storage.migrate().await?;
    let queue = Queue::new(Arc::new(storage));
    queue.register(
        TASK,
        |ctx: JobContext, _args: serde_json::Value| async move {
            let current = trace::current().map(|c| c.trace_id_hex());
            println!(
                "handler job_id={} current_trace_id={} stored={}",
                ctx.job_id(),
                current.as_deref().unwrap_or("-"),
                ctx.job().trace_context.as_deref().unwrap_or("-")
            );
            Ok::<_, TaskError>(())
        },
    );
    let worker = Worker::new(queue, WorkerOptions::new().queue("default", 4))?;
    let report = worker.drain().await?;
    println!("completed={}", report.completed);
    Ok(())
}
