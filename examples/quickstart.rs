//! Quickstart: jobs and a three-step durable workflow on SQLite, no server needed.
//!
//! Run with `cargo run --example quickstart`. It leaves `quickstart.db` behind so you can
//! look inside with `sqlite3 quickstart.db 'select id, task, status, result from durable_jobs'`.

use durable_jobs::{call, Event, JobContext, JobOptions, Queue, TaskError, Worker, WorkerOptions};
use durable_jobs_sqlite::SqliteStorage;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Serialize, Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
    cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var("QUICKSTART_DB").unwrap_or_else(|_| "quickstart.db".into());
    let storage = SqliteStorage::open(&path).await?;
    let queue = Queue::new(Arc::new(storage));

    // Plain jobs: a handler takes its context and typed arguments and returns a result.
    queue.register("greet", |_ctx: JobContext, name: String| async move {
        Ok::<_, TaskError>(format!("hello, {name}"))
    });

    // Three steps of a workflow; each is an ordinary handler.
    queue.register(
        "reserve_stock",
        |_ctx: JobContext, items: Vec<String>| async move {
            Ok::<_, TaskError>(format!("reserved {}", items.join(", ")))
        },
    );
    queue.register("charge_card", |_ctx: JobContext, cents: u64| async move {
        Ok::<_, TaskError>(format!("charged ${}.{:02}", cents / 100, cents % 100))
    });
    queue.register("send_receipt", |_ctx: JobContext, order: u32| async move {
        Ok::<_, TaskError>(format!("receipt sent for order {order}"))
    });

    // The workflow: each `call` runs a step inline and checkpoints its result, so a retry
    // after a crash skips the steps that already finished.
    queue.register("checkout", |ctx: JobContext, order: Order| async move {
        let stock: String = call(&ctx, "reserve_stock", &order.items).await?;
        let payment: String = call(&ctx, "charge_card", &order.cents).await?;
        let receipt: String = call(&ctx, "send_receipt", &order.id).await?;
        Ok::<_, TaskError>(vec![stock, payment, receipt])
    });

    // Print progress as the worker reports it.
    let mut events = queue.events();
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                Event::Started {
                    job_id,
                    task,
                    attempt,
                } => {
                    println!("job {job_id} ({task}) started, attempt {attempt}")
                }
                Event::Completed {
                    job_id,
                    task,
                    result,
                    ..
                } => {
                    println!("job {job_id} ({task}) completed: {result}")
                }
                Event::Retrying {
                    job_id,
                    error,
                    retry_in,
                    ..
                } => {
                    println!("job {job_id} failed ({error}), retrying in {retry_in:?}")
                }
                Event::Failed { job_id, error, .. } => println!("job {job_id} failed: {error}"),
                _ => {}
            }
        }
    });

    let mut ids = Vec::new();
    for name in ["Ada", "Grace"] {
        ids.push(queue.enqueue("greet", &name, JobOptions::new()).await?);
    }
    let order = Order {
        id: 1001,
        items: vec!["keyboard".into(), "mouse".into()],
        cents: 12_999,
    };
    ids.push(
        queue
            .enqueue("checkout", &order, JobOptions::new().priority(10))
            .await?,
    );

    // Run until nothing is left to do, then stop.
    let worker = Worker::new(queue.clone(), WorkerOptions::new().queue("default", 4))?;
    let report = worker.drain().await?;

    println!("\nworker report: {report:?}");
    for &id in &ids {
        if let Some(job) = queue.get_job(id).await? {
            println!(
                "job {} {:<8} {:<10} result: {}",
                job.id,
                job.task,
                job.status.to_string(),
                job.result.map(|r| r.to_string()).unwrap_or_default()
            );
        }
    }
    // The workflow's checkpoints: one per finished step, keyed by position.
    let checkout = ids[ids.len() - 1];
    if let Some(details) = queue.job_details(checkout).await? {
        for cp in details.checkpoints {
            println!("checkout step {} ({}): {:?}", cp.key, cp.name, cp.outcome);
        }
    }
    println!("\njobs are stored in {path}");
    printer.abort();
    Ok(())
}
