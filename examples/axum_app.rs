//! A small web service with durable-jobs inside, on SQLite (no server needed): an order
//! endpoint that enqueues a job with the order's own write, a worker in the same process,
//! the dashboard under `/admin/jobs` behind basic auth, `/health` from the worker and
//! `/metrics` for Prometheus.
//!
//! Run with `cargo run --example axum_app`. It serves on a free local port, sends itself
//! a few requests, prints them and their answers, and shuts down. Set `KEEP_SERVING=1` to
//! keep it up and look at the dashboard in a browser (user `admin`, password from
//! `ADMIN_PASSWORD`, else `change-me`); stop it with Ctrl-C.
//!
//! # Enqueueing with the application's own write
//! A job should exist exactly when the business write that asks for it commits.
//!
//! - **PostgreSQL** does this directly: `PostgresStorage::enqueue_in_tx(&mut tx, job)`
//!   inserts the job in your sqlx transaction, so it commits or rolls back with the order:
//!   ```ignore
//!   let mut tx = storage.pool().begin().await?;
//!   sqlx::query("INSERT INTO orders (customer, cents) VALUES ($1, $2)").bind(..).execute(&mut *tx).await?;
//!   storage.enqueue_in_tx(&mut tx, NewJob::new("send_receipt", payload)).await?;
//!   tx.commit().await?;
//!   ```
//! - **SQLite** has no such call: the storage writes through its own connection on its
//!   own writer thread, so an enqueue cannot join the application's transaction. What this
//!   example does instead is an outbox: the order and an outbox row commit in one
//!   transaction on the application's connection (the same database file; the library's
//!   tables are prefixed `durable_jobs`), then the outbox is relayed to the queue, each
//!   row with a job key made from its id, and deleted. A crash after the commit leaves the
//!   row, and the relay at the next start enqueues it. A crash between an enqueue and the
//!   row's delete enqueues it again at the next start: the job key folds that into the
//!   first job while it is unfinished, and otherwise the handler runs twice, which
//!   at-least-once delivery asks handlers to tolerate anyway.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use durable_jobs::{JobContext, JobOptions, JobStatus, Queue, TaskError, Worker, WorkerOptions};
use durable_jobs_sqlite::SqliteStorage;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The dashboard's user name.
const ADMIN_USER: &str = "admin";

/// What the order endpoint takes.
#[derive(Debug, Deserialize)]
struct NewOrder {
    customer: String,
    cents: u32,
}

/// The job's arguments: which order to send a receipt for.
#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    order_id: i64,
    customer: String,
    cents: u32,
}

#[derive(Clone)]
struct AppState {
    queue: Queue,
    /// The application's own connection to the database file.
    db: Arc<Mutex<rusqlite::Connection>>,
    worker: Arc<Worker>,
    prometheus: PrometheusHandle,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The exporter goes in before the worker starts: workers take their metric handles then.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let dir = std::env::temp_dir().join(format!("durable-jobs-axum-app-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("app.db");
    let queue = Queue::new(Arc::new(SqliteStorage::open(&path).await?));
    queue.register("send_receipt", |_ctx: JobContext, r: Receipt| async move {
        // A real service would call its mailer here.
        Ok::<_, TaskError>(format!(
            "receipt for order {} sent to {} ({}.{:02})",
            r.order_id,
            r.customer,
            r.cents / 100,
            r.cents % 100
        ))
    });

    let db = Arc::new(Mutex::new(open_app_db(&path)?));
    let worker = Arc::new(Worker::new(
        queue.clone(),
        WorkerOptions::new().name("web-1").queue("default", 4),
    )?);
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });
    let state = AppState {
        queue: queue.clone(),
        db,
        worker: worker.clone(),
        prometheus,
    };
    // Orders a crash left in the outbox at the last stop.
    relay_outbox(&state).await?;

    let password = std::env::var("ADMIN_PASSWORD").unwrap_or_else(|_| "change-me".into());
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{password}"))
    );
    // The dashboard leaves authentication to the app: this layer guards it.
    let admin = durable_jobs_dashboard::router(queue.clone()).layer(middleware::from_fn(
        move |request: Request, next: Next| {
            let expected = expected.clone();
            async move { basic_auth(&expected, request, next).await }
        },
    ));
    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
        .nest("/admin/jobs", admin);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    println!("serving on http://{addr} (dashboard at http://{addr}/admin/jobs)\n");

    demo(addr, &queue, &password).await?;

    if std::env::var("KEEP_SERVING").is_ok_and(|v| v == "1") {
        println!("KEEP_SERVING=1: serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop.send(());
    server.await??;
    worker.shutdown_handle().shutdown();
    running.await??;
    std::fs::remove_dir_all(&dir)?;
    println!("shut down");
    Ok(())
}

/// The application's connection and tables, in the same file as the jobs.
fn open_app_db(path: &PathBuf) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, cents INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS job_outbox (id INTEGER PRIMARY KEY, task TEXT NOT NULL, payload TEXT NOT NULL);",
    )?;
    Ok(conn)
}

/// A response for an error: 500 with its message.
fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

/// POST /orders: the order and its outbox row commit together, then the outbox goes to
/// the queue.
async fn create_order(State(state): State<AppState>, Json(order): Json<NewOrder>) -> Response {
    let db = state.db.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<i64, BoxError> {
        let mut conn = db.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO orders (customer, cents) VALUES (?1, ?2)",
            rusqlite::params![order.customer, order.cents],
        )?;
        let id = tx.last_insert_rowid();
        let receipt = Receipt {
            order_id: id,
            customer: order.customer,
            cents: order.cents,
        };
        tx.execute(
            "INSERT INTO job_outbox (task, payload) VALUES ('send_receipt', ?1)",
            [serde_json::to_string(&receipt)?],
        )?;
        tx.commit()?;
        Ok(id)
    })
    .await;
    let id = match written {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    if let Err(e) = relay_outbox(&state).await {
        // The order stands; its row stays in the outbox for the next relay.
        return internal(format!("order {id} saved, its job not enqueued yet: {e}"));
    }
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "order_id": id })),
    )
        .into_response()
}

/// Moves every outbox row to the queue, each with a job key from its id, and deletes it.
async fn relay_outbox(state: &AppState) -> Result<(), BoxError> {
    let db = state.db.clone();
    let rows =
        tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<(i64, String, String)>> {
            let conn = db.lock().unwrap_or_else(|e| e.into_inner());
            let mut stmt = conn.prepare("SELECT id, task, payload FROM job_outbox ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await??;
    for (id, task, payload) in rows {
        let payload: serde_json::Value = serde_json::from_str(&payload)?;
        state
            .queue
            .enqueue_raw(
                &task,
                payload,
                JobOptions::new().dedupe_key(format!("outbox:{id}")),
            )
            .await?;
        let db = state.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute("DELETE FROM job_outbox WHERE id = ?1", [id])
        })
        .await??;
    }
    Ok(())
}

/// GET /health: the worker's health as JSON; 503 when it is not running or its storage
/// calls fail.
async fn health(State(state): State<AppState>) -> Response {
    let health = state.worker.health();
    let status = if health.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

/// GET /metrics: the Prometheus text exposition.
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.prometheus.render(),
    )
        .into_response()
}

/// Lets the request through when it carries the expected `Authorization` header;
/// otherwise 401 with the challenge that makes a browser ask.
async fn basic_auth(expected: &str, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    // Compare without stopping at the first difference, so timing does not reveal it.
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"admin\"")],
        "401: the dashboard needs the admin user's password\n",
    )
        .into_response()
}

// ----- The demo: requests the example sends itself so it can exit on its own. -----

async fn demo(addr: std::net::SocketAddr, queue: &Queue, password: &str) -> Result<(), BoxError> {
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{password}"))
    );
    for body in [
        r#"{"customer": "ada@example.com", "cents": 1299}"#,
        r#"{"customer": "grace@example.com", "cents": 4500}"#,
    ] {
        let (status, text) = send(
            addr,
            "POST",
            "/orders",
            &[("Content-Type", "application/json")],
            body,
        )
        .await?;
        println!("POST /orders {body}\n  -> {status} {}", text.trim());
    }

    // Wait for the worker to send both receipts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = queue
            .list_jobs(durable_jobs::JobFilter {
                task: Some("send_receipt".into()),
                ..Default::default()
            })
            .await?;
        if jobs.len() == 2 && jobs.iter().all(|j| j.status == JobStatus::Completed) {
            for j in jobs {
                println!("job {} completed: {}", j.id, j.result.unwrap_or_default());
            }
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the receipts were not sent within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, text) = send(addr, "GET", "/health", &[], "").await?;
    println!("GET /health\n  -> {status} {}", text.trim());
    assert_eq!(status, 200, "the worker is healthy");

    let (status, _) = send(addr, "GET", "/admin/jobs", &[], "").await?;
    println!("GET /admin/jobs without credentials\n  -> {status}");
    assert_eq!(status, 401);
    let (status, text) = send(addr, "GET", "/admin/jobs", &[("Authorization", &auth)], "").await?;
    let title = text
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or("?");
    println!(
        "GET /admin/jobs as {ADMIN_USER}\n  -> {status}, the dashboard's overview: \"{title}\""
    );
    assert_eq!(status, 200);
    let (status, text) = send(
        addr,
        "GET",
        "/admin/jobs/jobs?task=send_receipt",
        &[("Authorization", &auth)],
        "",
    )
    .await?;
    println!(
        "GET /admin/jobs/jobs?task=send_receipt as {ADMIN_USER}\n  -> {status}, {} job rows",
        text.matches("<tr data-job=").count()
    );

    let (status, text) = send(addr, "GET", "/metrics", &[], "").await?;
    println!("GET /metrics\n  -> {status}, among its lines:");
    for line in text
        .lines()
        .filter(|l| l.starts_with("durable_jobs_jobs_completed_total"))
    {
        println!("     {line}");
    }
    Ok(())
}

/// One HTTP/1.1 request to the example's own server, answered with status and body.
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), BoxError> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line in the answer")?;
    Ok((status, body.to_string()))
}
