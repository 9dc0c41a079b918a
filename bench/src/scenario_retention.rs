//! The `retention` scenario (PostgreSQL): a drain while the retention purge deletes 1M
//! finished jobs (seeded set-based, finished two days ago), against the same drain on
//! the same table without the purge, in the same run.

use crate::cli::Config;
use crate::report::{Results, Target};
use crate::scenario_backlog::{concurrency, drain, record, Pg};
use durable_jobs::{RetentionPolicy, Storage, DEFAULT_RETENTION_BATCH};
use std::time::Instant;

/// Finished jobs the purge deletes.
const FINISHED: usize = 1_000_000;

/// 1M jobs that finished two days ago, a third each completed, failed and cancelled
/// (failed ones nine days ago, past the default 7 days).
async fn seed_finished(pg: &Pg) -> Result<(), String> {
    pg.sql(&format!(
        "INSERT INTO {{jobs}} (task, payload, status, attempt, run_at, started_at, completed_at)
         SELECT 'noop', '{{}}', (ARRAY['completed', 'failed', 'cancelled'])[i % 3 + 1], 1,
                now() - interval '9 days', now() - interval '9 days',
                now() - CASE WHEN i % 3 = 1 THEN interval '9 days' ELSE interval '2 days' END
         FROM generate_series(1, {FINISHED}) AS i"
    ))
    .await?;
    // (VACUUM refuses to run in the implicit transaction of a multi-statement call.)
    pg.sql("VACUUM ANALYZE {jobs}").await
}

/// What the workers' retention pass does, through the public storage call: batches of
/// the default size until one comes back short. Returns (jobs deleted, seconds).
async fn purge(pg: &Pg) -> Result<(u64, f64), String> {
    let t0 = Instant::now();
    let now = pg.storage.now().await.map_err(|e| format!("now: {e}"))?;
    let batch = RetentionPolicy::default().batch(now, DEFAULT_RETENTION_BATCH);
    let mut deleted = 0;
    loop {
        let p = pg
            .storage
            .purge_retained(batch)
            .await
            .map_err(|e| format!("purge_retained: {e}"))?;
        deleted += p.jobs();
        if !p.busy && p.roots < batch.limit as u64 {
            return Ok((deleted, t0.elapsed().as_secs_f64()));
        }
    }
}

async fn measure(cfg: &Config, res: &mut Results) -> Result<(), String> {
    let sec = "postgres retention";
    let c = concurrency(cfg);
    let keep = RetentionPolicy::keep_forever();
    let plain = Pg::new(cfg).await?;
    let alone = async {
        seed_finished(&plain).await?;
        drain(cfg, &plain, keep).await
    }
    .await;
    plain.drop_db().await?;
    let alone = alone?;
    let purged = Pg::new(cfg).await?;
    let out = async {
        seed_finished(&purged).await?;
        // The drain's worker keeps everything: the purge beside it is the only one.
        let (rate, purge) = tokio::join!(drain(cfg, &purged, keep), purge(&purged));
        Ok::<_, String>((rate?, purge?))
    }
    .await;
    purged.drop_db().await?;
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

/// The `retention` scenario on PostgreSQL; a failure is recorded and the bench goes on.
pub(crate) async fn run(cfg: &Config, res: &mut Results, errors: &mut Vec<String>) {
    eprintln!("  postgres retention ...");
    if let Err(e) = measure(cfg, res).await {
        eprintln!("  postgres retention FAILED: {e}");
        errors.push(format!("postgres retention: {e}"));
    }
}
