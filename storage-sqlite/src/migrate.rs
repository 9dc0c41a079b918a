//! Embedded, versioned schema migrations.
//!
//! Applied versions are recorded in `durable_jobs_migrations`. Migrating runs inside one
//! `BEGIN IMMEDIATE` transaction (taken by the writer thread), so two processes opening
//! the same file at once apply each migration exactly once: the second waits for the
//! first's write lock and then finds nothing left to do.

use crate::error::{storage, storage_in};
use durable_jobs::{Error, Result};
use rusqlite::{Connection, OptionalExtension};

/// The newest schema version this library knows. A file at a higher version is refused
/// with [`Error::SchemaTooNew`].
pub const SCHEMA_VERSION: i64 = 11;

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs",
        sql: include_str!("../migrations/0001_jobs.sql"),
    },
    Migration {
        version: 2,
        name: "checkpoints",
        sql: include_str!("../migrations/0002_checkpoints.sql"),
    },
    Migration {
        version: 3,
        name: "workflows",
        sql: include_str!("../migrations/0003_workflows.sql"),
    },
    Migration {
        version: 4,
        name: "operations",
        sql: include_str!("../migrations/0004_operations.sql"),
    },
    Migration {
        version: 5,
        name: "observability",
        sql: include_str!("../migrations/0005_observability.sql"),
    },
    Migration {
        version: 6,
        name: "timeline",
        sql: include_str!("../migrations/0006_timeline.sql"),
    },
    Migration {
        version: 7,
        name: "retention_claims",
        sql: include_str!("../migrations/0007_retention_claims.sql"),
    },
    Migration {
        version: 8,
        name: "results_progress",
        sql: include_str!("../migrations/0008_results_progress.sql"),
    },
    Migration {
        version: 9,
        name: "metadata_key_limits",
        sql: include_str!("../migrations/0009_metadata_key_limits.sql"),
    },
    Migration {
        version: 10,
        name: "partial_index_terms",
        sql: include_str!("../migrations/0010_partial_index_terms.sql"),
    },
    Migration {
        version: 11,
        name: "parked_serial_jobs",
        sql: include_str!("../migrations/0011_parked_serial_jobs.sql"),
    },
];

const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS durable_jobs_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
)";

/// The file's schema version: 0 for a file durable-jobs never touched.
pub(crate) fn current_version(conn: &Connection) -> Result<i64> {
    let has_table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'durable_jobs_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)?;
    if has_table.is_none() {
        return Ok(0);
    }
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM durable_jobs_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(storage)
}

/// Applies every missing migration. Must run inside a write transaction.
///
/// # Errors
/// [`Error::SchemaTooNew`] when the file was written by a newer library;
/// [`Error::Storage`] when SQL fails (nothing is applied then: the caller rolls back).
pub(crate) fn migrate(conn: &Connection, now_micros: i64) -> Result<()> {
    let found = current_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch(CREATE_VERSION_TABLE).map_err(storage)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        conn.execute_batch(m.sql).map_err(|e| {
            storage_in(
                format_args!("sqlite migration {} ({}) failed", m.version, m.name),
                e,
            )
        })?;
        conn.execute(
            "INSERT INTO durable_jobs_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.version, m.name, now_micros],
        )
        .map_err(storage)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied sqlite migration"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "migration {} out of order", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
