//! The dynamic read queries (`list_jobs`, `counts`), built with sea-query rather than by
//! concatenating SQL: which terms appear depends on the filter, and every value is bound
//! as a parameter. The Postgres backend builds the same queries with the same builder in
//! its dialect. The hot-path statements (claim, complete) stay hand-written in
//! [`crate::query`], where their exact text matters for the plan.

use crate::error::QResult;
use crate::query::{job_from_row, JOB_COLUMNS};
use crate::workflow::micros_ceil;
use durable_jobs::{Job, JobFilter, QueueCount, StorageErrorKind};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use sea_query::{Expr, ExprTrait, Func, Order, Query, SelectStatement, SqliteQueryBuilder};

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
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    q.order_by("id", Order::Asc)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX));
    q
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

/// Jobs per queue and status.
pub(crate) fn counts(conn: &Connection) -> QResult<Vec<QueueCount>> {
    let (sql, values) = Query::select()
        .columns(["queue", "status"])
        .expr(Func::count(Expr::col("id")))
        .from(JOBS)
        .group_by_columns(["queue", "status"])
        .order_by("queue", Order::Asc)
        .order_by("status", Order::Asc)
        .build(SqliteQueryBuilder);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(bind(values)?))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let status: String = row.get(1)?;
        let count: i64 = row.get(2)?;
        out.push(QueueCount {
            queue: row.get(0)?,
            status: status.parse()?,
            count: u64::try_from(count).unwrap_or(0),
        });
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
                V::String(None) | V::BigInt(None) | V::Int(None) | V::BigUnsigned(None) => {
                    SqlValue::Null
                }
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
        assert!(counts(&conn).expect("counts").is_empty());
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
