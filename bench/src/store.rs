//! A fresh store of one backend for the `backlog` and `retention` scenarios, and the
//! seeding those scenarios do through the public storage calls on the backends that have
//! no SQL to seed with (SQLite, memory). PostgreSQL seeds set-based instead (see
//! `scenario_backlog`), which is the same rows written faster.

use crate::cli::Config;
use crate::ours::{remove_sqlite_files, temp_sqlite_path, Backend};
use crate::scenario_backlog::Pg;
use chrono::{DateTime, Utc};
use durable_jobs::{DequeueParams, DynStorage, JobId, ManualOutcome, NewJob, Result as DjResult};
use durable_jobs_memory::MemoryStorage;
use durable_jobs_sqlite::SqliteStorage;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Rows written per storage call while seeding.
const CHUNK: usize = 10_000;

/// A fresh, migrated store.
pub(crate) enum Store {
    /// A fresh database on the server (boxed: it is much the largest).
    Postgres(Box<Pg>),
    /// A temp file, removed (with its WAL) when the store is dropped.
    Sqlite {
        storage: Arc<SqliteStorage>,
        path: PathBuf,
    },
    /// In-process.
    Memory(Arc<MemoryStorage>),
}

impl Store {
    pub(crate) async fn new(cfg: &Config, backend: Backend) -> Result<Store, String> {
        let store = match backend {
            Backend::Postgres => Store::Postgres(Box::new(Pg::new(cfg).await?)),
            Backend::Sqlite => {
                let path = temp_sqlite_path();
                let storage = SqliteStorage::open(&path)
                    .await
                    .map_err(|e| format!("open sqlite: {e}"))?;
                Store::Sqlite {
                    storage: Arc::new(storage),
                    path,
                }
            }
            Backend::Memory => Store::Memory(Arc::new(MemoryStorage::new())),
        };
        store
            .storage()
            .migrate()
            .await
            .map_err(|e| format!("migrate: {e}"))?;
        Ok(store)
    }

    /// The report section of this backend's figures.
    pub(crate) fn section(backend: Backend, scenario: &str) -> String {
        let name = match backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite (temp file)",
            Backend::Memory => "memory",
        };
        format!("{name} {scenario}")
    }

    /// Runs one scenario's measurement under its section `sec`: prints that it started,
    /// and records a failure in `errors` so the bench goes on with the next.
    pub(crate) async fn report(
        sec: &str,
        errors: &mut Vec<String>,
        measure: impl std::future::Future<Output = Result<(), String>>,
    ) {
        eprintln!("  {sec} ...");
        if let Err(e) = measure.await {
            eprintln!("  {sec} FAILED: {e}");
            errors.push(format!("{sec}: {e}"));
        }
    }

    pub(crate) fn storage(&self) -> DynStorage {
        match self {
            Store::Postgres(pg) => pg.storage.clone(),
            Store::Sqlite { storage, .. } => storage.clone(),
            Store::Memory(storage) => storage.clone(),
        }
    }

    /// A second handle on the same jobs for a producer: on PostgreSQL a pool of its own,
    /// so the worker learns of new jobs through the database (LISTEN/NOTIFY) as from
    /// another process; on the embedded backends the store itself, as an application
    /// embedding them enqueues (its workers are woken in process). SQLite also wakes
    /// workers in other processes sharing the file, within its watch interval (50 ms by
    /// default, `SqliteOptions::watch_interval`), which this does not measure.
    pub(crate) async fn producer(&self) -> Result<DynStorage, String> {
        Ok(match self {
            Store::Postgres(pg) => Arc::new(
                durable_jobs_postgres::PostgresStorage::connect_with(
                    &pg.db.url,
                    durable_jobs_postgres::PostgresOptions::new(),
                )
                .await
                .map_err(|e| format!("connect: {e}"))?,
            ),
            Store::Sqlite { storage, .. } => storage.clone(),
            Store::Memory(storage) => storage.clone(),
        })
    }

    /// Writes out what seeding or a drain left dirty (PostgreSQL's `CHECKPOINT`), so the
    /// figures after it do not include the server flushing gigabytes written just
    /// before: the backlog's seeding writes 2.1M rows, whose checkpoint otherwise runs
    /// during the latency phase and slows every commit (the shallow database gets the
    /// same, so both phases start alike). The embedded backends defer no such work.
    pub(crate) async fn settle(&self) -> Result<(), String> {
        match self {
            Store::Postgres(pg) => pg.sql("CHECKPOINT").await,
            _ => Ok(()),
        }
    }

    pub(crate) async fn drop_store(self) -> Result<(), String> {
        match self {
            Store::Postgres(pg) => pg.drop_db().await,
            Store::Sqlite { storage, path } => {
                drop(storage);
                remove_sqlite_files(&path);
                Ok(())
            }
            Store::Memory(_) => Ok(()),
        }
    }
}

fn seeding(what: &str) -> impl Fn(durable_jobs::Error) -> String + '_ {
    move |e| format!("seeding {what}: {e}")
}

/// Enqueues `n` jobs made by `make(i)`, `CHUNK` a call; returns their ids.
async fn enqueue(s: &DynStorage, n: usize, make: impl Fn(usize) -> NewJob) -> DjResult<Vec<JobId>> {
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(CHUNK) {
        let jobs = (start..(start + CHUNK).min(n)).map(&make).collect();
        ids.extend(s.enqueue_many(jobs).await?.into_iter().map(|e| e.id));
    }
    Ok(ids)
}

/// Finishes pending jobs by hand (`finish_jobs`), `CHUNK` a call.
async fn finish(s: &DynStorage, ids: &[JobId], outcome: &ManualOutcome) -> DjResult<()> {
    for chunk in ids.chunks(CHUNK) {
        s.finish_jobs(chunk, outcome.clone()).await?;
    }
    Ok(())
}

/// The backlog a claim cannot take, through the storage calls: `not_yet_due` pending
/// no-op jobs due tomorrow (one a millisecond), `waiting` workflows parked without a
/// timer (claimed, then suspended with no wake time), and `completed` no-op jobs
/// finished by hand and kept.
pub(crate) async fn seed_backlog(
    s: &DynStorage,
    not_yet_due: usize,
    waiting: usize,
    completed: usize,
) -> Result<(), String> {
    let now = s.now().await.map_err(seeding("now"))?;
    let tomorrow = now + chrono::Duration::days(1);
    enqueue(s, not_yet_due, |i| {
        let mut j = NewJob::new("noop", serde_json::json!({}));
        j.run_at = Some(tomorrow + chrono::Duration::milliseconds(i as i64));
        j
    })
    .await
    .map_err(seeding("jobs due tomorrow"))?;
    enqueue(s, waiting, |_| {
        NewJob::new("workflow", serde_json::json!({}))
    })
    .await
    .map_err(seeding("workflows"))?;
    let params = DequeueParams {
        queues: vec!["default".into()],
        tasks: vec!["workflow".into()],
        limit: 1000,
        lease_duration: Duration::from_secs(3600),
        holder: "bench-seed".into(),
        forbidden_flags: Vec::new(),
    };
    let mut parked = 0;
    while parked < waiting {
        let claimed = s.dequeue(params.clone()).await.map_err(seeding("claim"))?;
        if claimed.is_empty() {
            return Err(format!("seeding: parked {parked} of {waiting} workflows"));
        }
        for c in claimed {
            s.suspend(&c.lease, None)
                .await
                .map_err(seeding("suspend"))?;
            parked += 1;
        }
    }
    let done = enqueue(s, completed, |_| NewJob::new("noop", serde_json::json!({})))
        .await
        .map_err(seeding("completed jobs"))?;
    finish(s, &done, &ManualOutcome::Complete(serde_json::Value::Null))
        .await
        .map_err(seeding("completing"))
}

/// `n` finished no-op jobs, a third each completed, failed and cancelled (by hand);
/// returns the time after the last finished, which every one of them finished before.
pub(crate) async fn seed_finished(s: &DynStorage, n: usize) -> Result<DateTime<Utc>, String> {
    let ids = enqueue(s, n, |_| NewJob::new("noop", serde_json::json!({})))
        .await
        .map_err(seeding("jobs"))?;
    let third = |k: usize| -> Vec<JobId> { ids.iter().skip(k).step_by(3).copied().collect() };
    finish(
        s,
        &third(0),
        &ManualOutcome::Complete(serde_json::Value::Null),
    )
    .await
    .map_err(seeding("completing"))?;
    finish(s, &third(1), &ManualOutcome::Fail("seeded".into()))
        .await
        .map_err(seeding("failing"))?;
    for id in third(2) {
        s.cancel(id).await.map_err(seeding("cancelling"))?;
    }
    // A millisecond on: every seeded finish is strictly before it, and the drain that
    // follows (enqueued after this returns) finishes every job after it.
    let now = s.now().await.map_err(seeding("now"))?;
    Ok(now + chrono::Duration::milliseconds(1))
}
