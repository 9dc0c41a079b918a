//! Migrations: idempotent, concurrent-safe, versioned in the library's own schema.

use crate::schema;
use durable_jobs::{Error, Storage, StorageErrorKind};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe};
use durable_jobs_postgres::testing::{server_url, unique_schema};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage, LATEST_VERSION};

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let t = schema().await;
    assert_eq!(
        t.storage().schema_version().await.expect("version"),
        LATEST_VERSION
    );
    t.storage().migrate().await.expect("second migrate");
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".migrations",
        t.schema()
    )))
    .fetch_one(t.storage().pool())
    .await
    .expect("count");
    assert_eq!(rows, LATEST_VERSION);
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn concurrent_migrations_from_many_pools_apply_once() {
    let url = server_url().expect("server");
    let name = unique_schema("dj_mig");
    let mut storages = Vec::new();
    for _ in 0..6 {
        storages.push(
            PostgresStorage::connect_with(
                &url,
                PostgresOptions::new().schema(&name).max_connections(2),
            )
            .await
            .expect("connect"),
        );
    }
    let runs: Vec<_> = storages
        .iter()
        .cloned()
        .map(|s| tokio::spawn(async move { s.migrate().await }))
        .collect();
    for r in runs {
        r.await.expect("task").expect("concurrent migrate");
    }
    let s = &storages[0];
    assert_eq!(s.schema_version().await.expect("version"), LATEST_VERSION);
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{name}\".migrations"
    )))
    .fetch_one(s.pool())
    .await
    .expect("count");
    assert_eq!(rows, LATEST_VERSION);
    // The application's own sqlx migrations table is never created by us.
    let sqlx_table: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT to_regclass('\"{name}\"._sqlx_migrations')::text"
    )))
    .fetch_one(s.pool())
    .await
    .expect("regclass");
    assert_eq!(sqlx_table, None);
    durable_jobs_postgres::testing::drop_schemas(s.pool(), &name)
        .await
        .expect("drop");
}

#[tokio::test]
async fn schema_from_a_newer_library_is_refused() {
    let t = schema().await;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{}\".migrations (version, name) VALUES ($1, 'from the future')",
        t.schema()
    )))
    .bind(LATEST_VERSION + 7)
    .execute(t.storage().pool())
    .await
    .expect("insert");
    match t.storage().migrate().await {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!(found, LATEST_VERSION + 7);
            assert_eq!(supported, LATEST_VERSION);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    t.drop_schema().await.expect("drop");
}

#[tokio::test]
async fn invalid_schema_names_are_refused_before_any_sql() {
    let url = server_url().expect("server");
    for bad in ["", "x\"; DROP TABLE users; --", "pg_temp", "9lives", "a-b"] {
        match PostgresStorage::connect_with(&url, PostgresOptions::new().schema(bad)).await {
            Err(Error::InvalidOption {
                option: "schema", ..
            }) => {}
            other => panic!("schema {bad:?}: expected InvalidOption, got {other:?}"),
        }
    }
    let pool = sqlx::PgPool::connect_lazy(&url).expect("lazy pool");
    assert!(matches!(
        PostgresStorage::from_pool_with(pool, PostgresOptions::new().schema("no spaces")),
        Err(Error::InvalidOption {
            option: "schema",
            ..
        })
    ));
}

#[tokio::test]
async fn a_mixed_case_schema_is_quoted_everywhere() {
    let url = server_url().expect("server");
    let name = format!("Mixed_{}", unique_schema("Case"));
    let s = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new().schema(&name).max_connections(2),
    )
    .await
    .expect("connect");
    s.migrate().await.expect("migrate");
    let id = s
        .enqueue(durable_jobs::NewJob::new("t", serde_json::json!(1)))
        .await
        .expect("enqueue")
        .id;
    assert!(s.get_job(id).await.expect("get").is_some());
    durable_jobs_postgres::testing::drop_schemas(s.pool(), &name)
        .await
        .expect("drop");
}

#[tokio::test]
async fn an_unmigrated_schema_says_to_migrate() {
    let url = server_url().expect("server");
    let s = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new().schema(unique_schema("dj_none")),
    )
    .await
    .expect("connect");
    assert_eq!(s.schema_version().await.expect("version"), 0);
    let err = s
        .enqueue(durable_jobs::NewJob::new("t", serde_json::json!(1)))
        .await
        .expect_err("no tables yet");
    assert!(err.to_string().contains("migrate()"), "{err}");
    assert_eq!(err.storage_kind(), Some(StorageErrorKind::Schema), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_storage_error() {
    // Port 1 on loopback: nothing listens there.
    let err = PostgresStorage::connect_with(
        "postgres://postgres@127.0.0.1:1/postgres",
        PostgresOptions::new().acquire_timeout(std::time::Duration::from_secs(2)),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert_eq!(
        err.storage_kind(),
        Some(StorageErrorKind::Unavailable),
        "{err:?}"
    );
    assert!(matches!(
        PostgresStorage::connect("not a url").await,
        Err(Error::InvalidOption { option: "url", .. })
    ));
}

#[tokio::test]
async fn upgrading_a_version_2_schema_keeps_its_jobs() {
    use durable_jobs_postgres::migrate::{render, MIGRATIONS};
    let url = server_url().expect("server");
    let name = unique_schema("dj_upgrade");
    let s = PostgresStorage::connect_with(
        &url,
        PostgresOptions::new().schema(&name).max_connections(2),
    )
    .await
    .expect("connect");
    // A schema as version 2 of the library left it.
    let mut sql = format!(
        "CREATE SCHEMA \"{name}\";
         CREATE TABLE \"{name}\".migrations (version bigint PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for m in &MIGRATIONS[..2] {
        sql.push_str(&render(m.sql, &name));
        sql.push_str(&format!(
            "\nINSERT INTO \"{name}\".migrations (version, name) VALUES ({}, '{}');\n",
            m.version, m.name
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(s.pool())
        .await
        .expect("version 2 schema");
    let old: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM \"{name}\".add_job('t', '{{\"old\": true}}')"
    )))
    .fetch_one(s.pool())
    .await
    .expect("job under version 2");
    assert_eq!(s.schema_version().await.expect("version"), 2);

    s.migrate().await.expect("upgrade");
    assert_eq!(s.schema_version().await.expect("version"), LATEST_VERSION);
    let claimed = s
        .dequeue(durable_jobs::DequeueParams {
            queues: vec!["default".into()],
            tasks: vec![],
            limit: 10,
            lease_duration: std::time::Duration::from_secs(30),
            holder: "upgrade-test".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("dequeue after upgrade");
    assert_eq!(
        claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![old]
    );
    assert_eq!(claimed[0].job.payload, serde_json::json!({"old": true}));
    s.complete(&claimed[0].lease, serde_json::json!("done"))
        .await
        .expect("complete");
    durable_jobs_postgres::testing::drop_schemas(s.pool(), &name)
        .await
        .expect("drop");
}
