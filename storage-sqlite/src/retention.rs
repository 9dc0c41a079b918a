//! The retention purge: bounded batches of finished workflow trees, oldest first. A
//! batch runs in one writer transaction (`BEGIN IMMEDIATE`), which every process using
//! the file serializes on, so one batch runs at a time and none is ever busy.

use crate::error::QResult;
use crate::query::micros;
use durable_jobs::{JobId, RetentionBatch, RetentionPurged};
use rusqlite::{params, Connection};

/// The oldest root jobs of one final status that finished before a cut-off, along
/// `durable_jobs_finished` (status, completed_at, queue): one index range that stops at the
/// cut-off or the limit. A root has no parent, or its parent is gone. ?1 status,
/// ?2 cut-off (µs), ?3 limit.
pub(crate) const DUE_ROOTS: &str = "SELECT id, completed_at FROM durable_jobs AS j \
     WHERE (status = 'completed' OR status = 'failed' OR status = 'cancelled') AND status = ?1 \
       AND completed_at < ?2 \
       AND (parent_id IS NULL \
            OR NOT EXISTS (SELECT 1 FROM durable_jobs AS p WHERE p.id = j.parent_id)) \
     ORDER BY completed_at LIMIT ?3";

/// A job and all its descendants (through `durable_jobs_parent`), with their statuses.
const TREE: &str = "WITH RECURSIVE tree(id) AS ( \
         SELECT ?1 \
         UNION ALL \
         SELECT c.id FROM durable_jobs AS c JOIN tree AS t ON c.parent_id = t.id) \
     SELECT j.id, j.status FROM tree JOIN durable_jobs AS j ON j.id = tree.id";

/// Checkpoints, signals and tags go by their foreign keys' ON DELETE CASCADE; attempt
/// history lives on the row.
const DELETE: &str = "DELETE FROM durable_jobs WHERE id = ?1";

/// One batch (see [`durable_jobs::Storage::purge_retained`]).
pub(crate) fn purge_retained(conn: &Connection, batch: RetentionBatch) -> QResult<RetentionPurged> {
    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut due: Vec<(i64, JobId)> = Vec::new();
    let cuts = [
        ("completed", batch.completed_before),
        ("failed", batch.failed_before),
        ("cancelled", batch.cancelled_before),
    ];
    for (status, cut) in cuts {
        let Some(cut) = cut else { continue };
        let mut stmt = conn.prepare_cached(DUE_ROOTS)?;
        let rows = stmt.query_map(params![status, micros(cut), limit], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, JobId>(0)?))
        })?;
        for row in rows {
            due.push(row?);
        }
    }
    due.sort_unstable();
    due.truncate(batch.limit);
    let mut out = RetentionPurged::default();
    for (_, root) in due {
        let tree: Vec<(JobId, String)> = conn
            .prepare_cached(TREE)?
            .query_map([root], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let finished = |s: &str| matches!(s, "completed" | "failed" | "cancelled");
        if !tree.iter().all(|(_, s)| finished(s)) {
            continue;
        }
        out.roots += 1;
        let mut delete = conn.prepare_cached(DELETE)?;
        for (id, status) in &tree {
            delete.execute([id])?;
            match status.as_str() {
                "completed" => out.completed += 1,
                "failed" => out.failed += 1,
                _ => out.cancelled += 1,
            }
        }
    }
    Ok(out)
}
