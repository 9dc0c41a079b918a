//! The SQL API: add_job and the trigger helpers.

use crate::schema;
use durable_jobs::{JobFilter, JobStatus, Storage};
use serde_json::json;
use sqlx::{AssertSqlSafe, Row};

fn q(schema: &str, sql: &str) -> String {
    sql.replace("{s}", &format!("\"{schema}\""))
}

#[tokio::test]
async fn add_job_from_sql_with_defaults_and_named_arguments() {
    let t = schema().await;
    let s = t.storage();
    let row = sqlx::query(AssertSqlSafe(q(
        t.schema(),
        "SELECT id, task, payload, queue, priority, max_attempts, status FROM {s}.add_job('hello')",
    )))
    .fetch_one(s.pool())
    .await
    .expect("add_job");
    let id: i64 = row.get("id");
    let job = s.get_job(id).await.expect("get").expect("exists");
    assert_eq!(job.task, "hello");
    assert_eq!(job.payload, json!({}));
    assert_eq!(job.queue, "default");
    assert_eq!(job.priority, 0);
    assert_eq!(job.max_attempts, 4);
    assert_eq!(job.status, JobStatus::Pending);

    // graphile-worker's argument names and order.
    let id2: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        t.schema(),
        "SELECT id FROM {s}.add_job('mail', '{\"to\": \"a@b.c\"}'::json, 'emails',
             now() + interval '1 hour', 7, 'welcome:a@b.c', 5)",
    )))
    .fetch_one(s.pool())
    .await
    .expect("positional add_job");
    let job = s.get_job(id2).await.expect("get").expect("exists");
    assert_eq!(
        (job.queue.as_str(), job.priority, job.max_attempts),
        ("emails", 5, 7)
    );
    assert_eq!(job.dedupe_key.as_deref(), Some("welcome:a@b.c"));
    assert!(job.run_at > s.now().await.expect("now") + chrono::Duration::minutes(59));

    // The same job_key returns the unfinished job unchanged.
    let again: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        t.schema(),
        "SELECT id FROM {s}.add_job(identifier => 'mail', job_key => 'welcome:a@b.c', payload => '{\"other\": 1}')",
    )))
    .fetch_one(s.pool())
    .await
    .expect("dedupe add_job");
    assert_eq!(again, id2);
    assert_eq!(
        s.get_job(id2).await.expect("get").expect("exists").payload,
        json!({"to": "a@b.c"})
    );
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn add_job_rejects_bad_arguments() {
    let t = schema().await;
    for bad in [
        "SELECT {s}.add_job('')",
        "SELECT {s}.add_job(NULL)",
        "SELECT {s}.add_job('t', queue_name => 'no spaces')",
        "SELECT {s}.add_job('t', max_attempts => 0)",
    ] {
        let err = sqlx::query(AssertSqlSafe(q(t.schema(), bad)))
            .execute(t.storage().pool())
            .await
            .expect_err(bad);
        assert!(err.to_string().contains("add_job:"), "{bad}: {err}");
    }
    assert!(t
        .storage()
        .list_jobs(JobFilter::default())
        .await
        .expect("list")
        .is_empty());
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn triggers_enqueue_id_row_and_fields_payloads() {
    let t = schema().await;
    let s = t.storage();
    let setup = q(
        t.schema(),
        r#"
        CREATE TABLE {s}."Odd ""Users""" (id bigint PRIMARY KEY, email text, "Display ""Name""" text, secret text);
        SELECT {s}.attach_job_trigger('{s}."Odd ""Users"""', 'by_id', payload_mode => 'id', trigger_name => 'ids');
        SELECT {s}.attach_job_trigger('{s}."Odd ""Users"""', 'by_row', payload_mode => 'row', events => ARRAY['insert', 'UPDATE'], trigger_name => 'rows');
        SELECT {s}.attach_job_trigger('{s}."Odd ""Users"""', 'by_fields', payload_mode => 'fields',
            fields => ARRAY['email', 'Display "Name"'], events => ARRAY['DELETE'], trigger_name => 'x"; DROP TABLE y; --');
        "#,
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(s.pool())
        .await
        .expect("setup triggers");
    // Row data that would break naive SQL building.
    sqlx::query(AssertSqlSafe(q(
        t.schema(),
        r#"INSERT INTO {s}."Odd ""Users""" VALUES (1, 'a''b@c.d', 'Robert''); DROP TABLE x; --', 's3cret')"#,
    )))
    .execute(s.pool())
    .await
    .expect("insert row");
    sqlx::query(AssertSqlSafe(q(
        t.schema(),
        r#"UPDATE {s}."Odd ""Users""" SET email = 'new@c.d'"#,
    )))
    .execute(s.pool())
    .await
    .expect("update row");
    sqlx::query(AssertSqlSafe(q(
        t.schema(),
        r#"DELETE FROM {s}."Odd ""Users""""#,
    )))
    .execute(s.pool())
    .await
    .expect("delete row");

    let jobs = s.list_jobs(JobFilter::default()).await.expect("list");
    let got: Vec<(&str, serde_json::Value)> = jobs
        .iter()
        .map(|j| (j.task.as_str(), j.payload.clone()))
        .collect();
    let row = json!({"id": 1, "email": "a'b@c.d", "Display \"Name\"": "Robert'); DROP TABLE x; --", "secret": "s3cret"});
    let mut updated = row.clone();
    updated["email"] = json!("new@c.d");
    assert_eq!(
        got,
        vec![
            ("by_id", json!({"id": 1})),
            ("by_row", row),
            ("by_row", updated),
            (
                "by_fields",
                json!({"email": "new@c.d", "Display \"Name\"": "Robert'); DROP TABLE x; --"})
            ),
        ]
    );
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal ORDER BY tgname",
    )
    .bind(q(t.schema(), r#"{s}."Odd ""Users""""#))
    .fetch_all(s.pool())
    .await
    .expect("trigger names");
    assert_eq!(names, vec!["ids", "rows", "x\"; DROP TABLE y; --"]);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn trigger_helpers_reject_bad_arguments() {
    let t = schema().await;
    sqlx::query(AssertSqlSafe(q(
        t.schema(),
        "CREATE TABLE {s}.t (id int, v text)",
    )))
    .execute(t.storage().pool())
    .await
    .expect("table");
    for (bad, msg) in [
        (
            "SELECT {s}.attach_job_trigger('{s}.t', 'x', payload_mode => 'all')",
            "payload_mode",
        ),
        (
            "SELECT {s}.attach_job_trigger('{s}.t', 'x', payload_mode => 'fields')",
            "at least one field",
        ),
        (
            "SELECT {s}.attach_job_trigger('{s}.t', 'x', events => ARRAY['TRUNCATE; DROP'])",
            "events",
        ),
    ] {
        let err = sqlx::query(AssertSqlSafe(q(t.schema(), bad)))
            .execute(t.storage().pool())
            .await
            .expect_err(bad);
        assert!(err.to_string().contains(msg), "{bad}: {err}");
    }
    // A field that does not exist fails the write that fires the trigger, naming it.
    sqlx::query(AssertSqlSafe(q(
        t.schema(),
        "SELECT {s}.attach_job_trigger('{s}.t', 'x', payload_mode => 'fields', fields => ARRAY['nope'])",
    )))
    .execute(t.storage().pool())
    .await
    .expect("attach");
    let err = sqlx::query(AssertSqlSafe(q(
        t.schema(),
        "INSERT INTO {s}.t VALUES (1, 'a')",
    )))
    .execute(t.storage().pool())
    .await
    .expect_err("missing field");
    assert!(err.to_string().contains("no column named nope"), "{err}");
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn send_signal_from_sql_wakes_a_waiting_job() {
    use durable_jobs::{DequeueParams, Storage as _};
    use std::time::Duration;
    let t = schema().await;
    let s = t.storage();
    let id = s
        .enqueue(durable_jobs::NewJob::new("wf", json!(1)))
        .await
        .expect("enqueue")
        .id;
    let params = || DequeueParams {
        queues: vec!["default".into()],
        tasks: vec![],
        limit: 10,
        lease_duration: Duration::from_secs(30),
        holder: "sql-signal".into(),
        forbidden_flags: Vec::new(),
    };
    let c = s.dequeue(params()).await.expect("dequeue").remove(0);
    s.suspend(&c.lease, None).await.expect("suspend");
    assert!(
        s.dequeue(params()).await.expect("dequeue").is_empty(),
        "waits for a signal"
    );
    let signal = |job: i64| {
        sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(q(
            t.schema(),
            "SELECT {s}.send_signal($1, 'go', '{\"n\": 1}'::jsonb)",
        )))
        .bind(job)
        .fetch_one(s.pool())
    };
    assert_eq!(
        signal(id).await.expect("signal").as_deref(),
        Some("waiting")
    );
    let again = s.dequeue(params()).await.expect("dequeue");
    assert_eq!(again.iter().map(|c| c.job.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(
        s.peek_signal(id, "go").await.expect("peek"),
        Some(json!({"n": 1}))
    );
    s.complete(&again[0].lease, json!(null))
        .await
        .expect("complete");
    // A finished job gets no signal; a missing one is NULL.
    assert_eq!(
        signal(id).await.expect("signal").as_deref(),
        Some("completed")
    );
    assert_eq!(signal(987_654_321).await.expect("signal"), None);
    let stored: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        t.schema(),
        "SELECT count(*) FROM {s}.signals",
    )))
    .fetch_one(s.pool())
    .await
    .expect("count");
    assert_eq!(
        stored, 1,
        "only the signal sent while the job was unfinished"
    );
    t.drop_schema().await.expect("drop");
}

/// add_job takes the job's metadata as its last argument (named or positional): stored
/// as on the Rust API, matched by listings, checked by the same rules.
#[tokio::test]
async fn add_job_stores_metadata() {
    let t = schema().await;
    let s = t.storage();
    let named: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        t.schema(),
        "SELECT id FROM {s}.add_job('bill', metadata => '{\"tenant\": \"acme\", \"n\": 3}')",
    )))
    .fetch_one(s.pool())
    .await
    .expect("add_job with metadata");
    let positional: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        t.schema(),
        "SELECT id FROM {s}.add_job('bill', '{}', NULL, NULL, NULL, NULL, NULL, '{\"tenant\": \"globex\"}'::jsonb)",
    )))
    .fetch_one(s.pool())
    .await
    .expect("positional add_job with metadata");
    let plain: i64 = sqlx::query_scalar(AssertSqlSafe(q(
        t.schema(),
        "SELECT id FROM {s}.add_job('bill')",
    )))
    .fetch_one(s.pool())
    .await
    .expect("add_job without metadata");

    let job = s.get_job(named).await.expect("get").expect("exists");
    assert_eq!(
        serde_json::Value::Object(job.metadata),
        json!({"tenant": "acme", "n": 3})
    );
    let job = s.get_job(plain).await.expect("get").expect("exists");
    assert!(job.metadata.is_empty());
    let acme = s
        .list_jobs(JobFilter {
            metadata: Some(("tenant".into(), json!("globex"))),
            ..Default::default()
        })
        .await
        .expect("list by metadata");
    assert_eq!(
        acme.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![positional]
    );

    for bad in [
        "SELECT {s}.add_job('t', metadata => '[1, 2]')",
        "SELECT {s}.add_job('t', metadata => '\"tenant\"')",
        "SELECT {s}.add_job('t', metadata => '{\"\": 1}')",
        "SELECT {s}.add_job('t', metadata => jsonb_build_object('big', repeat('x', 70000)))",
    ] {
        let err = sqlx::query(AssertSqlSafe(q(t.schema(), bad)))
            .execute(s.pool())
            .await
            .expect_err(bad);
        assert!(
            err.to_string().contains("add_job: metadata"),
            "{bad}: {err}"
        );
    }
    assert_eq!(
        s.list_jobs(JobFilter::default()).await.expect("list").len(),
        3
    );
    t.drop_schema().await.expect("drop");
}
