//! Deleting jobs by filter in bounded batches (`Storage::delete_jobs`): one transaction
//! per batch that picks the matching roots, locks their trees, and deletes the trees in
//! which nothing runs. Checkpoints and signals go with their jobs (foreign keys cascade),
//! and the attempt history and tags live on the job row.

use crate::error::db;
use crate::exec::{Exec, Fetch};
use crate::filter::{filter_terms, render, Bind};
use crate::options::quote_ident;
use crate::storage::PostgresStorage;
use durable_jobs::{DeletedBatch, JobFilter, JobId, Result};
use sea_query::{Expr, ExprTrait, LockBehavior, LockType, Order, Query, TableRef};
use sqlx::{AssertSqlSafe, Row};
use std::collections::HashSet;

/// The batch size when the filter sets none (as the trait documents).
const DEFAULT_LIMIT: usize = 100;

/// Deletes one batch (see `Storage::delete_jobs`).
///
/// Candidates are locked with `SKIP LOCKED` (a row a claim is taking right now is not
/// waited for: it is about to run, so it would be skipped anyway). Their trees are then
/// locked and read again under the lock, so a descendant that a claim made running
/// before the lock is seen running, and a claim after it skips the locked rows; nothing
/// in a deleted tree can start running before the delete commits.
pub(crate) async fn delete_jobs(storage: &PostgresStorage, f: &JobFilter) -> Result<DeletedBatch> {
    let schema = storage.schema();
    let jobs = format!("{}.jobs", quote_ident(schema));
    let (sql, binds) = candidates_query(schema, &jobs, f)?;
    let mut tx = storage.begin().await.map_err(db)?;
    let mut query = sqlx::query_scalar::<_, JobId>(AssertSqlSafe(sql));
    for b in binds {
        query = b.bind_scalar_to(query);
    }
    let candidates: Vec<JobId> = query.fetch_all_on(storage.on(&mut tx)).await.map_err(db)?;
    let Some(&last_id) = candidates.last() else {
        tx.commit().await.map_err(db)?;
        return Ok(DeletedBatch::default());
    };
    let tree_sql = format!(
        "WITH RECURSIVE tree(root, id) AS (
             SELECT r, r FROM unnest($1::bigint[]) AS r
             UNION ALL
             SELECT t.root, c.id FROM {jobs} c JOIN tree t ON c.parent_id = t.id
         )
         SELECT t.root, t.id, j.status = 'running' AS running
         FROM tree t JOIN {jobs} j ON j.id = t.id
         FOR UPDATE OF j"
    );
    let rows = sqlx::query(AssertSqlSafe(tree_sql))
        .bind(&candidates)
        .fetch_all_on(storage.on(&mut tx))
        .await
        .map_err(db)?;
    let mut members = Vec::with_capacity(rows.len());
    let mut blocked = HashSet::new();
    for row in &rows {
        let root: JobId = row.try_get("root").map_err(db)?;
        let id: JobId = row.try_get("id").map_err(db)?;
        if row.try_get::<bool, _>("running").map_err(db)? {
            blocked.insert(root);
        }
        members.push((root, id));
    }
    let doomed: Vec<JobId> = members
        .into_iter()
        .filter(|(root, _)| !blocked.contains(root))
        .map(|(_, id)| id)
        .collect();
    let deleted = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {jobs} WHERE id = ANY($1::bigint[])"
    )))
    .bind(&doomed)
    .execute_on(storage.on(&mut tx))
    .await
    .map_err(db)?
    .rows_affected();
    tx.commit().await.map_err(db)?;
    Ok(DeletedBatch {
        deleted,
        last_id: Some(last_id),
    })
}

/// The candidates' select, rendered (synchronously: sea-query's statements are not
/// `Send`, so none may be held across an await).
fn candidates_query(schema: &str, jobs: &str, f: &JobFilter) -> Result<(String, Vec<Bind>)> {
    let mut q = Query::select();
    q.column("id")
        .from(TableRef::from((schema.to_owned(), "jobs".to_owned())));
    filter_terms(&mut q, f);
    q.and_where(Expr::col("status").ne("running"));
    q.and_where(Expr::cust(format!(
        r#"("parent_id" IS NULL OR NOT EXISTS (SELECT 1 FROM {jobs} p WHERE p.id = "jobs"."parent_id"))"#
    )));
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    q.order_by("id", Order::Asc)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX))
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    render(q)
}
