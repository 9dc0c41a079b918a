//! Embedded, versioned migrations, applied in the library's own schema.
//!
//! Applied versions are recorded in `<schema>.migrations` (never the application's
//! `_sqlx_migrations`). All pending migrations run in one transaction that first takes a
//! transaction-scoped advisory lock keyed on the schema, so concurrent `migrate()` calls
//! from many processes apply each migration exactly once.
//!
//! Migrating keeps no session state and its statements run unnamed, inside that
//! transaction, so it works through a connection pooler in transaction mode
//! (pgBouncer's `pool_mode = transaction`) as well as directly. (It runs rarely: parsing
//! its few statements each time costs nothing that matters.)

use crate::error::{db, db_context};
use crate::options::{channel, quote_ident, quote_literal};
use durable_jobs::{Error, Result};
use sqlx::{AssertSqlSafe, PgPool};

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version; applied in ascending order.
    pub version: i64,
    /// A short name.
    pub name: &'static str,
    /// The SQL, with `{schema}`, `{schema_lit}`, `{channel}` and `{graphile_schema}` (the
    /// graphile-compatible schema, see [`graphile_schema`]) placeholders.
    pub sql: &'static str,
}

/// Every migration this library knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs",
        sql: include_str!("../migrations/001_jobs.sql"),
    },
    Migration {
        version: 2,
        name: "sql_api",
        sql: include_str!("../migrations/002_sql_api.sql"),
    },
    Migration {
        version: 3,
        name: "workflows",
        sql: include_str!("../migrations/003_workflows.sql"),
    },
    Migration {
        version: 4,
        name: "operations",
        sql: include_str!("../migrations/004_operations.sql"),
    },
    Migration {
        version: 5,
        name: "observability",
        sql: include_str!("../migrations/005_observability.sql"),
    },
    Migration {
        version: 6,
        name: "timeline",
        sql: include_str!("../migrations/006_timeline.sql"),
    },
    Migration {
        version: 7,
        name: "sql_worker",
        sql: include_str!("../migrations/007_sql_worker.sql"),
    },
    Migration {
        version: 8,
        name: "graphile_compat",
        sql: include_str!("../migrations/008_graphile_compat.sql"),
    },
    Migration {
        version: 9,
        name: "retention_claims",
        sql: include_str!("../migrations/009_retention_claims.sql"),
    },
    Migration {
        version: 10,
        name: "results_progress",
        sql: include_str!("../migrations/010_results_progress.sql"),
    },
    Migration {
        version: 11,
        name: "metadata_key_limits",
        sql: include_str!("../migrations/011_metadata_key_limits.sql"),
    },
    Migration {
        version: 12,
        name: "add_job_metadata",
        sql: include_str!("../migrations/012_add_job_metadata.sql"),
    },
    Migration {
        version: 13,
        name: "parked_serial_jobs",
        sql: include_str!("../migrations/013_parked_serial_jobs.sql"),
    },
    Migration {
        version: 14,
        name: "serial_key_order",
        sql: include_str!("../migrations/014_serial_key_order.sql"),
    },
    Migration {
        version: 15,
        name: "sql_worker_claim_walk",
        sql: include_str!("../migrations/015_sql_worker_claim_walk.sql"),
    },
];

/// The newest schema version this library knows.
pub const LATEST_VERSION: i64 = 15;

/// The name of the schema migration 8 creates next to `schema` for graphile-worker's
/// SQL API: `schema` followed by `_graphile` (`durable_jobs_graphile` by default).
pub fn graphile_schema(schema: &str) -> String {
    format!("{schema}_graphile")
}

/// A migration's SQL for `schema` (validate the name first), as [`run`] executes it: for
/// review, or to apply by hand in a controlled rollout.
pub fn render(sql: &str, schema: &str) -> String {
    sql.replace("{graphile_schema}", &quote_ident(&graphile_schema(schema)))
        .replace("{schema_lit}", &quote_literal(schema))
        .replace("{schema}", &quote_ident(schema))
        .replace("{channel}", &quote_literal(&channel(schema)))
}

/// Creates or upgrades the schema; see the module docs.
pub async fn run(pool: &PgPool, schema: &str) -> Result<()> {
    let q = quote_ident(schema);
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .persistent(false)
        .bind(format!("durable_jobs.migrate:{schema}"))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.migrations (
             version    bigint PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    )))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let current = current_version(&mut tx, schema).await?;
    if current > LATEST_VERSION {
        return Err(Error::SchemaTooNew {
            found: current,
            supported: LATEST_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        sqlx::raw_sql(AssertSqlSafe(render(m.sql, schema)))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                db_context(
                    &format!("migration {} ({}) failed", m.version, m.name),
                    e,
                    "",
                )
            })?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {q}.migrations (version, name) VALUES ($1, $2)"
        )))
        .persistent(false)
        .bind(m.version)
        .bind(m.name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// The highest applied version in `schema`, 0 when none.
async fn current_version(conn: &mut sqlx::PgConnection, schema: &str) -> Result<i64> {
    let v: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {}.migrations",
        quote_ident(schema)
    )))
    .persistent(false)
    .fetch_one(conn)
    .await
    .map_err(db)?;
    Ok(v.unwrap_or(0))
}

/// The applied schema version, or 0 when the schema or its migrations table is missing.
/// (In a transaction, with unnamed statements, for the reason in the module docs.)
pub(crate) async fn version(pool: &PgPool, schema: &str) -> Result<i64> {
    let mut tx = pool.begin().await.map_err(db)?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .persistent(false)
        .bind(format!("{}.migrations", quote_ident(schema)))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let version = if exists {
        current_version(&mut tx, schema).await?
    } else {
        0
    };
    tx.commit().await.map_err(db)?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_latest_matches() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST_VERSION));
    }

    #[test]
    fn render_quotes_schema_everywhere() {
        let sql = render(MIGRATIONS[0].sql, "My_Schema");
        assert!(sql.contains("CREATE TABLE \"My_Schema\".jobs"));
        assert!(sql.contains("pg_notify('durable_jobs:My_Schema', '')"));
        assert!(!sql.contains("{schema"));
        let sql = render(MIGRATIONS[1].sql, "My_Schema");
        assert!(!sql.contains("{schema"));
        let sql = render(MIGRATIONS[7].sql, "My_Schema");
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS \"My_Schema_graphile\""));
        assert!(sql.contains("RETURNS \"My_Schema\".jobs"));
        assert!(!sql.contains("{schema") && !sql.contains("{graphile_schema"));
    }
}
