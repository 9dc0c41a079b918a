//! Integration tests against a real PostgreSQL server (found or started by
//! `durable_jobs_postgres::testing`). Every test works in a schema of its own.

mod conformance;
mod enqueue;
mod errors;
mod graphile_compat;
mod hot_paths;
mod listen;
mod migrate;
mod pgbouncer;
mod pool;
mod sql_api;
mod sql_worker;
mod step;
mod timeline;
mod vacuum;

use durable_jobs_postgres::testing::TestSchema;
use std::future::Future;
use std::time::{Duration, Instant};

/// A fresh migrated schema, or a failed test naming why.
async fn schema() -> TestSchema {
    TestSchema::new().await.expect("test schema")
}

/// Polls `cond` until it holds or `deadline` passes.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
