//! Helpers for the PostgreSQL multi-process tests (`tests/postgres_*.rs`) and the
//! `pg_worker` binary: the tables the worker records into, inside the test's schema.

use durable_jobs::Lease;
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe, Row};
use durable_jobs_postgres::PostgresStorage;

/// The task every `pg_worker` mode serves.
pub const TASK: &str = "record";

fn q(storage: &PostgresStorage, sql: &str) -> String {
    sql.replace("{s}", &format!("\"{}\"", storage.schema()))
}

/// Creates `executions` (one row per handler run), `blocked` (the lease a blocked
/// worker holds) and `capped_events` (starts and ends of the key-limit workload, in the
/// order they happened) in the storage's schema.
///
/// # Errors
/// The database error, as text.
pub async fn create_tables(storage: &PostgresStorage) -> Result<(), String> {
    sqlx::raw_sql(AssertSqlSafe(q(
        storage,
        "CREATE TABLE {s}.executions (job_id bigint NOT NULL, attempt int NOT NULL, pid int NOT NULL);
         CREATE TABLE {s}.blocked (job_id bigint NOT NULL, lease jsonb NOT NULL, pid int NOT NULL);
         CREATE TABLE {s}.capped_events (seq bigserial PRIMARY KEY, started bool NOT NULL, job_id bigint NOT NULL);",
    )))
    .execute(storage.pool())
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Records one execution of a job.
///
/// # Errors
/// The database error, as text.
pub async fn record_execution(
    storage: &PostgresStorage,
    job_id: i64,
    attempt: i32,
) -> Result<(), String> {
    sqlx::query(AssertSqlSafe(q(
        storage,
        "INSERT INTO {s}.executions (job_id, attempt, pid) VALUES ($1, $2, $3)",
    )))
    .bind(job_id)
    .bind(attempt)
    .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
    .execute(storage.pool())
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Records the lease a worker holds while it blocks.
///
/// # Errors
/// The database error, as text.
pub async fn record_blocked(storage: &PostgresStorage, lease: &Lease) -> Result<(), String> {
    let lease = serde_json::to_value(lease).map_err(|e| e.to_string())?;
    sqlx::query(AssertSqlSafe(q(
        storage,
        "INSERT INTO {s}.blocked (job_id, lease, pid) VALUES ($1, $2, $3)",
    )))
    .bind(lease["job_id"].as_i64().unwrap_or_default())
    .bind(lease)
    .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
    .execute(storage.pool())
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Every recorded execution: (job id, attempt, pid).
///
/// # Errors
/// The database error, as text.
pub async fn executions(storage: &PostgresStorage) -> Result<Vec<(i64, i32, i32)>, String> {
    let rows = sqlx::query(AssertSqlSafe(q(
        storage,
        "SELECT job_id, attempt, pid FROM {s}.executions ORDER BY job_id, attempt",
    )))
    .fetch_all(storage.pool())
    .await
    .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| e.to_string())
}

/// The lease recorded by a blocked worker, once there is one.
///
/// # Errors
/// The database error, as text.
pub async fn blocked_lease(storage: &PostgresStorage) -> Result<Option<(Lease, i32)>, String> {
    let row = sqlx::query(AssertSqlSafe(q(
        storage,
        "SELECT lease, pid FROM {s}.blocked LIMIT 1",
    )))
    .fetch_optional(storage.pool())
    .await
    .map_err(|e| e.to_string())?;
    match row {
        None => Ok(None),
        Some(r) => {
            let lease: serde_json::Value = r.try_get(0).map_err(|e| e.to_string())?;
            let pid: i32 = r.try_get(1).map_err(|e| e.to_string())?;
            let lease: Lease = serde_json::from_value(lease).map_err(|e| e.to_string())?;
            Ok(Some((lease, pid)))
        }
    }
}

/// Records that a capped job started (`true`) or ended (`false`), autocommitted, so the
/// sequence orders the events of every process as they happened.
///
/// # Errors
/// The database error, as text.
pub async fn record_capped_event(
    storage: &PostgresStorage,
    started: bool,
    job_id: i64,
) -> Result<(), String> {
    sqlx::query(AssertSqlSafe(q(
        storage,
        "INSERT INTO {s}.capped_events (started, job_id) VALUES ($1, $2)",
    )))
    .bind(started)
    .bind(job_id)
    .execute(storage.pool())
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The capped workload's events in order: (started, job id).
///
/// # Errors
/// The database error, as text.
pub async fn capped_events(storage: &PostgresStorage) -> Result<Vec<(bool, i64)>, String> {
    sqlx::query_as(AssertSqlSafe(q(
        storage,
        "SELECT started, job_id FROM {s}.capped_events ORDER BY seq",
    )))
    .fetch_all(storage.pool())
    .await
    .map_err(|e| e.to_string())
}

/// Capped jobs that recorded their start and not their end.
///
/// # Errors
/// The database error, as text.
pub async fn open_capped(storage: &PostgresStorage) -> Result<usize, String> {
    let open: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        storage,
        "SELECT count(*) FILTER (WHERE started) - count(*) FILTER (WHERE NOT started) \
         FROM {s}.capped_events",
    )))
    .fetch_one(storage.pool())
    .await
    .map_err(|e| e.to_string())?;
    Ok(usize::try_from(open).unwrap_or(0))
}
