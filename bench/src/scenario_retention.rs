//! The `retention` scenario, on every backend: a drain while the retention purge deletes
//! 1M finished jobs (on PostgreSQL seeded set-based, finished days ago; elsewhere
//! finished by hand through the storage calls just before the drain, see `store`),
//! against the same drain on the same table without the purge, in the same run.

use crate::cli::Config;
use crate::ours::Backend;
use crate::report::{Results, Target};
use crate::scenario_backlog::{concurrency, drain, record};
use crate::store::{self, Store};
use chrono::{DateTime, Utc};
use durable_jobs::{RetentionBatch, RetentionPolicy, Storage, DEFAULT_RETENTION_BATCH};
use std::time::Instant;

/// Finished jobs the purge deletes.
const FINISHED: usize = 1_000_000;

/// 1M finished jobs, a third each completed, failed and cancelled; returns a time every
/// one of them finished before. On PostgreSQL, set-based: finished two days ago (failed
/// ones nine days ago).
async fn seed_finished(store: &Store) -> Result<DateTime<Utc>, String> {
    let Store::Postgres(pg) = store else {
        return store::seed_finished(&store.storage(), FINISHED).await;
    };
    pg.sql(&format!(
        "INSERT INTO {{jobs}} (task, payload, status, attempt, run_at, started_at, completed_at)
         SELECT 'noop', '{{}}', (ARRAY['completed', 'failed', 'cancelled'])[i % 3 + 1], 1,
                now() - interval '9 days', now() - interval '9 days',
                now() - CASE WHEN i % 3 = 1 THEN interval '9 days' ELSE interval '2 days' END
         FROM generate_series(1, {FINISHED}) AS i"
    ))
    .await?;
    // (VACUUM refuses to run in the implicit transaction of a multi-statement call.)
    pg.sql("VACUUM ANALYZE {jobs}").await?;
    let now = pg.storage.now().await.map_err(|e| format!("now: {e}"))?;
    Ok(now - chrono::Duration::days(1))
}

/// What the workers' retention pass does, through the public storage call: batches of
/// the default size, for every job that finished before `before`, until one comes back
/// short. Returns (jobs deleted, seconds).
async fn purge(store: &Store, before: DateTime<Utc>) -> Result<(u64, f64), String> {
    let storage = store.storage();
    let t0 = Instant::now();
    let batch = RetentionBatch {
        completed_before: Some(before),
        failed_before: Some(before),
        cancelled_before: Some(before),
        limit: DEFAULT_RETENTION_BATCH,
    };
    let mut deleted = 0;
    loop {
        let p = storage
            .purge_retained(batch)
            .await
            .map_err(|e| format!("purge_retained: {e}"))?;
        deleted += p.jobs();
        if !p.busy && p.roots < batch.limit as u64 {
            return Ok((deleted, t0.elapsed().as_secs_f64()));
        }
        // As the workers' pass does: claims and completions run between batches.
        tokio::task::yield_now().await;
    }
}

async fn measure(cfg: &Config, res: &mut Results, backend: Backend) -> Result<(), String> {
    let sec = &Store::section(backend, "retention");
    let c = concurrency(cfg);
    let keep = RetentionPolicy::keep_forever();
    let plain = Store::new(cfg, backend).await?;
    let alone = async {
        seed_finished(&plain).await?;
        drain(cfg, &plain, keep).await
    }
    .await;
    plain.drop_store().await?;
    let alone = alone?;
    let purged = Store::new(cfg, backend).await?;
    let out = async {
        let before = seed_finished(&purged).await?;
        // The drain's worker keeps everything: the purge beside it is the only one.
        let (rate, purge) = tokio::join!(drain(cfg, &purged, keep), purge(&purged, before));
        Ok::<_, String>((rate?, purge?))
    }
    .await;
    purged.drop_store().await?;
    let (beside, (deleted, secs)) = out?;
    if deleted != FINISHED as u64 {
        return Err(format!("the purge deleted {deleted} of {FINISHED} jobs"));
    }
    let n = cfg.jobs;
    record(
        res,
        sec,
        &format!("drain {n} jobs, concurrency {c}, no purge"),
        ("jobs/s", true),
        None,
        alone,
    );
    record(
        res,
        sec,
        &format!("drain {n} jobs, concurrency {c}, purging {FINISHED}"),
        ("jobs/s", true),
        None,
        beside,
    );
    record(
        res,
        sec,
        "drain during purge / drain alone",
        ("x", true),
        Some(Target::AtLeast(0.8)),
        beside / alone,
    );
    record(
        res,
        sec,
        &format!("purge {FINISHED} finished jobs during the drain"),
        ("jobs/s", true),
        None,
        deleted as f64 / secs,
    );
    Ok(())
}

/// The `retention` scenario on `backend`; a failure is recorded and the bench goes on.
pub(crate) async fn run(
    cfg: &Config,
    res: &mut Results,
    errors: &mut Vec<String>,
    backend: Backend,
) {
    let sec = Store::section(backend, "retention");
    Store::report(&sec, errors, measure(cfg, res, backend)).await;
}
