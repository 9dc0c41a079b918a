//! The raw SQL yardstick: what plain claim + complete statements through sqlx reach on
//! this machine, with no library around them. A ceiling to read our numbers against.

use crate::cli::Config;
use crate::pgdb::FreshDb;
use crate::raw_wide;
use crate::stats::rate;
use sqlx::{AssertSqlSafe, PgPool};
use std::sync::Arc;
use std::time::Instant;

const SCHEMA_SQL: &[&str] = &[
    "CREATE TABLE raw_jobs (
        id bigserial PRIMARY KEY,
        queue text NOT NULL DEFAULT 'default',
        task text NOT NULL,
        payload jsonb NOT NULL,
        priority int NOT NULL DEFAULT 0,
        status text NOT NULL DEFAULT 'pending',
        attempt int NOT NULL DEFAULT 0,
        run_at timestamptz NOT NULL DEFAULT now(),
        lease_token bigint,
        lease_expires_at timestamptz,
        completed_at timestamptz
    )",
    "CREATE INDEX raw_jobs_claim ON raw_jobs (queue, priority DESC, run_at, id)
        WHERE status = 'pending'",
    // Where the move pattern keeps finished rows.
    "CREATE TABLE raw_done (LIKE raw_jobs INCLUDING DEFAULTS, PRIMARY KEY (id))",
    // The split layout (`Shape::Split`, `Shape::BodyApart`): a job's body, written once
    // at the enqueue; the narrow row claims update (the raw_jobs row without the body,
    // kept as a copy rather than derived with LIKE and DROP COLUMN, whose dropped
    // columns would stay in every tuple's null bitmap); the narrow row a split
    // completion appends.
    "CREATE TABLE raw_body (id bigint PRIMARY KEY, task text NOT NULL, payload jsonb NOT NULL)",
    "CREATE TABLE raw_live (
        id bigint PRIMARY KEY,
        queue text NOT NULL DEFAULT 'default',
        priority int NOT NULL DEFAULT 0,
        status text NOT NULL DEFAULT 'pending',
        attempt int NOT NULL DEFAULT 0,
        run_at timestamptz NOT NULL DEFAULT now(),
        lease_token bigint,
        lease_expires_at timestamptz,
        completed_at timestamptz
    )",
    "CREATE INDEX raw_live_claim ON raw_live (queue, priority DESC, run_at, id)
        WHERE status = 'pending'",
    "CREATE TABLE raw_finished (
        id bigint PRIMARY KEY,
        status text NOT NULL,
        attempt int NOT NULL,
        completed_at timestamptz NOT NULL
    )",
];

/// Fills `raw_jobs` with `$1` jobs.
const JOBS_FILL: &[&str] = &["INSERT INTO raw_jobs (task, payload)
    SELECT 'noop', jsonb_build_object('id', i, 'data', 'test_' || i)
    FROM generate_series(0, $1 - 1) AS i"];

/// Fills the split's body and live tables with `$1` jobs.
const BODY_FILL: &[&str] = &[
    "INSERT INTO raw_body (id, task, payload)
     SELECT i, 'noop', jsonb_build_object('id', i, 'data', 'test_' || i)
     FROM generate_series(0, $1 - 1) AS i",
    "INSERT INTO raw_live (id) SELECT id FROM raw_body WHERE id < $1",
];

/// How a batch's completion is written: the three patterns a queue can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The row stays, rewritten as completed (what durable-jobs does).
    Update,
    /// The row moves to `raw_done`: a delete from the live table and an insert.
    Move,
    /// The row is deleted and nothing is kept (what graphile_worker does).
    Delete,
}

/// How a yardstick loop claims and completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Claim, then complete in a second statement, in the given way.
    Then(Finish),
    /// One statement completes the previous batch (by update) and claims the next.
    Fused,
    /// The split layout (`bench/sql/costs/split.sql`): claims update a narrow live row
    /// and read the body from its own table; a completion deletes the live row and
    /// appends a narrow finished row. The body, written once at the enqueue, is kept.
    Split,
    /// Half of the split: the body apart as in [`Shape::Split`], but a completion
    /// rewrites the narrow live row as completed in place, which stays. Tells whether
    /// the split's gain comes from the narrow rows or from finishing by delete.
    BodyApart,
    /// The in-place update at the library's width: its 31 columns and its indexes
    /// (`raw_wide`).
    WideUpdate,
    /// The split at `docs/split-layout.md`'s column placement and indexes (`raw_wide`).
    WideSplit,
}

impl Shape {
    /// Every shape the yardstick measures, in report order.
    pub const ALL: [Shape; 8] = [
        Shape::Then(Finish::Update),
        Shape::Fused,
        Shape::Then(Finish::Move),
        Shape::BodyApart,
        Shape::Split,
        Shape::Then(Finish::Delete),
        Shape::WideUpdate,
        Shape::WideSplit,
    ];

    /// The statements that create the shape's tables, those that fill them with `$1`
    /// jobs, and the VACUUM ANALYZE that follows.
    fn tables(self) -> (Vec<String>, &'static [&'static str], &'static str) {
        let narrow = || SCHEMA_SQL.iter().map(|s| s.to_string()).collect();
        match self {
            Shape::WideUpdate => {
                let mut schema: Vec<String> = raw_wide::WIDE_SCHEMA
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                schema.extend(raw_wide::state_indexes("wide", "wide_jobs"));
                (schema, raw_wide::WIDE_FILL, "VACUUM ANALYZE wide_jobs")
            }
            Shape::WideSplit => {
                let mut schema: Vec<String> = raw_wide::SPLIT_SCHEMA
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                schema.extend(raw_wide::state_indexes("split", "split_live"));
                (
                    schema,
                    raw_wide::SPLIT_FILL,
                    "VACUUM ANALYZE split_body, split_live",
                )
            }
            Shape::Split | Shape::BodyApart => {
                (narrow(), BODY_FILL, "VACUUM ANALYZE raw_body, raw_live")
            }
            Shape::Fused | Shape::Then(_) => (narrow(), JOBS_FILL, "VACUUM ANALYZE raw_jobs"),
        }
    }

    /// The claim and the completion of a two-statement shape, shared by its loops (an
    /// `Arc`, so a batch clones a pointer, not the text); `None` for the fused shape,
    /// whose one statement does both.
    fn statements(self) -> Option<(Arc<str>, Arc<str>)> {
        let (claim, complete): (&str, String) = match self {
            Shape::Fused => return None,
            Shape::Then(finish) => (CLAIM, finish.sql().to_string()),
            Shape::Split => (SPLIT_CLAIM, SPLIT_COMPLETE.to_string()),
            Shape::BodyApart => (SPLIT_CLAIM, BODY_APART_COMPLETE.to_string()),
            Shape::WideUpdate => (
                raw_wide::WIDE_CLAIM,
                raw_wide::with_ended(raw_wide::WIDE_COMPLETE),
            ),
            Shape::WideSplit => (
                raw_wide::SPLIT_CLAIM,
                raw_wide::with_ended(raw_wide::SPLIT_COMPLETE),
            ),
        };
        Some((claim.into(), complete.into()))
    }

    /// The label used in the report.
    pub fn label(self) -> String {
        match self {
            Shape::Then(finish) => format!("claim, then complete: {}", finish.label()),
            Shape::Fused => "complete+claim fused in 1 statement".to_string(),
            Shape::Split => "split body / live / finished tables (rows kept)".to_string(),
            Shape::BodyApart => "body apart, narrow row updated (row kept)".to_string(),
            Shape::WideUpdate => "library's width: update in place (row kept)".to_string(),
            Shape::WideSplit => "library's widths: split (rows kept)".to_string(),
        }
    }
}

impl Finish {
    fn label(self) -> &'static str {
        match self {
            Finish::Update => "update (row kept)",
            Finish::Move => "move to a done table (row kept)",
            Finish::Delete => "delete (row gone)",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Finish::Update => COMPLETE,
            Finish::Move => MOVE,
            Finish::Delete => DELETE,
        }
    }
}

/// Claims a batch: the same shape a real backend uses (priority, run_at, id order,
/// SKIP LOCKED, a random fencing token, a lease expiry). The claimed rows are found by
/// primary key from an array of the candidates' ids, as the library's claim does: with
/// `FROM c WHERE j.id = c.id`, the prepared statement's generic plan (which cannot see
/// the limit) hashes a sequential scan of the whole table, 32 ms for a claim of 500 on
/// 100,000 rows against about 5. The server kept custom plans for that form (the
/// update shape drained as fast before the change as after), but the figures should
/// not rest on the plan cache's choice.
const CLAIM: &str = "
    WITH c AS (
        SELECT id FROM raw_jobs
        WHERE status = 'pending' AND queue = 'default' AND run_at <= now()
        ORDER BY priority DESC, run_at, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE raw_jobs j
    SET status = 'running', attempt = j.attempt + 1,
        lease_token = (random() * 9e18)::bigint,
        lease_expires_at = now() + interval '30 seconds'
    WHERE j.id = ANY(ARRAY(SELECT id FROM c))
    RETURNING j.id, j.lease_token, j.payload";

/// Completes a batch, fenced on the lease token.
const COMPLETE: &str = "
    UPDATE raw_jobs j
    SET status = 'completed', completed_at = now(), lease_token = NULL, lease_expires_at = NULL
    FROM unnest($1::bigint[], $2::bigint[]) AS d(id, token)
    WHERE j.id = d.id AND j.status = 'running' AND j.lease_token = d.token";

/// Completes a batch by moving its rows to `raw_done`, fenced on the lease token.
const MOVE: &str = "
    WITH d AS (
        DELETE FROM raw_jobs j
        USING unnest($1::bigint[], $2::bigint[]) AS d(id, token)
        WHERE j.id = d.id AND j.status = 'running' AND j.lease_token = d.token
        RETURNING j.id, j.queue, j.task, j.payload, j.priority, j.attempt, j.run_at
    )
    INSERT INTO raw_done (id, queue, task, payload, priority, status, attempt, run_at,
        completed_at)
    SELECT id, queue, task, payload, priority, 'completed', attempt, run_at, now() FROM d";

/// The split layout's claim: the live rows are leased, found by primary key from an
/// array of the candidates' ids, and each claimed job's payload is read from its body
/// by primary key (a scalar subquery per row). Both as the library pins its claim: the
/// prepared statement's generic plan, which cannot see the limit, otherwise hashes a
/// seq scan of the narrow live table and merge-joins the body from its first row, and
/// each claim then costs as much as the table is large.
const SPLIT_CLAIM: &str = "
    WITH c AS (
        SELECT id FROM raw_live
        WHERE status = 'pending' AND queue = 'default' AND run_at <= now()
        ORDER BY priority DESC, run_at, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE raw_live l
        SET status = 'running', attempt = l.attempt + 1,
            lease_token = (random() * 9e18)::bigint,
            lease_expires_at = now() + interval '30 seconds'
        WHERE l.id = ANY(ARRAY(SELECT id FROM c))
        RETURNING l.id, l.lease_token
    )
    SELECT u.id, u.lease_token, (SELECT b.payload FROM raw_body b WHERE b.id = u.id)
    FROM u";

/// The split layout's completion: the live row goes, a narrow finished row is appended,
/// fenced on the lease token. The (id, token) pairs are a semi-join, which plans as one
/// primary key lookup per pair: with `USING unnest(..)` the narrow table's statistics
/// (every row pending when it was analyzed) make a seq scan filtered on `running` look
/// cheaper, and it is ten times slower.
const SPLIT_COMPLETE: &str = "
    WITH d AS (
        DELETE FROM raw_live l
        WHERE (l.id, l.lease_token) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))
          AND l.status = 'running'
        RETURNING l.id, l.attempt
    )
    INSERT INTO raw_finished (id, status, attempt, completed_at)
    SELECT id, 'completed', attempt, now() FROM d";

/// [`Shape::BodyApart`]'s completion: the narrow live row rewritten as completed, fenced
/// on the lease token (pairs as in [`SPLIT_COMPLETE`]).
const BODY_APART_COMPLETE: &str = "
    UPDATE raw_live l
    SET status = 'completed', completed_at = now(), lease_token = NULL, lease_expires_at = NULL
    WHERE (l.id, l.lease_token) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))
      AND l.status = 'running'";

/// Completes a batch by deleting its rows, fenced on the lease token.
const DELETE: &str = "
    DELETE FROM raw_jobs j
    USING unnest($1::bigint[], $2::bigint[]) AS d(id, token)
    WHERE j.id = d.id AND j.status = 'running' AND j.lease_token = d.token";

/// Completes the previous batch and claims the next in one statement: one round trip and
/// one commit per batch instead of two. $1 limit, $2 ids and $3 tokens to complete.
/// The last row carries the completed count (id -1).
const FUSED: &str = "
    WITH done AS (
        UPDATE raw_jobs j
        SET status = 'completed', completed_at = now(), lease_token = NULL, lease_expires_at = NULL
        FROM unnest($2::bigint[], $3::bigint[]) AS d(id, token)
        WHERE j.id = d.id AND j.status = 'running' AND j.lease_token = d.token
        RETURNING j.id
    ),
    c AS (
        SELECT id FROM raw_jobs
        WHERE status = 'pending' AND queue = 'default' AND run_at <= now()
        ORDER BY priority DESC, run_at, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ),
    claimed AS (
        UPDATE raw_jobs j
        SET status = 'running', attempt = j.attempt + 1,
            lease_token = (random() * 9e18)::bigint,
            lease_expires_at = now() + interval '30 seconds'
        WHERE j.id = ANY(ARRAY(SELECT id FROM c))
        RETURNING j.id, j.lease_token, j.payload
    )
    SELECT id, lease_token, payload FROM claimed
    UNION ALL
    SELECT -1, count(*), NULL FROM done";

/// Drains `cfg.jobs` pending rows with `loops` concurrent claim+complete loops
/// of `batch` rows each, in `shape`. Returns jobs/s.
pub async fn drain(cfg: &Config, batch: usize, loops: usize, shape: Shape) -> Result<f64, String> {
    let db = FreshDb::create(&cfg.database_url).await?;
    let pool = db.pool(loops as u32 + 1).await?;
    let result = run(cfg, &pool, batch, loops, shape).await;
    pool.close().await;
    db.drop_db().await?;
    result
}

async fn run(
    cfg: &Config,
    pool: &PgPool,
    batch: usize,
    loops: usize,
    shape: Shape,
) -> Result<f64, String> {
    let (schema, fill, analyze) = shape.tables();
    for stmt in schema {
        sqlx::query(AssertSqlSafe(stmt))
            .execute(pool)
            .await
            .map_err(sql)?;
    }
    for stmt in fill {
        sqlx::query(*stmt)
            .bind(cfg.jobs as i64)
            .execute(pool)
            .await
            .map_err(sql)?;
    }
    sqlx::query(analyze).execute(pool).await.map_err(sql)?;

    let statements = shape.statements();
    let t0 = Instant::now();
    let handles = (0..loops).map(|_| {
        let pool = pool.clone();
        let statements = statements.clone();
        tokio::spawn(async move {
            match statements {
                None => fused_loop(&pool, batch).await,
                Some((claim, complete)) => two_statement_loop(&pool, batch, claim, complete).await,
            }
        })
    });
    let mut total = 0;
    for h in handles.collect::<Vec<_>>() {
        total += h.await.map_err(|e| format!("raw loop panicked: {e}"))??;
    }
    let elapsed = t0.elapsed();
    if total != cfg.jobs {
        return Err(format!("raw sql completed {total} of {} jobs", cfg.jobs));
    }
    Ok(rate(cfg.jobs, elapsed))
}

fn sql(e: sqlx::Error) -> String {
    format!("raw sql: {e}")
}

/// Claim, then complete: two statements (`claim`, then `complete`), two commits per batch.
async fn two_statement_loop(
    pool: &PgPool,
    batch: usize,
    claim: Arc<str>,
    complete: Arc<str>,
) -> Result<usize, String> {
    let mut done = 0usize;
    loop {
        // Only the first three columns are read; the wide shapes return every column,
        // as the library's claim does, and the rest is decoded no further.
        let rows: Vec<(i64, i64, serde_json::Value)> = sqlx::query_as(AssertSqlSafe(claim.clone()))
            .bind(batch as i64)
            .fetch_all(pool)
            .await
            .map_err(sql)?;
        if rows.is_empty() {
            return Ok(done);
        }
        let (ids, tokens): (Vec<i64>, Vec<i64>) =
            rows.iter().map(|(id, tok, _)| (*id, *tok)).unzip();
        let r = sqlx::query(AssertSqlSafe(complete.clone()))
            .bind(&ids)
            .bind(&tokens)
            .execute(pool)
            .await
            .map_err(sql)?;
        done += r.rows_affected() as usize;
    }
}

/// Each statement completes the previous batch and claims the next.
async fn fused_loop(pool: &PgPool, batch: usize) -> Result<usize, String> {
    let mut done = 0usize;
    let (mut ids, mut tokens): (Vec<i64>, Vec<i64>) = (vec![], vec![]);
    loop {
        let rows: Vec<(i64, i64, Option<serde_json::Value>)> = sqlx::query_as(FUSED)
            .bind(batch as i64)
            .bind(&ids)
            .bind(&tokens)
            .fetch_all(pool)
            .await
            .map_err(sql)?;
        ids.clear();
        tokens.clear();
        for (id, tok, _) in rows {
            if id == -1 {
                done += tok as usize;
            } else {
                ids.push(id);
                tokens.push(tok);
            }
        }
        if ids.is_empty() {
            return Ok(done);
        }
    }
}

/// Bulk insert with no dedupe handling: one `INSERT ... SELECT FROM unnest(...)` per
/// batch, ids back in input order. The ceiling for a bulk enqueue on this server.
const INSERT: &str = "
    INSERT INTO raw_jobs (task, payload)
    SELECT t, p::jsonb FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(t, p, ord)
    ORDER BY ord
    RETURNING id";

/// Inserts `cfg.jobs` rows in batches of `cfg.batch`, one client, payload text built
/// before the clock starts. Returns jobs/s.
pub async fn enqueue(cfg: &Config) -> Result<f64, String> {
    let db = FreshDb::create(&cfg.database_url).await?;
    let pool = db.pool(2).await?;
    let result = async {
        for stmt in SCHEMA_SQL {
            sqlx::query(*stmt).execute(&pool).await.map_err(sql)?;
        }
        let batches: Vec<(Vec<String>, Vec<String>)> = (0..cfg.jobs)
            .step_by(cfg.batch)
            .map(|s| {
                (s..(s + cfg.batch).min(cfg.jobs))
                    .map(|i| ("noop".to_string(), crate::stats::payload(i).to_string()))
                    .unzip()
            })
            .collect();
        let t0 = Instant::now();
        let mut n = 0;
        for (tasks, payloads) in &batches {
            let ids: Vec<i64> = sqlx::query_scalar(INSERT)
                .bind(tasks)
                .bind(payloads)
                .fetch_all(&pool)
                .await
                .map_err(sql)?;
            n += ids.len();
        }
        let elapsed = t0.elapsed();
        if n != cfg.jobs {
            return Err(format!("raw sql inserted {n} of {} rows", cfg.jobs));
        }
        Ok(rate(cfg.jobs, elapsed))
    }
    .await;
    pool.close().await;
    db.drop_db().await?;
    result
}
