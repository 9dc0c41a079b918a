//! The retention purge vacuums what it deleted (`PostgresOptions::vacuum_after_purge`):
//! when it does, when it does not, and that the next jobs then fill the freed space
//! instead of growing the table.

use crate::schema;
use chrono::Utc;
use durable_jobs::testing::ConformanceHarness;
use durable_jobs::{RetentionBatch, Storage};
use durable_jobs_postgres::testing::{
    unique_schema, PgBouncerHarness, TestSchema, ThrowawayCluster,
};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use sqlx::AssertSqlSafe;

/// A batch that deletes every completed job that finished over a day ago, up to `limit`
/// workflow trees.
fn completed_a_day_ago(limit: usize) -> RetentionBatch {
    RetentionBatch {
        completed_before: Some(Utc::now() - chrono::Duration::days(1)),
        failed_before: None,
        cancelled_before: None,
        limit,
    }
}

/// Runs `sql` (several statements allowed, outside a transaction) on `storage`'s pool.
async fn run(storage: &PostgresStorage, sql: String) {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(storage.pool())
        .await
        .expect("seed statement");
}

/// Adds `completed` jobs that finished two days ago and `pending` ones (not purged).
async fn seed(storage: &PostgresStorage, completed: u32, pending: u32) {
    let q = quoted(storage);
    run(
        storage,
        format!(
            "INSERT INTO {q}.jobs (task, payload, status, completed_at)
             SELECT 't', jsonb_build_object('n', i, 'pad', repeat('x', 200)), 'completed',
                    now() - interval '2 days'
             FROM generate_series(1, {completed}) AS i;
             INSERT INTO {q}.jobs (task, payload, run_at)
             SELECT 't', '{{}}', now() + interval '1 day' FROM generate_series(1, {pending});"
        ),
    )
    .await;
}

fn quoted(storage: &PostgresStorage) -> String {
    format!("\"{}\"", storage.schema())
}

/// Manual vacuums of the schema's `jobs` table so far (autovacuum's are counted apart).
async fn vacuums(storage: &PostgresStorage) -> i64 {
    sqlx::query_scalar(
        "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'jobs'",
    )
    .bind(storage.schema())
    .fetch_one(storage.pool())
    .await
    .expect("vacuum count")
}

/// A pass that deletes more than 50 rows (autovacuum's base threshold) from a table never
/// vacuumed vacuums it once, at the pass's end, not per batch.
#[tokio::test]
async fn a_pass_that_deletes_past_the_threshold_vacuums_once() {
    let t = schema().await;
    let s = t.storage();
    seed(s, 250, 0).await;
    assert_eq!(vacuums(s).await, 0);
    // Batches of 100: two full ones, then the short one that ends the pass.
    for expected in [100, 100, 50] {
        let purged = s
            .purge_retained(completed_a_day_ago(100))
            .await
            .expect("purge");
        assert_eq!(purged.completed, expected);
        let want = if expected == 100 { 0 } else { 1 };
        assert_eq!(vacuums(s).await, want, "after a batch of {expected}");
    }
    // A pass that finds nothing due does not vacuum again.
    let purged = s
        .purge_retained(completed_a_day_ago(100))
        .await
        .expect("purge");
    assert_eq!(purged.jobs(), 0);
    assert_eq!(vacuums(s).await, 1);
    t.drop_schema().await.expect("drop");
}

/// Deletions under 50 plus 5% of the table's rows wait; they count towards the next pass,
/// which vacuums once the sum reaches the threshold.
#[tokio::test]
async fn small_passes_add_up_to_a_vacuum() {
    let t = schema().await;
    let s = t.storage();
    let q = quoted(s);
    seed(s, 0, 2000).await;
    // reltuples 2000 (the pending jobs): the threshold is 50 + 100 = 150 deleted rows.
    run(s, format!("VACUUM ANALYZE {q}.jobs")).await;
    let before = vacuums(s).await;
    // (finished jobs added, rows deleted since the last vacuum, vacuums since `before`)
    for (finished, so_far, vacuumed) in [(40u32, 40, 0i64), (100, 140, 0), (20, 160, 1)] {
        seed(s, finished, 0).await;
        let purged = s
            .purge_retained(completed_a_day_ago(1000))
            .await
            .expect("purge");
        assert_eq!(purged.completed, u64::from(finished));
        assert_eq!(
            vacuums(s).await,
            before + vacuumed,
            "after {so_far} deleted rows"
        );
    }
    t.drop_schema().await.expect("drop");
}

/// Turned off, the purge never vacuums.
#[tokio::test]
async fn turned_off_the_purge_never_vacuums() {
    let t = TestSchema::with_options(
        PostgresOptions::new()
            .max_connections(4)
            .vacuum_after_purge(false),
    )
    .await
    .expect("schema");
    let s = t.storage();
    seed(s, 500, 0).await;
    let purged = s
        .purge_retained(completed_a_day_ago(1000))
        .await
        .expect("purge");
    assert_eq!(purged.completed, 500);
    assert_eq!(vacuums(s).await, 0);
    t.drop_schema().await.expect("drop");
}

/// Behind pgBouncer in transaction mode the vacuum still runs: it goes as one simple
/// query outside any transaction, which the pooler passes through (VACUUM refuses a
/// transaction block).
#[tokio::test]
async fn the_purge_vacuums_behind_pgbouncer_in_transaction_mode() {
    let h = PgBouncerHarness::new().await.expect("pgbouncer harness");
    let direct = h.direct().storage();
    seed(direct, 250, 0).await;
    let purged = h
        .storage()
        .purge_retained(completed_a_day_ago(1000))
        .await
        .expect("purge through pgbouncer");
    assert_eq!(purged.completed, 250);
    assert_eq!(vacuums(direct).await, 1);
    h.teardown().await;
}

/// The heap's size in pages.
async fn pages(storage: &PostgresStorage) -> i64 {
    sqlx::query_scalar("SELECT pg_relation_size(to_regclass($1)) / 8192")
        .bind(format!("{}.jobs", quoted(storage)))
        .fetch_one(storage.pool())
        .await
        .expect("size")
}

/// Purges 5,000 jobs and then adds 5,000 like them, returning the heap's pages after the
/// first fill and after the second.
async fn purge_and_refill(url: &str, vacuum: bool) -> (i64, i64) {
    let s = PostgresStorage::connect_with(
        url,
        PostgresOptions::new()
            .schema(unique_schema("dj_vacuum"))
            .max_connections(2)
            .vacuum_after_purge(vacuum),
    )
    .await
    .expect("connect");
    s.migrate().await.expect("migrate");
    let q = quoted(&s);
    // Only the purge's own vacuum may free space: autovacuum coming round during the test
    // would make the two runs alike.
    run(
        &s,
        format!("ALTER TABLE {q}.jobs SET (autovacuum_enabled = false)"),
    )
    .await;
    seed(&s, 5000, 0).await;
    let filled = pages(&s).await;
    let purged = s
        .purge_retained(completed_a_day_ago(10_000))
        .await
        .expect("purge");
    assert_eq!(purged.completed, 5000);
    seed(&s, 5000, 0).await;
    let refilled = pages(&s).await;
    s.pool().close().await;
    (filled, refilled)
}

/// The point of the vacuum: on a server of its own (no other session's snapshot holds the
/// deleted rows back), the jobs enqueued after a purge reuse the space it freed. Without
/// the vacuum the same jobs double the table.
#[tokio::test]
async fn jobs_after_a_purge_reuse_the_space_it_freed() {
    let cluster = tokio::task::spawn_blocking(ThrowawayCluster::start)
        .await
        .expect("join")
        .expect("start a throwaway PostgreSQL cluster");
    let (filled, refilled) = purge_and_refill(cluster.url(), true).await;
    assert!(filled > 50, "the seed fills {filled} pages");
    assert!(
        refilled <= filled + filled / 20,
        "with the vacuum: {filled} pages filled, {refilled} after the purge and refill"
    );
    let (filled, refilled) = purge_and_refill(cluster.url(), false).await;
    assert!(
        refilled >= filled * 9 / 5,
        "without the vacuum: {filled} pages filled, {refilled} after the purge and refill"
    );
    drop(cluster);
}
