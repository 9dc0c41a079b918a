//! The dynamic read queries (`list_jobs`, `delete_jobs`' candidates), built with sea-query rather than by
//! concatenating SQL: which terms appear depends on the filter, and every value is bound
//! as a parameter. The Postgres backend builds the same queries with the same builder in
//! its dialect. The hot-path statements (claim, complete) stay hand-written in
//! [`crate::query`], where their exact text matters for the plan.

use crate::error::QResult;
use crate::query::{job_from_row, JOB_COLUMNS};
use crate::workflow::micros_ceil;
use durable_jobs::{DeletedBatch, Job, JobFilter, JobId, StorageErrorKind};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use sea_query::{
    Expr, ExprTrait, Order, Query, SelectStatement, SqliteQueryBuilder, Value as SeaValue,
};
use serde_json::Value;

const JOBS: &str = "durable_jobs";
const TAGS: &str = "durable_jobs_tags";

/// The listing's page size when the filter sets none (as the trait documents).
const DEFAULT_LIMIT: usize = 100;

/// The `SELECT` for a filter, by ascending id. Times compare against the stored
/// microseconds: a bound is rounded up, so `created_at >= t` and `created_at < t` hold
/// for the job exactly as [`Job::created_at`] reports it.
pub(crate) fn list_query(f: &JobFilter) -> SelectStatement {
    let mut q = Query::select();
    q.columns(JOB_COLUMNS.split(", ")).from(JOBS);
    filter_terms(&mut q, f);
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    q.order_by("id", Order::Asc)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX));
    q
}

/// Adds a filter's terms (all but its limit) to `q`, a select from the jobs table.
fn filter_terms(q: &mut SelectStatement, f: &JobFilter) {
    if !f.statuses.is_empty() {
        q.and_where(Expr::col("status").is_in(f.statuses.iter().map(|s| s.as_str())));
    }
    if let Some(queue) = &f.queue {
        q.and_where(Expr::col("queue").eq(queue.as_str()));
    }
    if let Some(task) = &f.task {
        q.and_where(Expr::col("task").eq(task.as_str()));
    }
    if let Some(parent) = f.parent_id {
        q.and_where(Expr::col("parent_id").eq(parent));
    }
    if let Some(tag) = &f.tag {
        // Through the (tag, job_id) index rather than every job's tags.
        q.and_where(
            Expr::col("id").in_subquery(
                Query::select()
                    .column("job_id")
                    .from(TAGS)
                    .and_where(Expr::col("tag").eq(tag.as_str()))
                    .to_owned(),
            ),
        );
    }
    if let Some(t) = f.created_after {
        q.and_where(Expr::col("created_at").gte(micros_ceil(t)));
    }
    if let Some(t) = f.created_before {
        q.and_where(Expr::col("created_at").lt(micros_ceil(t)));
    }
    if let Some(a) = f.after_id {
        q.and_where(Expr::col("id").gt(a));
    }
    if let Some((key, value)) = &f.metadata {
        q.and_where(metadata_term(key, value));
    }
}

/// `metadata` holds `key` with a value equal to `value` (a scalar: the filter was
/// validated), compared as every backend does: strings exactly, numbers by value
/// (SQLite compares an integer and a real numerically), booleans and null by type.
/// `json_each` compares the key as a plain string, so keys with dots or quotes need no
/// JSON-path escaping.
fn metadata_term(key: &str, value: &Value) -> Expr {
    const EACH: &str = "EXISTS (SELECT 1 FROM json_each(durable_jobs.metadata) AS m \
                        WHERE m.key = ? AND ";
    let key = key.to_string();
    match value {
        Value::String(s) => Expr::cust_with_values(
            format!("{EACH}m.type = 'text' AND m.atom = ?)"),
            [SeaValue::from(key), SeaValue::from(s.clone())],
        ),
        Value::Number(n) => {
            let n = match n.as_i64() {
                Some(i) => SeaValue::from(i),
                None => SeaValue::from(n.as_f64().unwrap_or(f64::NAN)),
            };
            Expr::cust_with_values(
                format!("{EACH}m.type IN ('integer', 'real') AND m.atom = ?)"),
                [SeaValue::from(key), n],
            )
        }
        Value::Bool(true) => Expr::cust_with_values(format!("{EACH}m.type = 'true')"), [key]),
        Value::Bool(false) => Expr::cust_with_values(format!("{EACH}m.type = 'false')"), [key]),
        // Objects and arrays were refused by `JobFilter::validate`; null is left.
        _ => Expr::cust_with_values(format!("{EACH}m.type = 'null')"), [key]),
    }
}

/// The ids of one delete batch's candidates (see `Storage::delete_jobs`): matching,
/// not running, roots (no parent, or a parent that is gone), by ascending id.
fn delete_candidates_query(f: &JobFilter) -> SelectStatement {
    let mut q = Query::select();
    q.column("id").from(JOBS);
    filter_terms(&mut q, f);
    q.and_where(Expr::col("status").ne("running"));
    q.and_where(Expr::cust(
        "(parent_id IS NULL OR NOT EXISTS \
         (SELECT 1 FROM durable_jobs p WHERE p.id = durable_jobs.parent_id))",
    ));
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    q.order_by("id", Order::Asc)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX));
    q
}

/// Deletes one batch (see `Storage::delete_jobs`); runs in the writer's transaction, so
/// nothing can start running between the check and the delete. Each candidate's tree
/// is walked through the parent index; a tree with a running job stays whole.
pub(crate) fn delete_jobs(conn: &Connection, f: &JobFilter) -> QResult<DeletedBatch> {
    let (sql, values) = delete_candidates_query(f).build(SqliteQueryBuilder);
    let candidates: Vec<JobId> = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(bind(values)?), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut children = conn
        .prepare_cached("SELECT id, status = 'running' FROM durable_jobs WHERE parent_id = ?1")?;
    let mut delete = conn.prepare_cached("DELETE FROM durable_jobs WHERE id = ?1")?;
    let mut deleted = 0;
    for &root in &candidates {
        let mut tree = vec![root];
        let mut running = false;
        let mut i = 0;
        while i < tree.len() && !running {
            let kids: Vec<(JobId, bool)> = children
                .query_map([tree[i]], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            running = kids.iter().any(|(_, r)| *r);
            tree.extend(kids.into_iter().map(|(id, _)| id));
            i += 1;
        }
        if running {
            continue;
        }
        for id in tree {
            deleted += delete.execute([id])? as u64;
        }
    }
    Ok(DeletedBatch {
        deleted,
        last_id: candidates.last().copied(),
    })
}

/// Jobs matching a filter, by ascending id.
pub(crate) fn list_jobs(conn: &Connection, f: &JobFilter) -> QResult<Vec<Job>> {
    let (sql, values) = list_query(f).build(SqliteQueryBuilder);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(bind(values)?))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(job_from_row(row)?);
    }
    Ok(out)
}

/// sea-query's bound values as rusqlite values. Only the kinds these queries produce
/// are accepted; anything else is a bug in this module, reported as a storage error.
fn bind(values: sea_query::Values) -> QResult<Vec<SqlValue>> {
    use sea_query::Value as V;
    values
        .into_iter()
        .map(|v| {
            Ok(match v {
                V::String(Some(s)) => SqlValue::Text(s),
                V::BigInt(Some(i)) => SqlValue::Integer(i),
                V::Int(Some(i)) => SqlValue::Integer(i.into()),
                V::BigUnsigned(Some(u)) => SqlValue::Integer(i64::try_from(u).unwrap_or(i64::MAX)),
                V::Double(Some(f)) => SqlValue::Real(f),
                V::String(None)
                | V::BigInt(None)
                | V::Int(None)
                | V::BigUnsigned(None)
                | V::Double(None) => SqlValue::Null,
                other => {
                    return Err(crate::error::error(
                        StorageErrorKind::Other,
                        format!("sqlite: cannot bind query value {other:?}"),
                    )
                    .into())
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable_jobs::JobStatus;

    /// Every filter value is bound, never spliced into the SQL text.
    #[test]
    fn filter_values_are_bound() {
        let hostile = "x' OR 1 = 1 --";
        let f = JobFilter {
            statuses: vec![JobStatus::Pending, JobStatus::Failed],
            queue: Some(hostile.into()),
            task: Some(hostile.into()),
            parent_id: Some(7),
            tag: Some(hostile.into()),
            created_after: chrono::DateTime::from_timestamp(1, 0),
            created_before: chrono::DateTime::from_timestamp(2, 0),
            after_id: Some(3),
            limit: Some(5),
            metadata: Some((hostile.into(), serde_json::json!(hostile))),
        };
        let (sql, values) = list_query(&f).build(SqliteQueryBuilder);
        assert!(!sql.contains(hostile), "{sql}");
        assert!(!sql.contains("pending"), "{sql}");
        let bound = bind(values).expect("bind");
        assert!(bound.contains(&SqlValue::Text(hostile.into())));
        assert!(bound.contains(&SqlValue::Integer(1_000_000)));
        // And the query runs against the real schema.
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate::migrate(&conn, 0).expect("migrate");
        assert!(list_jobs(&conn, &f).expect("list").is_empty());
        assert!(crate::query::counts(&conn).expect("counts").is_empty());
    }

    /// A tag lookup goes through the tag index, and a listing walks ids in order.
    #[test]
    fn tag_filter_uses_the_tag_index() {
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate::migrate(&conn, 0).expect("migrate");
        let f = JobFilter {
            tag: Some("eu".into()),
            ..JobFilter::default()
        };
        let (sql, values) = list_query(&f).build(SqliteQueryBuilder);
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("prepare");
        let plan = stmt
            .query_map(params_from_iter(bind(values).expect("bind")), |r| {
                r.get::<_, String>(3)
            })
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
            .join("\n");
        assert!(plan.contains("durable_jobs_tags_tag"), "{plan}");
    }
}
