//! Every command on PostgreSQL, each test in a schema of its own, dropped at the end.

use crate::harness::{self, DbArgs, Seeded};
use crate::scenario;
use durable_jobs_postgres::sqlx;
use durable_jobs_postgres::testing::{unique_schema, TestSchema};
use std::sync::Arc;

async fn seeded_schema() -> (TestSchema, DbArgs, Seeded) {
    let t = TestSchema::new().await.unwrap();
    let seeded = harness::seed(Arc::new(t.storage().clone())).await;
    let db = DbArgs(vec![
        "--database".into(),
        t.url().to_string(),
        "--schema".into(),
        t.schema().to_string(),
    ]);
    (t, db, seeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_commands() {
    let (t, db, seeded) = seeded_schema().await;
    scenario::read_commands(&db, &seeded);
    t.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_job_actions() {
    let (t, db, seeded) = seeded_schema().await;
    scenario::job_actions(&db, &seeded);
    t.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_delete_by_filter() {
    let (t, db, seeded) = seeded_schema().await;
    scenario::delete_by_filter(&db, &seeded);
    t.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes() {
    let (t, db, seeded) = seeded_schema().await;
    scenario::writes(&db, &seeded);
    t.drop_schema().await.unwrap();
}

async fn schema_exists(t: &TestSchema, schema: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(schema)
        .fetch_one(t.storage().pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_never_migrated_schema_is_refused_then_migrate_creates_it() {
    // The test schema gives a server URL and a pool to look with; the CLI works on
    // another schema that does not exist yet.
    let t = TestSchema::new().await.unwrap();
    let schema = unique_schema("dj_cli");
    let db = DbArgs(vec![
        "--database".into(),
        t.url().to_string(),
        "--schema".into(),
        schema.clone(),
    ]);
    for args in [
        vec!["status"],
        vec!["jobs", "list"],
        vec!["jobs", "show", "1"],
        vec!["enqueue", "t"],
        vec!["schedules", "list"],
    ] {
        let line = db.run(&args).fails(1);
        assert!(line.contains("never migrated"), "{line}");
        assert!(line.contains(&schema), "{line}");
        assert!(line.contains("run `durable-jobs migrate`"), "{line}");
    }
    assert!(
        !schema_exists(&t, &schema).await,
        "a read command created the schema"
    );

    let report = db.run(&["--json", "migrate"]).ok().json();
    assert_eq!(report["backend"], "postgres");
    assert_eq!(report["from_version"], 0);
    assert_eq!(report["to_version"], durable_jobs_postgres::LATEST_VERSION);
    let again = db.run(&["migrate"]).ok();
    assert!(
        again.stdout.contains("already at schema version"),
        "{again:#?}"
    );
    let out = db.run(&["--json", "enqueue", "ping"]).ok().json();
    let id = out["id"].as_i64().unwrap();
    let list = db.run(&["--json", "jobs", "list"]).ok().json();
    assert_eq!(list["jobs"][0]["id"], id);

    durable_jobs_postgres::testing::drop_schemas(t.storage().pool(), &schema)
        .await
        .unwrap();
    t.drop_schema().await.unwrap();
}

#[test]
fn postgres_unreachable_server_fails_fast_in_one_line() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:secret@127.0.0.1:{port}/postgres");
    let started = std::time::Instant::now();
    let out = harness::run(&["--database", &url, "--connect-timeout", "1s", "status"]);
    let line = out.fails(1);
    assert!(line.contains("cannot reach PostgreSQL"), "{line}");
    assert!(!line.contains("secret"), "the password leaked: {line}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}
