//! An order workflow: reserve stock, charge the card, wait for a shipping signal with a
//! timeout, then fan out notifications. Runs on SQLite with no server:
//! `cargo run --example order_workflow`.
//!
//! Two orders run. The first is shipped (this program sends the signal, as a warehouse
//! system would); the second never is, so its wait times out after two seconds and the
//! workflow refunds instead. Every step is checkpointed: kill the program at any point and
//! run it again, and finished steps are not repeated.

use durable_jobs::{
    call, Event, FanOut, JobContext, JobOptions, JobStatus, Queue, TaskError, Worker, WorkerOptions,
};
use durable_jobs_sqlite::SqliteStorage;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u32,
    sku: String,
    cents: u64,
    email: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Shipment {
    carrier: String,
    tracking: String,
}

fn register(queue: &Queue) {
    queue.register(
        "reserve_stock",
        |_ctx: JobContext, sku: String| async move {
            Ok::<_, TaskError>(format!("reservation for {sku}"))
        },
    );
    queue.register("charge_card", |_ctx: JobContext, cents: u64| async move {
        Ok::<_, TaskError>(format!("charge of {cents} cents"))
    });
    queue.register(
        "notify",
        |_ctx: JobContext, (channel, text): (String, String)| async move {
            println!("  [{channel}] {text}");
            Ok::<_, TaskError>(channel)
        },
    );
    queue.register("order", |ctx: JobContext, order: Order| async move {
        let reservation: String = call(&ctx, "reserve_stock", &order.sku).await?;
        let charge: String = call(&ctx, "charge_card", &order.cents).await?;
        // Waits without holding a worker slot; the deadline is fixed on the first run.
        let shipped: Option<Shipment> = ctx
            .wait_for_signal_timeout("shipped", Duration::from_secs(2))
            .await?;
        let text = match &shipped {
            Some(s) => format!(
                "order {} shipped with {} ({})",
                order.id, s.carrier, s.tracking
            ),
            None => {
                ctx.step("refund", move |_ctx| async move {
                    Ok::<_, TaskError>(format!("refunded {} cents", order.cents))
                })
                .await?;
                format!(
                    "order {} was not shipped in time and was refunded",
                    order.id
                )
            }
        };
        let notes = ["email", "sms", "slack"]
            .map(|c| (c.to_string(), format!("to {}: {text}", order.email)));
        let sent = ctx
            .fan_out::<String, _>("notify", notes, JobOptions::new(), FanOut::CollectAll)
            .await?;
        Ok::<_, TaskError>(serde_json::json!({
            "reservation": reservation,
            "charge": charge,
            "shipped": shipped.is_some(),
            "notified": sent.into_iter().filter_map(Result::ok).collect::<Vec<_>>(),
        }))
    });
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var("ORDER_DB").unwrap_or_else(|_| "orders.db".into());
    let queue = Queue::new(Arc::new(SqliteStorage::open(&path).await?));
    register(&queue);

    let order = |id: u32| Order {
        id,
        sku: format!("SKU-{id}"),
        cents: 4_200 + u64::from(id),
        email: format!("customer{id}@example.com"),
    };
    let shipped = queue.enqueue("order", &order(1), JobOptions::new()).await?;
    let lost = queue.enqueue("order", &order(2), JobOptions::new()).await?;
    println!("orders {shipped} and {lost} enqueued into {path}");

    let mut events = queue.events();
    let worker = Worker::new(queue.clone(), WorkerOptions::new().queue("default", 8))?;
    let q = queue.clone();
    let report = worker
        .run_until(async move {
            let mut signalled = false;
            let mut done = 0;
            while done < 2 {
                // The warehouse ships order 1 once its workflow waits for the signal.
                if !signalled {
                    if let Ok(Some(job)) = q.get_job(shipped).await {
                        if job.status == JobStatus::Waiting {
                            let s = Shipment {
                                carrier: "DHL".into(),
                                tracking: "JD0142".into(),
                            };
                            if q.signal(shipped, "shipped", &s).await.is_ok() {
                                println!("warehouse: order {shipped} shipped");
                                signalled = true;
                            }
                        }
                    }
                }
                match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
                    Ok(Ok(Event::Completed { job_id, .. } | Event::Failed { job_id, .. }))
                        if job_id == shipped || job_id == lost =>
                    {
                        done += 1
                    }
                    Ok(Err(durable_jobs::EventStreamError::Closed)) => return,
                    _ => {}
                }
            }
        })
        .await?;
    println!("worker: {report:?}");
    for id in [shipped, lost] {
        if let Some(job) = queue.get_job(id).await? {
            println!(
                "order job {id}: {} {}",
                job.status,
                job.result.unwrap_or_default()
            );
        }
    }
    Ok(())
}
