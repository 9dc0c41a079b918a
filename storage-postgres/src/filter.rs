//! The dynamic read query (`list_jobs`), built with sea-query rather than by
//! concatenating SQL: which terms appear depends on the filter, and every value is bound
//! as a parameter. The SQLite backend builds the same queries with the same builder in
//! its dialect. The hot-path statements (claim, complete, enqueue) stay hand-written in
//! [`crate::sql`], where their exact text matters for the plan.
//!
//! sea-query renders; sqlx binds. The values sea-query collects are mapped to sqlx binds
//! here ([`bind`]) instead of through a driver crate, which keeps the dependency tree to
//! this crate's one sqlx.

use crate::error::db;
use crate::exec::{Db, Fetch};
use crate::storage::job_from_row;
use chrono::{DateTime, Utc};
use durable_jobs::{Error, Job, JobFilter, Result};
use sea_query::extension::postgres::PgExpr;
use sea_query::{
    ArrayType, Expr, ExprTrait, Order, PostgresQueryBuilder, Query, SelectStatement, TableRef,
};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{AssertSqlSafe, Postgres};

/// The listing's page size when the filter sets none (as the trait documents).
const DEFAULT_LIMIT: usize = 100;

/// `<schema>.<table>`. The schema is passed as an owned name, which sea-query quotes
/// and escapes (a borrowed `&'static str` would be written as is): the name is
/// configurable, so it is never trusted to be a plain word, even though the options
/// already refuse anything but `A-Z a-z 0-9 _`.
fn table(schema: &str, name: &str) -> TableRef {
    (schema.to_owned(), name.to_owned()).into()
}

/// The `SELECT` for a filter, by ascending id.
pub(crate) fn list_query(schema: &str, f: &JobFilter) -> SelectStatement {
    let mut q = Query::select();
    q.columns(crate::sql::JOB_COLUMNS)
        .from(table(schema, "jobs"));
    filter_terms(&mut q, f);
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    q.order_by("id", Order::Asc)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX));
    q
}

/// Adds a filter's terms (all but its limit) to `q`, a select from the jobs table.
pub(crate) fn filter_terms(q: &mut SelectStatement, f: &JobFilter) {
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
        // `tags @> $n` (a one-element text[]) is what the GIN index `jobs_tags`
        // answers; that index is partial (`WHERE cardinality(tags) > 0`), and the
        // planner cannot derive its predicate from `@>`, so the query states it (true
        // for every job with a tag).
        q.and_where(Expr::col("tags").contains(Expr::val(vec![tag.clone()])));
        q.and_where(Expr::cust(r#"cardinality("tags") > 0"#));
    }
    if let Some(t) = f.created_after {
        q.and_where(Expr::col("created_at").gte(t));
    }
    if let Some(t) = f.created_before {
        q.and_where(Expr::col("created_at").lt(t));
    }
    if let Some(a) = f.after_id {
        q.and_where(Expr::col("id").gt(a));
    }
    if let Some((key, value)) = &f.metadata {
        // Containment of a one-pair object, which the partial GIN index `jobs_metadata`
        // answers (its predicate stated, as for tags). For a scalar value (the filter
        // was validated) containment is equality, numbers compared by value.
        let pair = serde_json::json!({ key.as_str(): value }).to_string();
        q.and_where(Expr::cust_with_values(
            r#""metadata" @> CAST($1 AS jsonb) AND "metadata" <> CAST('{}' AS jsonb)"#,
            [pair],
        ));
    }
}

/// Jobs matching a filter, by ascending id.
pub(crate) async fn list_jobs(pool: Db<'_>, schema: &str, f: &JobFilter) -> Result<Vec<Job>> {
    let rows = fetch(pool, render(list_query(schema, f))?).await?;
    rows.iter().map(job_from_row).collect()
}

/// Renders `q` for PostgreSQL with its values as sqlx binds. The text depends only on
/// which filter terms are set (and how many statuses), so sqlx's per-connection
/// statement cache still hits for repeated listings. (Synchronous: sea-query's
/// statements are not `Send`, so none is held across an await.)
pub(crate) fn render(q: SelectStatement) -> Result<(String, Vec<Bind>)> {
    let (sql, values) = q.build(PostgresQueryBuilder);
    Ok((sql, bind(values)?))
}

/// Runs a rendered query.
async fn fetch(pool: Db<'_>, (sql, binds): (String, Vec<Bind>)) -> Result<Vec<PgRow>> {
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for value in binds {
        query = value.bind_to(query);
    }
    query.fetch_all_on(pool).await.map_err(db)
}

/// One value to bind, in the Rust type whose PostgreSQL type the column expects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    Text(Option<String>),
    TextArray(Option<Vec<String>>),
    Int4(Option<i32>),
    Int8(Option<i64>),
    Timestamptz(Option<DateTime<Utc>>),
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

impl Bind {
    pub(crate) fn bind_to(self, q: PgQuery<'_>) -> PgQuery<'_> {
        match self {
            Bind::Text(v) => q.bind(v),
            Bind::TextArray(v) => q.bind(v),
            Bind::Int4(v) => q.bind(v),
            Bind::Int8(v) => q.bind(v),
            Bind::Timestamptz(v) => q.bind(v),
        }
    }

    /// As [`Bind::bind_to`], for a query that returns one column.
    pub(crate) fn bind_scalar_to<O>(self, q: PgScalar<'_, O>) -> PgScalar<'_, O> {
        match self {
            Bind::Text(v) => q.bind(v),
            Bind::TextArray(v) => q.bind(v),
            Bind::Int4(v) => q.bind(v),
            Bind::Int8(v) => q.bind(v),
            Bind::Timestamptz(v) => q.bind(v),
        }
    }
}

type PgScalar<'q, O> = sqlx::query::QueryScalar<'q, Postgres, O, PgArguments>;

/// sea-query's collected values as sqlx binds. Only the kinds these queries produce are
/// accepted; anything else is a bug in this module, reported as a storage error rather
/// than a panic.
fn bind(values: sea_query::Values) -> Result<Vec<Bind>> {
    use sea_query::Value as V;
    values
        .into_iter()
        .map(|v| {
            Ok(match v {
                V::String(s) => Bind::Text(s),
                V::Int(i) => Bind::Int4(i),
                V::BigInt(i) => Bind::Int8(i),
                // LIMIT: a usize page size; PostgreSQL's LIMIT takes a bigint.
                V::BigUnsigned(u) => Bind::Int8(u.map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
                V::ChronoDateTimeUtc(t) => Bind::Timestamptz(t),
                V::Array(ArrayType::String, items) => Bind::TextArray(
                    items
                        .map(|items| {
                            items
                                .into_iter()
                                .map(|item| match item {
                                    V::String(Some(s)) => Ok(s),
                                    other => Err(unbindable(&other)),
                                })
                                .collect::<Result<Vec<_>>>()
                        })
                        .transpose()?,
                ),
                other => return Err(unbindable(&other)),
            })
        })
        .collect()
}

fn unbindable(value: &sea_query::Value) -> Error {
    crate::error::storage(
        durable_jobs::StorageErrorKind::Other,
        format!(
            "postgres: cannot bind query value {value:?} (a filter query produced a kind of \
             value the binder does not map)"
        ),
    )
}

#[cfg(test)]
mod tests {
    // Not a glob: sea-query's expression traits would shadow `str::contains`.
    use super::{bind, list_query, Bind};
    use chrono::DateTime;
    use durable_jobs::JobFilter;
    use durable_jobs::JobStatus;
    use sea_query::PostgresQueryBuilder;

    fn full_filter(hostile: &str) -> JobFilter {
        JobFilter {
            statuses: vec![JobStatus::Pending, JobStatus::Failed],
            queue: Some(hostile.into()),
            task: Some(hostile.into()),
            parent_id: Some(7),
            tag: Some(hostile.into()),
            created_after: DateTime::from_timestamp(1, 0),
            created_before: DateTime::from_timestamp(2, 0),
            after_id: Some(3),
            limit: Some(5),
            metadata: None,
        }
    }

    /// Every filter value is bound, never spliced into the SQL text, and placeholders
    /// are numbered in the order the values are bound.
    #[test]
    fn filter_values_are_bound() {
        let hostile = "x' OR 1 = 1 --";
        let (sql, values) = list_query("dj", &full_filter(hostile)).build(PostgresQueryBuilder);
        assert!(!sql.contains(hostile), "{sql}");
        assert!(!sql.contains("pending"), "{sql}");
        let bound = bind(values).expect("bind");
        // 2 statuses, queue, task, parent, tag, 2 times, after id, limit.
        assert_eq!(bound.len(), 10, "{sql}");
        for n in 1..=10 {
            assert!(sql.contains(&format!("${n}")), "${n} missing: {sql}");
        }
        assert!(!sql.contains("$11"), "{sql}");
        assert!(bound.contains(&Bind::Text(Some(hostile.into()))));
        assert!(bound.contains(&Bind::TextArray(Some(vec![hostile.into()]))));
        assert!(bound.contains(&Bind::Int8(Some(7))));
        assert!(bound.contains(&Bind::Timestamptz(DateTime::from_timestamp(1, 0))));
        assert_eq!(bound.last(), Some(&Bind::Int8(Some(5))));
    }

    /// An empty filter is a plain ordered page of the default size.
    #[test]
    fn empty_filter_is_a_default_page() {
        let (sql, values) =
            list_query("durable_jobs", &JobFilter::default()).build(PostgresQueryBuilder);
        assert_eq!(
            sql,
            format!(
                "SELECT {} FROM \"durable_jobs\".\"jobs\" ORDER BY \"id\" ASC LIMIT $1",
                crate::sql::JOB_COLUMNS
                    .map(|c| format!("\"{c}\""))
                    .join(", ")
            )
        );
        assert_eq!(bind(values).expect("bind"), vec![Bind::Int8(Some(100))]);
    }

    /// The schema is a quoted identifier, escaped by sea-query.
    #[test]
    fn schema_is_a_quoted_identifier() {
        let sql = list_query("Jobs_2", &JobFilter::default()).to_string(PostgresQueryBuilder);
        assert!(sql.contains(r#"FROM "Jobs_2"."jobs""#), "{sql}");
        // Validation refuses such names; the quoting would still hold.
        let sql = list_query(r#"a"b"#, &JobFilter::default()).to_string(PostgresQueryBuilder);
        assert!(sql.contains(r#"FROM "a""b"."jobs""#), "{sql}");
    }
}

/// The same queries against a real server, in a schema of their own.
#[cfg(all(test, feature = "testing"))]
mod db_tests {
    use super::{list_query, render};
    use crate::testing::TestSchema;
    use durable_jobs::JobFilter;
    use durable_jobs::{JobStatus, NewJob, Storage};
    use serde_json::json;
    use sqlx::{AssertSqlSafe, Row};

    async fn enqueue(s: &crate::PostgresStorage, job: NewJob) -> i64 {
        s.enqueue(job).await.expect("enqueue").id
    }

    /// Every filter term at once narrows to the one job that matches them all, with
    /// hostile text bound as data; time bounds hold exactly at a job's `created_at`.
    #[tokio::test]
    async fn every_term_filters_against_the_schema() {
        let t = TestSchema::new().await.expect("schema");
        let s = t.storage();
        let hostile = "x' OR 1 = 1; DROP TABLE jobs --";
        let parent = enqueue(s, NewJob::new("p", json!(0))).await;
        let mut ids = Vec::new();
        for i in 0..4 {
            let mut j = NewJob::new(if i == 3 { "other" } else { hostile }, json!(i));
            j.queue = hostile.into();
            j.parent_id = Some(parent);
            j.tags = if i == 0 {
                vec![]
            } else {
                vec![hostile.into(), "b".into()]
            };
            ids.push(enqueue(s, j).await);
        }
        let jobs = s.list_jobs(JobFilter::default()).await.expect("list");
        let created = |id: i64| {
            jobs.iter()
                .find(|j| j.id == id)
                .map(|j| j.created_at)
                .expect("listed")
        };
        let f = JobFilter {
            statuses: vec![JobStatus::Pending, JobStatus::Failed],
            queue: Some(hostile.into()),
            task: Some(hostile.into()),
            parent_id: Some(parent),
            tag: Some(hostile.into()),
            created_after: Some(created(ids[1])),
            created_before: Some(created(ids[3])),
            after_id: Some(ids[0]),
            limit: Some(10),
            metadata: None,
        };
        let got: Vec<i64> = s
            .list_jobs(f.clone())
            .await
            .expect("list")
            .iter()
            .map(|j| j.id)
            .collect();
        // ids[0] has no tag (and is not after itself), ids[3] is another task and not
        // created before itself.
        assert_eq!(got, vec![ids[1], ids[2]]);
        let one = s
            .list_jobs(JobFilter {
                limit: Some(1),
                ..f.clone()
            })
            .await
            .expect("list");
        assert_eq!(one.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[1]]);
        let none = s
            .list_jobs(JobFilter {
                statuses: vec![JobStatus::Completed],
                ..f
            })
            .await
            .expect("list");
        assert!(none.is_empty());
        // The hostile text dropped nothing.
        assert_eq!(
            s.list_jobs(JobFilter::default()).await.expect("list").len(),
            5
        );
        let counts = s.counts().await.expect("counts");
        let counted: Vec<(&str, JobStatus, u64)> = counts
            .iter()
            .map(|c| (c.queue.as_str(), c.status, c.count))
            .collect();
        assert_eq!(
            counted,
            vec![
                ("default", JobStatus::Pending, 1),
                (hostile, JobStatus::Pending, 4)
            ]
        );
        t.drop_schema().await.expect("drop");
    }

    /// A metadata term can use the partial GIN index `jobs_metadata`, as a tag uses
    /// `jobs_tags`.
    #[tokio::test]
    async fn metadata_filter_can_use_the_metadata_index() {
        let f = JobFilter {
            metadata: Some(("tenant".into(), json!("acme"))),
            ..JobFilter::default()
        };
        let plan = plan_with_indexes_only(&f).await;
        assert!(plan.contains("jobs_metadata"), "{plan}");
    }

    /// A tag lookup can use the partial GIN index `jobs_tags`: the query states the
    /// index's predicate, which the planner cannot derive from `@>` alone.
    #[tokio::test]
    async fn tag_filter_can_use_the_tag_index() {
        let f = JobFilter {
            tag: Some("eu".into()),
            ..JobFilter::default()
        };
        let plan = plan_with_indexes_only(&f).await;
        assert!(plan.contains("jobs_tags"), "{plan}");
    }

    /// The plan of a listing on an empty schema, sequential scans forbidden.
    async fn plan_with_indexes_only(f: &JobFilter) -> String {
        let t = TestSchema::new().await.expect("schema");
        let (sql, binds) = render(list_query(t.schema(), f)).expect("render");
        let mut tx = t.storage().pool().begin().await.expect("begin");
        // An empty table is cheapest to scan; forbid that so the plan shows whether the
        // index applies at all.
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .expect("set");
        let mut q = sqlx::query(AssertSqlSafe(format!("EXPLAIN {sql}")));
        for b in binds {
            q = b.bind_to(q);
        }
        let plan: Vec<String> = q
            .fetch_all(&mut *tx)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        tx.rollback().await.expect("rollback");
        t.drop_schema().await.expect("drop");
        plan.join("\n")
    }
}
