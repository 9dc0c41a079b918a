//! An order workflow: reserve stock, charge the card, wait for a shipping signal with a
//! timeout, then fan out notifications. Runs on SQLite with no server:
//! `cargo run --example order_workflow`.
//!
//! Two orders run. The first is shipped (this program sends the signal, as a warehouse
//! system would); the second never is, so its wait times out after two seconds and the
//! workflow refunds instead. Every step is checkpointed: kill the program at any point and
//! run it again, and finished steps are not repeated. The card is charged in a
//! transactional step: the payment row (in the application's `payments` table, in the
//! same SQLite file) and the step's checkpoint commit in one transaction, so an order is
//! charged exactly once even when the process dies in the middle of the charge. The workflow reports its progress
//! as it goes, and the program waits for each order's typed receipt with
//! `Queue::wait_for`.

use durable_jobs::{
    call, Error, FanOut, JobContext, JobOptions, NoRetry, Queue, TaskError, Worker, WorkerOptions,
};
use durable_jobs_sqlite::{SqliteStepExt, SqliteStorage};
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

/// What an order workflow returns: `wait_for` decodes the stored result into it.
#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    reservation: String,
    charge: String,
    shipped: bool,
    notified: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Shipment {
    carrier: String,
    tracking: String,
}

/// The application's own table, in the jobs' SQLite file.
const PAYMENTS: &str = "CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, order_id INTEGER NOT NULL,
    cents INTEGER NOT NULL)";

fn register(queue: &Queue, storage: &SqliteStorage) {
    queue.register(
        "reserve_stock",
        |_ctx: JobContext, sku: String| async move {
            Ok::<_, TaskError>(format!("reservation for {sku}"))
        },
    );
    queue.register(
        "notify",
        |_ctx: JobContext, (channel, text): (String, String)| async move {
            println!("  [{channel}] {text}");
            Ok::<_, TaskError>(channel)
        },
    );
    let storage = storage.clone();
    queue.register("order", move |ctx: JobContext, order: Order| {
        let storage = storage.clone();
        async move { order_workflow(ctx, storage, order).await }
    });
}

async fn order_workflow(
    ctx: JobContext,
    storage: SqliteStorage,
    order: Order,
) -> Result<Receipt, TaskError> {
    let reservation: String = call(&ctx, "reserve_stock", &order.sku).await?;
    ctx.progress("stock reserved").await?;
    // The payment row commits with the step's checkpoint, or neither does.
    let (job_id, order_id, cents) = (ctx.job_id(), order.id, order.cents);
    // SQLite integers are signed 64-bit; the amount is stored as such.
    let stored_cents = i64::try_from(cents).map_err(|e| NoRetry(e.to_string()))?;
    let charge: String = ctx
        .sqlite_step(&storage, "charge_card", move |conn| {
            conn.execute(
                "INSERT INTO payments (job_id, order_id, cents) VALUES (?1, ?2, ?3)",
                (job_id, order_id, stored_cents),
            )?;
            Ok(format!(
                "payment {} of {cents} cents",
                conn.last_insert_rowid()
            ))
        })
        .await?;
    ctx.progress("card charged; waiting for the warehouse")
        .await?;
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
    let notes =
        ["email", "sms", "slack"].map(|c| (c.to_string(), format!("to {}: {text}", order.email)));
    let sent = ctx
        .fan_out::<String, _>("notify", notes, JobOptions::new(), FanOut::CollectAll)
        .await?;
    ctx.progress("customer notified").await?;
    Ok::<_, TaskError>(Receipt {
        reservation,
        charge,
        shipped: shipped.is_some(),
        notified: sent.into_iter().filter_map(Result::ok).collect(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::var("ORDER_DB").unwrap_or_else(|_| "orders.db".into());
    let storage = SqliteStorage::open(&path).await?;
    rusqlite::Connection::open(&path)?.execute_batch(PAYMENTS)?;
    let queue = Queue::new(Arc::new(storage.clone()));
    register(&queue, &storage);

    let order = |id: u32| Order {
        id,
        sku: format!("SKU-{id}"),
        cents: 4_200 + u64::from(id),
        email: format!("customer{id}@example.com"),
    };
    let shipped = queue.enqueue("order", &order(1), JobOptions::new()).await?;
    let lost = queue.enqueue("order", &order(2), JobOptions::new()).await?;
    println!("orders {shipped} and {lost} enqueued into {path}");

    let worker = Worker::new(queue.clone(), WorkerOptions::new().queue("default", 8))?;
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.run().await });

    // The warehouse ships order 1. A signal is stored with the job until its workflow
    // asks for it, so it may come before the workflow waits.
    let s = Shipment {
        carrier: "DHL".into(),
        tracking: "JD0142".into(),
    };
    queue.signal(shipped, "shipped", &s).await?;
    println!("warehouse: order {shipped} shipped");

    // Each wait wakes when the job finishes (the SQLite commit watcher or this process's
    // own worker tells it), with polling as a fallback.
    for id in [shipped, lost] {
        match queue.wait_for::<Receipt>(id, Duration::from_secs(60)).await {
            Ok(receipt) => println!("order job {id}: {receipt:?}"),
            Err(Error::JobFailed { error, .. }) => println!("order job {id} failed: {error}"),
            Err(e) => return Err(e.into()),
        }
        if let Some(job) = queue.get_job(id).await? {
            println!("  last progress: {}", job.progress.unwrap_or_default());
        }
        let payments: i64 = rusqlite::Connection::open(&path)?.query_row(
            "SELECT count(*) FROM payments WHERE job_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        println!("  payments recorded: {payments}");
    }
    stop.shutdown();
    let report = running.await??;
    println!("worker: {report:?}");
    Ok(())
}
