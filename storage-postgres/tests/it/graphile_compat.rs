//! graphile-worker's SQL API (migration 8), in the schema `<schema>_graphile`, driven from
//! plain SQL with graphile's documented behaviour case by case.

use crate::schema;
use durable_jobs::{
    DynStorage, JobContext, JobStatus, Queue, Storage, TaskError, Worker, WorkerOptions,
};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use durable_jobs_postgres::testing::TestSchema;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `{s}` is the library's schema, `{g}` the graphile-compatible one.
fn q(schema: &str, sql: &str) -> String {
    sql.replace("{s}", &format!("\"{schema}\""))
        .replace("{g}", &format!("\"{schema}_graphile\""))
}

/// Runs `sql` and returns the first column of its one row, an id.
async fn id(t: &TestSchema, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(q(t.schema(), sql)))
        .fetch_one(t.storage().pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The ids `sql` returns, sorted.
async fn ids(t: &TestSchema, sql: &str) -> Vec<i64> {
    let mut v: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(q(t.schema(), sql)))
        .fetch_all(t.storage().pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    v.sort_unstable();
    v
}

/// Runs `sql`, which must fail, and returns (SQLSTATE, message).
async fn error(t: &TestSchema, sql: &str) -> (String, String) {
    let err = sqlx::query(AssertSqlSafe(q(t.schema(), sql)))
        .execute(t.storage().pool())
        .await
        .expect_err(sql);
    let db = err.as_database_error().expect("a database error");
    (
        db.code().expect("sqlstate").to_string(),
        db.message().to_string(),
    )
}

async fn job(t: &TestSchema, id: i64) -> durable_jobs::Job {
    t.storage().get_job(id).await.expect("get").expect("exists")
}

/// Claims a job as a SQL worker would (migration 7), returning its id.
async fn claim(pool: &PgPool, schema: &str) -> Option<i64> {
    sqlx::query_scalar(AssertSqlSafe(q(
        schema,
        "SELECT id FROM {s}.get_job('w1', NULL, interval '1 hour')",
    )))
    .fetch_optional(pool)
    .await
    .expect("get_job")
}

async fn is_true(t: &TestSchema, sql: &str) -> bool {
    sqlx::query_scalar(AssertSqlSafe(q(t.schema(), sql)))
        .fetch_one(t.storage().pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn add_job_has_graphiles_defaults() {
    let t = schema().await;
    let id = id(&t, "SELECT id FROM {g}.add_job('hello')").await;
    let j = job(&t, id).await;
    assert_eq!(j.task, "hello");
    assert_eq!(j.payload, json!({}));
    assert_eq!(j.queue, "default");
    assert_eq!(j.max_attempts, 25);
    assert_eq!(j.priority, 0);
    assert_eq!(j.serial_key, None);
    assert_eq!(j.dedupe_key, None);
    assert!(j.flags.is_empty());
    assert_eq!(j.status, JobStatus::Pending);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn add_job_takes_the_full_signature_positionally_and_by_name() {
    let t = schema().await;
    let a = id(
        &t,
        "SELECT id FROM {g}.add_job('mail', '{\"to\": \"a\"}'::json, 'mailq',
             now() + interval '1 hour', 3, 'k1', 2, ARRAY['slow'], 'replace')",
    )
    .await;
    let j = job(&t, a).await;
    assert_eq!(j.payload, json!({"to": "a"}));
    assert_eq!(j.serial_key.as_deref(), Some("mailq"));
    assert_eq!(j.max_attempts, 3);
    assert_eq!(j.dedupe_key.as_deref(), Some("k1"));
    assert_eq!(j.flags, vec!["slow".to_string()]);
    assert!(j.run_at > chrono::Utc::now() + chrono::Duration::minutes(50));

    let b = id(
        &t,
        "SELECT id FROM {g}.add_job('mail', flags => ARRAY['x', 'y'], job_key => 'k2',
             job_key_mode => 'unsafe_dedupe', priority => 1)",
    )
    .await;
    let j = job(&t, b).await;
    assert_eq!(j.flags, vec!["x".to_string(), "y".to_string()]);
    assert_eq!(j.dedupe_key.as_deref(), Some("k2"));
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn priority_smaller_runs_first_as_in_graphile() {
    let t = schema().await;
    let low = id(&t, "SELECT id FROM {g}.add_job('p', priority => 10)").await;
    let high = id(&t, "SELECT id FROM {g}.add_job('p', priority => -5)").await;
    assert_eq!(job(&t, low).await.priority, -10);
    assert_eq!(job(&t, high).await.priority, 5);
    assert_eq!(claim(t.storage().pool(), t.schema()).await, Some(high));
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn queue_name_is_a_serial_key_on_the_default_queue() {
    let t = schema().await;
    let a = id(
        &t,
        "SELECT id FROM {g}.add_job('r', queue_name => 'reports')",
    )
    .await;
    let b = id(
        &t,
        "SELECT id FROM {g}.add_job('r', queue_name => 'reports')",
    )
    .await;
    let c = id(&t, "SELECT id FROM {g}.add_job('r', queue_name => 'other')").await;
    for i in [a, b, c] {
        assert_eq!(job(&t, i).await.queue, "default");
    }
    assert_eq!(job(&t, a).await.serial_key.as_deref(), Some("reports"));
    let pool = t.storage().pool();
    // One running job per queue_name: a and c run, b waits for a.
    assert_eq!(claim(pool, t.schema()).await, Some(a));
    assert_eq!(claim(pool, t.schema()).await, Some(c));
    assert_eq!(claim(pool, t.schema()).await, None);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn job_key_replaces_by_default() {
    let t = schema().await;
    let a = id(
        &t,
        "SELECT id FROM {g}.add_job('d', '{\"v\": 1}', job_key => 'k',
             run_at => now() + interval '1 hour')",
    )
    .await;
    let b = id(
        &t,
        "SELECT id FROM {g}.add_job('d2', '{\"v\": 2}', job_key => 'k',
             run_at => now() + interval '2 hours', max_attempts => 9)",
    )
    .await;
    assert_eq!(a, b, "the same job is updated");
    let j = job(&t, a).await;
    assert_eq!(j.task, "d2");
    assert_eq!(j.payload, json!({"v": 2}));
    assert_eq!(j.max_attempts, 9);
    assert!(j.run_at > chrono::Utc::now() + chrono::Duration::minutes(110));
    assert!(is_true(&t, "SELECT count(*) = 1 FROM {s}.jobs").await);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn job_key_replace_concatenates_array_payloads() {
    let t = schema().await;
    let a = id(
        &t,
        "SELECT id FROM {g}.add_job('batch', '[1]', job_key => 'b')",
    )
    .await;
    id(
        &t,
        "SELECT id FROM {g}.add_job('batch', '[2, 3]', job_key => 'b')",
    )
    .await;
    assert_eq!(job(&t, a).await.payload, json!([1, 2, 3]));
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn job_key_mode_preserve_run_at_keeps_the_run_at() {
    let t = schema().await;
    let a = id(
        &t,
        "SELECT id FROM {g}.add_job('d', '{\"v\": 1}', job_key => 'k',
             run_at => now() + interval '1 hour')",
    )
    .await;
    let b = id(
        &t,
        "SELECT id FROM {g}.add_job('d', '{\"v\": 2}', job_key => 'k',
             run_at => now() + interval '5 hours', job_key_mode => 'preserve_run_at')",
    )
    .await;
    assert_eq!(a, b);
    let j = job(&t, a).await;
    assert_eq!(j.payload, json!({"v": 2}));
    assert!(j.run_at < chrono::Utc::now() + chrono::Duration::minutes(70));
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn job_key_mode_unsafe_dedupe_returns_the_holder_unchanged() {
    let t = schema().await;
    let a = id(
        &t,
        "SELECT id FROM {g}.add_job('d', '{\"v\": 1}', job_key => 'k')",
    )
    .await;
    let b = id(
        &t,
        "SELECT id FROM {g}.add_job('d', '{\"v\": 2}', job_key => 'k', job_key_mode => 'unsafe_dedupe')",
    )
    .await;
    assert_eq!(a, b);
    assert_eq!(job(&t, a).await.payload, json!({"v": 1}));

    // A running holder is returned too.
    assert_eq!(claim(t.storage().pool(), t.schema()).await, Some(a));
    let c = id(
        &t,
        "SELECT id FROM {g}.add_job('d', job_key => 'k', job_key_mode => 'unsafe_dedupe')",
    )
    .await;
    assert_eq!(c, a);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn a_running_holder_keeps_running_and_loses_its_key() {
    for mode in ["replace", "preserve_run_at"] {
        let t = schema().await;
        let key = format!("run-{mode}");
        let a = id(
            &t,
            &format!("SELECT id FROM {{g}}.add_job('d', '{{\"v\": 1}}', job_key => '{key}')"),
        )
        .await;
        assert_eq!(claim(t.storage().pool(), t.schema()).await, Some(a));
        let b = id(
            &t,
            &format!(
                "SELECT id FROM {{g}}.add_job('d', '{{\"v\": 2}}', job_key => '{key}', job_key_mode => '{mode}')"
            ),
        )
        .await;
        assert_ne!(a, b, "{mode}: a new job");
        let old = job(&t, a).await;
        assert_eq!(old.status, JobStatus::Running, "{mode}");
        assert_eq!(old.dedupe_key, None, "{mode}");
        assert_eq!(
            old.max_attempts, old.attempt,
            "{mode}: the old job will not retry"
        );
        let new = job(&t, b).await;
        assert_eq!(new.status, JobStatus::Pending);
        assert_eq!(new.dedupe_key.as_deref(), Some(key.as_str()));
        assert_eq!(new.payload, json!({"v": 2}));
        t.drop_schema().await.expect("drop");
    }
}

#[tokio::test]
async fn bad_input_raises_clear_errors() {
    let t = schema().await;
    let (code, msg) = error(
        &t,
        "SELECT {g}.add_job('d', job_key => 'k', job_key_mode => 'merge')",
    )
    .await;
    assert_eq!(code, "GWBKM");
    assert!(
        msg.contains("job_key_mode") && msg.contains("'merge'"),
        "{msg}"
    );
    let (code, msg) = error(&t, "SELECT {g}.add_job('')").await;
    assert_eq!(code, "GWBID");
    assert!(msg.contains("identifier"), "{msg}");
    let (code, msg) = error(&t, "SELECT {g}.add_job('d', max_attempts => 0)").await;
    assert_eq!(code, "GWBMA");
    assert!(msg.contains("max_attempts"), "{msg}");
    let (code, _) = error(
        &t,
        "SELECT {g}.add_job('d', queue_name => repeat('q', 129))",
    )
    .await;
    assert_eq!(code, "GWBQN");
    let (code, msg) = error(&t, "SELECT {g}.add_job('d', job_key => repeat('k', 513))").await;
    assert_eq!(code, "GWBJK");
    assert!(msg.contains("job_key"), "{msg}");
    let (code, _) = error(
        &t,
        "SELECT {g}.reschedule_jobs(ARRAY[1]::bigint[], max_attempts => 0)",
    )
    .await;
    assert_eq!(code, "22023");
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn the_native_add_job_keeps_its_own_semantics() {
    let t = schema().await;
    let a = id(
        &t,
        "SELECT id FROM {s}.add_job('n', '{}', 'reports', NULL, NULL)",
    )
    .await;
    let j = job(&t, a).await;
    assert_eq!(j.queue, "reports");
    assert_eq!(j.max_attempts, 4);
    assert_eq!(j.serial_key, None);
    let k1 = id(
        &t,
        "SELECT id FROM {s}.add_job('n', '{\"v\": 1}', job_key => 'k')",
    )
    .await;
    let k2 = id(
        &t,
        "SELECT id FROM {s}.add_job('n', '{\"v\": 2}', job_key => 'k')",
    )
    .await;
    assert_eq!(k1, k2);
    assert_eq!(
        job(&t, k1).await.payload,
        json!({"v": 1}),
        "dedupe, not replace"
    );
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn add_jobs_adds_many_and_replaces_keys() {
    let t = schema().await;
    let first = ids(
        &t,
        "SELECT id FROM {g}.add_jobs(ARRAY[
             ('a', '{\"n\": 1}', NULL, NULL, NULL, NULL, NULL, NULL)::{g}.job_spec,
             ('b', '{\"n\": 2}', 'q', now() + interval '1 hour', 5, 'kb', 1, ARRAY['f'])::{g}.job_spec])",
    )
    .await;
    assert_eq!(first.len(), 2);
    let b = first[1];
    let j = job(&t, b).await;
    assert_eq!(
        (
            j.task.as_str(),
            j.serial_key.as_deref(),
            j.max_attempts,
            j.priority
        ),
        ("b", Some("q"), 5, -1)
    );
    assert_eq!(job(&t, first[0]).await.max_attempts, 25);

    let again = ids(
        &t,
        "SELECT id FROM {g}.add_jobs(ARRAY[
             ('b', '{\"n\": 3}', NULL, now() + interval '3 hours', NULL, 'kb', NULL, NULL)::{g}.job_spec],
             job_key_preserve_run_at => true)",
    )
    .await;
    assert_eq!(again, vec![b]);
    let j = job(&t, b).await;
    assert_eq!(j.payload, json!({"n": 3}));
    assert!(
        j.run_at < chrono::Utc::now() + chrono::Duration::minutes(70),
        "run_at kept"
    );
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn remove_job_removes_a_waiting_job_and_unkeys_a_running_one() {
    let t = schema().await;
    let a = id(&t, "SELECT id FROM {g}.add_job('d', job_key => 'k')").await;
    assert_eq!(id(&t, "SELECT id FROM {g}.remove_job('k')").await, a);
    assert_eq!(job(&t, a).await.status, JobStatus::Cancelled);
    // The key is free again.
    let b = id(&t, "SELECT id FROM {g}.add_job('d', job_key => 'k')").await;
    assert_ne!(a, b);

    assert_eq!(claim(t.storage().pool(), t.schema()).await, Some(b));
    assert_eq!(id(&t, "SELECT id FROM {g}.remove_job('k')").await, b);
    let j = job(&t, b).await;
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.dedupe_key, None);
    assert_eq!(j.max_attempts, j.attempt);

    assert!(is_true(&t, "SELECT ({g}.remove_job('none')).id IS NULL").await);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn complete_jobs_ignores_running_jobs() {
    let t = schema().await;
    let a = id(&t, "SELECT id FROM {g}.add_job('d')").await;
    assert_eq!(claim(t.storage().pool(), t.schema()).await, Some(a));
    let b = id(&t, "SELECT id FROM {g}.add_job('d')").await;
    let done = ids(
        &t,
        &format!("SELECT id FROM {{g}}.complete_jobs(ARRAY[{a}, {b}]::bigint[])"),
    )
    .await;
    assert_eq!(done, vec![b]);
    assert_eq!(job(&t, a).await.status, JobStatus::Running);
    assert_eq!(job(&t, b).await.status, JobStatus::Completed);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn permanently_fail_jobs_ignores_running_jobs() {
    let t = schema().await;
    let a = id(&t, "SELECT id FROM {g}.add_job('d')").await;
    assert_eq!(claim(t.storage().pool(), t.schema()).await, Some(a));
    let b = id(&t, "SELECT id FROM {g}.add_job('d')").await;
    let c = id(&t, "SELECT id FROM {g}.add_job('d')").await;
    let failed = ids(
        &t,
        &format!("SELECT id FROM {{g}}.permanently_fail_jobs(ARRAY[{a}, {b}]::bigint[])"),
    )
    .await;
    assert_eq!(failed, vec![b]);
    let j = job(&t, b).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.last_error.as_deref(), Some("Manually marked as failed"));
    assert_eq!(job(&t, a).await.status, JobStatus::Running);
    ids(
        &t,
        &format!("SELECT id FROM {{g}}.permanently_fail_jobs(ARRAY[{c}]::bigint[], 'bad data')"),
    )
    .await;
    assert_eq!(job(&t, c).await.last_error.as_deref(), Some("bad data"));
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn reschedule_jobs_changes_waiting_jobs_only() {
    let t = schema().await;
    let a = id(&t, "SELECT id FROM {g}.add_job('d')").await;
    assert_eq!(claim(t.storage().pool(), t.schema()).await, Some(a));
    let b = id(&t, "SELECT id FROM {g}.add_job('d')").await;
    let changed = ids(
        &t,
        &format!(
            "SELECT id FROM {{g}}.reschedule_jobs(ARRAY[{a}, {b}]::bigint[],
                 run_at => now() + interval '1 day', priority => 3, attempts => 2, max_attempts => 7)"
        ),
    )
    .await;
    assert_eq!(changed, vec![b]);
    let j = job(&t, b).await;
    assert_eq!((j.priority, j.attempt, j.max_attempts), (-3, 2, 7));
    assert!(j.run_at > chrono::Utc::now() + chrono::Duration::hours(23));
    assert_eq!(job(&t, a).await.attempt, 1, "the running job is untouched");

    // attempts reaching max_attempts fails the job, as in graphile; giving attempts back
    // makes it run again.
    ids(
        &t,
        &format!("SELECT id FROM {{g}}.reschedule_jobs(ARRAY[{b}]::bigint[], attempts => 7)"),
    )
    .await;
    assert_eq!(job(&t, b).await.status, JobStatus::Failed);
    ids(
        &t,
        &format!("SELECT id FROM {{g}}.reschedule_jobs(ARRAY[{b}]::bigint[], attempts => 0)"),
    )
    .await;
    assert_eq!(job(&t, b).await.status, JobStatus::Retrying);
    t.drop_schema().await.expect("drop");
}

/// A worker for the default queue whose handler `slow` tracks how many run at once.
fn worker(t: &TestSchema, concurrency: usize) -> (Worker, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let storage: DynStorage = Arc::new(t.storage().clone());
    let queue = Queue::new(storage);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (r, p, d) = (running.clone(), peak.clone(), done.clone());
    queue.register("slow", move |_ctx: JobContext, _args: serde_json::Value| {
        let (r, p, d) = (r.clone(), p.clone(), d.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(40)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            d.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>(())
        }
    });
    let w = Worker::new(queue, WorkerOptions::new().queue("default", concurrency)).expect("worker");
    (w, peak, done)
}

#[tokio::test]
async fn a_rust_worker_runs_a_job_added_with_a_queue_name() {
    let t = schema().await;
    let a = id(&t, "SELECT id FROM {g}.add_job('slow', '{}', 'reports')").await;
    let (w, _, done) = worker(&t, 2);
    w.drain().await.expect("drain");
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(job(&t, a).await.status, JobStatus::Completed);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn jobs_with_one_queue_name_never_run_at_once() {
    let t = schema().await;
    for _ in 0..6 {
        id(
            &t,
            "SELECT id FROM {g}.add_job('slow', '{}', queue_name => 'serial')",
        )
        .await;
    }
    let (w, peak, done) = worker(&t, 6);
    w.drain().await.expect("drain");
    assert_eq!(done.load(Ordering::SeqCst), 6);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "one job of the queue_name at a time"
    );
    t.drop_schema().await.expect("drop");
}
