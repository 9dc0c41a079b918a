//! The retention purge: bounded batches of finished workflow trees, oldest first. A
//! batch runs in steps of at most [`STEP`] trees, each one writer transaction
//! (`BEGIN IMMEDIATE`) in the writer's background lane: every process using the file
//! serializes on that lock, so one step runs at a time and none is ever busy, and
//! within this process claims and completions keep most of the writer (see
//! `background`).

use crate::error::QResult;
use crate::query::micros;
use durable_jobs::{JobId, RetentionBatch, RetentionPurged};
use rusqlite::{params, Connection};
use std::collections::HashSet;

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

/// The jobs among `?1` (a JSON array of ids) that have children (through
/// `durable_jobs_parent`): the roots whose trees are walked; the rest go together.
const WITH_CHILDREN: &str = "SELECT DISTINCT parent_id FROM durable_jobs \
     WHERE parent_id IN (SELECT value FROM json_each(?1))";

/// Checkpoints, signals and tags go by their foreign keys' ON DELETE CASCADE; attempt
/// history lives on the row.
const DELETE: &str = "DELETE FROM durable_jobs WHERE id = ?1";

/// [`DELETE`] for the jobs of `?1` (a JSON array of ids) at once.
const DELETE_MANY: &str = "DELETE FROM durable_jobs WHERE id IN (SELECT value FROM json_each(?1))";

/// The most trees one step deletes: about a millisecond of the writer (a job costs
/// about 12 µs to delete with its index entries), so a foreground write that arrives
/// while a step runs waits about that long.
pub(crate) const STEP: usize = 100;

/// The final statuses, in the order of `RetentionBatch`'s cut-offs.
const FINAL: [&str; 3] = ["completed", "failed", "cancelled"];

/// Counts one deleted job of `status` into `out`.
fn count(out: &mut RetentionPurged, status: &str) {
    match status {
        "completed" => out.completed += 1,
        "failed" => out.failed += 1,
        _ => out.cancelled += 1,
    }
}

/// One batch (see [`durable_jobs::Storage::purge_retained`]). Roots without children
/// (most jobs) are deleted with one statement; a root with children is walked and goes
/// with its tree only when every job of the tree has finished. (One tree walk and one
/// DELETE per root cost about 15 µs a job, and the batch holds the file's one writer:
/// a drain beside a purge waits on it.)
pub(crate) fn purge_retained(conn: &Connection, batch: RetentionBatch) -> QResult<RetentionPurged> {
    let limit = i64::try_from(batch.limit).unwrap_or(i64::MAX);
    let mut due: Vec<(i64, JobId, usize)> = Vec::new();
    let cuts = [
        batch.completed_before,
        batch.failed_before,
        batch.cancelled_before,
    ];
    for (slot, cut) in cuts.into_iter().enumerate() {
        let Some(cut) = cut else { continue };
        let mut stmt = conn.prepare_cached(DUE_ROOTS)?;
        let rows = stmt.query_map(params![FINAL[slot], micros(cut), limit], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, JobId>(0)?, slot))
        })?;
        for row in rows {
            due.push(row?);
        }
    }
    due.sort_unstable();
    due.truncate(batch.limit);
    let mut out = RetentionPurged::default();
    if due.is_empty() {
        return Ok(out);
    }
    let all = id_array(due.iter().map(|(_, id, _)| *id));
    let parents: HashSet<JobId> = conn
        .prepare_cached(WITH_CHILDREN)?
        .query_map([&all], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (trees, leaves): (Vec<_>, Vec<_>) =
        due.into_iter().partition(|(_, id, _)| parents.contains(id));
    if !leaves.is_empty() {
        conn.prepare_cached(DELETE_MANY)?
            .execute([id_array(leaves.iter().map(|(_, id, _)| *id))])?;
        for (_, _, slot) in &leaves {
            out.roots += 1;
            count(&mut out, FINAL[*slot]);
        }
    }
    for (_, root, _) in trees {
        let tree: Vec<(JobId, String)> = conn
            .prepare_cached(TREE)?
            .query_map([root], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if !tree.iter().all(|(_, s)| FINAL.contains(&s.as_str())) {
            continue;
        }
        out.roots += 1;
        let mut delete = conn.prepare_cached(DELETE)?;
        for (id, status) in &tree {
            delete.execute([id])?;
            count(&mut out, status);
        }
    }
    Ok(out)
}

/// A JSON array of ids, for `json_each`.
fn id_array(ids: impl Iterator<Item = JobId>) -> String {
    let mut out = String::from("[");
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}
