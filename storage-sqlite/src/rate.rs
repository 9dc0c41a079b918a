//! Rate limits per queue: the windows a claim consults and counts its starts in, and the
//! calls that set and list the limits. Every function runs on the writer's connection
//! inside its transaction (or a reader), so a window's count and the claim it limits
//! commit together.

use crate::error::QResult;
use durable_jobs::RateLimit;
use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::time::Duration;

/// A window is open while `opened_at + period_us > now`; otherwise the next start opens
/// a new one.
const OPEN: &str = "opened_at IS NOT NULL AND opened_at + period_us > ?1";

/// The starts left in the current window of each rate-limited queue among `queues`.
pub(crate) fn windows_left(
    conn: &Connection,
    queues: &[String],
    now_us: i64,
) -> QResult<HashMap<String, usize>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT queue, max_starts - CASE WHEN {OPEN} THEN starts ELSE 0 END \
         FROM durable_jobs_rate_limits"
    ))?;
    let rows = stmt.query_map([now_us], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (queue, left) = row?;
        if queues.contains(&queue) {
            out.insert(queue, usize::try_from(left).unwrap_or(0));
        }
    }
    Ok(out)
}

/// Counts `n` starts in the queue's window, opening a new window when none is open.
pub(crate) fn record_starts(conn: &Connection, queue: &str, n: usize, now_us: i64) -> QResult<()> {
    conn.prepare_cached(&format!(
        "UPDATE durable_jobs_rate_limits SET \
         starts = CASE WHEN {OPEN} THEN starts ELSE 0 END + ?3, \
         opened_at = CASE WHEN {OPEN} THEN opened_at ELSE ?1 END \
         WHERE queue = ?2"
    ))?
    .execute(params![now_us, queue, i64::try_from(n).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// Sets (keeping the current window and its count) or removes a queue's rate limit.
pub(crate) fn set_limit(conn: &Connection, queue: &str, limit: Option<RateLimit>) -> QResult<()> {
    match limit {
        Some(l) => conn
            .prepare_cached(
                "INSERT INTO durable_jobs_rate_limits (queue, max_starts, period_us) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (queue) DO UPDATE SET \
                 max_starts = excluded.max_starts, period_us = excluded.period_us",
            )?
            .execute(params![
                queue,
                l.max_starts,
                i64::try_from(l.period.as_micros()).unwrap_or(i64::MAX)
            ])?,
        None => conn
            .prepare_cached("DELETE FROM durable_jobs_rate_limits WHERE queue = ?1")?
            .execute([queue])?,
    };
    Ok(())
}

/// The rate-limited queues, by queue.
pub(crate) fn limits(conn: &Connection) -> QResult<Vec<(String, RateLimit)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT queue, max_starts, period_us FROM durable_jobs_rate_limits ORDER BY queue",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (queue, max_starts, period_us) = row?;
        let period = Duration::from_micros(u64::try_from(period_us).unwrap_or(0));
        out.push((queue, RateLimit { max_starts, period }));
    }
    Ok(out)
}
