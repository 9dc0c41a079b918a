//! A process that enqueues bundles without end, for the bundle crash tests
//! (`tests/bundle_crash.rs`), which SIGKILL it part-way through an enqueue.
//!
//! ```text
//! bundle_enqueuer (--sqlite FILE | --url URL --schema NAME) --members N
//! ```
//! Each bundle has N jobs of task `member` (arguments 0..N). After each enqueue returns
//! it prints `bundle <id>` and flushes, so the test knows enqueues are under way.

use durable_jobs::{BundleItem, BundleOptions, DynStorage, JobOptions, Queue, Storage, TaskError};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use durable_jobs_sqlite::SqliteStorage;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the bundles go.
enum Target {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

fn parse_args() -> Result<(Target, usize), String> {
    let mut it = std::env::args().skip(1);
    let (mut sqlite, mut url, mut schema, mut members) = (None, None, None, None);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        match flag.as_str() {
            "--sqlite" => sqlite = Some(PathBuf::from(value)),
            "--url" => url = Some(value),
            "--schema" => schema = Some(value),
            "--members" => {
                members = Some(value.parse::<usize>().map_err(|e| format!("{flag}: {e}"))?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let target = match (sqlite, url, schema) {
        (Some(path), None, None) => Target::Sqlite(path),
        (None, Some(url), Some(schema)) => Target::Postgres { url, schema },
        _ => return Err("give either --sqlite FILE or --url URL --schema NAME".into()),
    };
    Ok((target, members.ok_or("--members is required")?))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("bundle_enqueuer: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (target, members) = parse_args()?;
    let storage: DynStorage = match target {
        Target::Sqlite(path) => Arc::new(SqliteStorage::open(path).await?),
        Target::Postgres { url, schema } => {
            let s =
                PostgresStorage::connect_with(&url, PostgresOptions::new().schema(&schema)).await?;
            s.migrate().await?;
            Arc::new(s)
        }
    };
    let queue = Queue::new(storage);
    queue.register_fn("member", |_: u64| async { Ok::<_, TaskError>(()) });
    let mut out = std::io::stdout().lock();
    loop {
        let items = (0..members as u64)
            .map(|n| BundleItem::new("member", &n, JobOptions::new()))
            .collect();
        let id = queue.enqueue_bundle(items, BundleOptions::new()).await?;
        writeln!(out, "bundle {id}")?;
        out.flush()?;
    }
}
