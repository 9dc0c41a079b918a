//! OpenTelemetry: a job's attempt continues the trace of the request that enqueued it, on
//! SQLite with no server.
//!
//! Run with
//! `cargo run -p durable-jobs-examples --example opentelemetry --features opentelemetry`.
//!
//! It installs an OpenTelemetry tracer that collects finished spans in memory (a real
//! application would install an OTLP exporter instead) behind `tracing-opentelemetry`'s
//! layer, enqueues a job inside a `POST /signup` request span, runs it with a worker,
//! and prints every span with its trace id, span id and parent. The job stored the
//! enqueue span's W3C `traceparent`; the worker made it the attempt span's remote parent,
//! so the attempt, and the step inside it, share the request's trace id. That works the
//! same when the worker runs in another process: the context travels in the job's row.

use durable_jobs::{JobContext, JobOptions, Queue, TaskError, Worker, WorkerOptions};
use durable_jobs_sqlite::SqliteStorage;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::{Arc, Mutex};
use tracing::Instrument;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// An exporter that keeps finished spans in memory, for printing at the end.
#[derive(Debug, Clone, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl Collected {
    fn take(&self) -> Vec<SpanData> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(batch);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The tracer: spans go to the collector as they end (the simple processor exports
    // each span on the thread that ends it; use a batch processor in production).
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    // durable-jobs' job spans (enqueue, attempt, call, step) are at debug by default, so an
    // app logging at info pays nothing per job; this app traces jobs, so it raises them to
    // info (the per-storage-call spans stay at debug).
    durable_jobs::trace::set_span_level(tracing::Level::INFO);
    let subscriber = tracing_subscriber::registry()
        .with(LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("signup-service")));
    tracing::subscriber::set_global_default(subscriber)?;

    let queue = Queue::new(Arc::new(SqliteStorage::open_in_memory().await?));
    queue.register(
        "send_welcome_email",
        |ctx: JobContext, user: String| async move {
            // A checkpointed step: its span nests in the attempt's.
            let body: String = ctx
                .step("render", move |_ctx| async move {
                    Ok(format!("Welcome aboard, {user}!"))
                })
                .await?;
            Ok::<_, TaskError>(body)
        },
    );

    // The web request: whatever it enqueues joins its trace.
    let request = tracing::info_span!("POST /signup", user = "ada");
    let id = queue
        .enqueue("send_welcome_email", &"ada", JobOptions::new())
        .instrument(request.clone())
        .await?;
    drop(request);
    let job = queue.get_job(id).await?.ok_or("the job vanished")?;
    println!(
        "job {id} stored traceparent {}",
        job.trace_context.as_deref().unwrap_or("-")
    );

    // The worker (here in the same process; it could be anywhere).
    let worker = Worker::new(
        queue.clone(),
        WorkerOptions::new().queue("default", 1).name("worker-1"),
    )?;
    let report = worker.drain().await?;
    println!("worker: {} completed", report.completed);
    provider.force_flush()?;

    let spans = collected.take();
    println!(
        "\n{:<22} {:<32} {:<16} {:<16}",
        "span", "trace id", "span id", "parent span id"
    );
    for s in &spans {
        println!(
            "{:<22} {:<32} {:<16} {:<16}{}",
            s.name,
            s.span_context.trace_id(),
            s.span_context.span_id(),
            s.parent_span_id,
            if s.parent_span_is_remote {
                " (remote)"
            } else {
                ""
            }
        );
    }

    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .ok_or(format!("no `{name}` span was exported"))
    };
    let request = find("POST /signup")?;
    let enqueue = find("durable_jobs.enqueue")?;
    let attempt = find("durable_jobs.attempt")?;
    let step = find("durable_jobs.step")?;
    let trace = request.span_context.trace_id();
    if attempt.span_context.trace_id() != trace
        || step.span_context.trace_id() != trace
        || attempt.parent_span_id != enqueue.span_context.span_id()
        || step.parent_span_id != attempt.span_context.span_id()
    {
        return Err("the attempt is not linked to the request's trace".into());
    }
    println!(
        "\nthe attempt span shares the request's trace id {trace}: request -> enqueue -> \
         attempt -> step"
    );
    provider.shutdown()?;
    Ok(())
}
