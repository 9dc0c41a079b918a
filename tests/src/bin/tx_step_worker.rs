//! A worker process whose job charges an order in a transactional step, for the
//! transactional-step crash tests (`tests/tx_step_crash.rs`), on SQLite or PostgreSQL.
//!
//! ```text
//! tx_step_worker (--sqlite FILE | --postgres URL --schema NAME) --mode hang|finish --job ID
//! ```
//! The task `order` inserts its payment (order id, attempt) into `payments` inside
//! `sqlite_step` / `pg_step`. In `hang` mode the step then prints `charged <attempt>`
//! and blocks before its commit, for the test to SIGKILL the process right there. In
//! `finish` mode the worker runs until job `--job` is finished, then prints its status.

use durable_jobs::{JobContext, JobId, Queue, Storage, TaskError, Worker, WorkerOptions};
use durable_jobs_postgres::{sqlx, PostgresOptions, PostgresStepExt, PostgresStorage};
use durable_jobs_sqlite::{SqliteStepExt, SqliteStorage};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStorage),
    Postgres(PostgresStorage),
}

struct Args {
    sqlite: Option<PathBuf>,
    postgres: Option<(String, String)>,
    hang: bool,
    job: JobId,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut sqlite, mut url, mut schema, mut mode, mut job) = (None, None, None, None, None);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        match flag.as_str() {
            "--sqlite" => sqlite = Some(PathBuf::from(value)),
            "--postgres" => url = Some(value),
            "--schema" => schema = Some(value),
            "--mode" => mode = Some(value),
            "--job" => job = Some(value.parse::<JobId>().map_err(|e| format!("--job: {e}"))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let hang = match mode.as_deref() {
        Some("hang") => true,
        Some("finish") => false,
        other => return Err(format!("--mode must be hang or finish, found {other:?}")),
    };
    let postgres = match (url, schema) {
        (Some(u), Some(s)) => Some((u, s)),
        (None, None) => None,
        _ => return Err("--postgres and --schema go together".into()),
    };
    if sqlite.is_some() == postgres.is_some() {
        return Err("give either --sqlite or --postgres".into());
    }
    Ok(Args {
        sqlite,
        postgres,
        hang,
        job: job.ok_or("--job is required")?,
    })
}

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tx_step_worker: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Tells the test that the payment is written but not committed, then never returns:
/// the test SIGKILLs the process while the step's transaction is open.
fn charged_and_hang(attempt: i32) -> ! {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "charged {attempt}");
    let _ = out.flush();
    loop {
        std::thread::park();
    }
}

/// Charges `order` in a transactional step on `backend`; in `hang` mode blocks before
/// the step commits.
async fn charge(
    ctx: JobContext,
    backend: Backend,
    order: i64,
    hang: bool,
) -> Result<i64, TaskError> {
    let attempt = ctx.attempt();
    match backend {
        Backend::Sqlite(s) => {
            ctx.sqlite_step(&s, "charge", move |conn| {
                conn.execute(
                    "INSERT INTO payments (order_id, attempt) VALUES (?1, ?2)",
                    (order, attempt),
                )?;
                if hang {
                    charged_and_hang(attempt);
                }
                Ok(conn.last_insert_rowid())
            })
            .await
        }
        Backend::Postgres(s) => {
            let table = format!("\"{}\".payments", s.schema());
            ctx.pg_step(&s, "charge", move |tx| {
                Box::pin(async move {
                    let (id,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO {table} (order_id, attempt) VALUES ($1, $2) RETURNING id"
                    )))
                    .bind(order)
                    .bind(attempt)
                    .fetch_one(&mut *tx)
                    .await?;
                    if hang {
                        // Blocks this runtime thread, as a stuck process would.
                        charged_and_hang(attempt);
                    }
                    Ok(id)
                })
            })
            .await
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let backend = match (&args.sqlite, &args.postgres) {
        (Some(path), _) => Backend::Sqlite(SqliteStorage::open(path).await?),
        (_, Some((url, schema))) => {
            let s =
                PostgresStorage::connect_with(url, PostgresOptions::new().schema(schema)).await?;
            s.migrate().await?;
            Backend::Postgres(s)
        }
        (None, None) => return Err("no backend".into()),
    };
    let storage: Arc<dyn Storage> = match &backend {
        Backend::Sqlite(s) => Arc::new(s.clone()),
        Backend::Postgres(s) => Arc::new(s.clone()),
    };
    let queue = Queue::new(storage.clone());
    let (b, hang) = (backend.clone(), args.hang);
    queue.register("order", move |ctx: JobContext, order: i64| {
        let b = b.clone();
        async move { charge(ctx, b, order, hang).await }
    });
    let options = WorkerOptions::new()
        .queue("default", 1)
        .lease_duration(Duration::from_secs(1))
        .sweep_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50));
    let worker = Worker::new(queue.clone(), options)?;
    let id = args.job;
    worker
        .run_until(async move {
            if let Err(e) = queue
                .wait_for::<serde_json::Value>(id, Duration::from_secs(120))
                .await
            {
                eprintln!("tx_step_worker: waiting for job {id}: {e}");
            }
        })
        .await?;
    let job = storage
        .get_job(id)
        .await?
        .ok_or_else(|| format!("job {id} is gone"))?;
    println!("status {}", job.status);
    if let Backend::Sqlite(s) = backend {
        s.close().await;
    }
    Ok(())
}
