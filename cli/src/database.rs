//! Which database a URL names, and opening it: migrated on `migrate`, and only read
//! (never created, never migrated) for every other command.

use crate::error::CliError;
use durable_jobs::{Queue, Storage};
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use durable_jobs_sqlite::{SqliteOptions, SqliteStorage};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A database named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A PostgreSQL server and the schema holding the durable-jobs tables.
    Postgres {
        /// The connection URL as given.
        url: String,
        /// The schema.
        schema: String,
    },
    /// A SQLite file.
    Sqlite {
        /// The file's path.
        path: PathBuf,
    },
}

impl Target {
    /// Reads `--database` (or `DATABASE_URL`) and `--schema`.
    ///
    /// # Errors
    /// [`CliError::Usage`] for a missing or unsupported URL, or `--schema` with SQLite.
    pub fn parse(url: Option<&str>, schema: Option<&str>) -> Result<Self, CliError> {
        let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
            return Err(CliError::Usage(
                "no database given: pass --database URL or set DATABASE_URL \
                 (postgres://user@host:port/db or sqlite:PATH)"
                    .into(),
            ));
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let schema = schema.unwrap_or(durable_jobs_postgres::DEFAULT_SCHEMA);
            durable_jobs_postgres::options::validate_schema(schema)
                .map_err(|e| CliError::Usage(format!("--schema: {e}")))?;
            return Ok(Target::Postgres {
                url: url.to_string(),
                schema: schema.to_string(),
            });
        }
        if let Some(rest) = strip_prefix_ci(url, "sqlite:") {
            if schema.is_some() {
                return Err(CliError::Usage(
                    "--schema applies to PostgreSQL only; a SQLite file holds one set of tables"
                        .into(),
                ));
            }
            // `sqlite://PATH` and `sqlite:PATH` name the same file; `sqlite:///abs` is
            // the absolute path `/abs`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(CliError::Usage(format!(
                    "`{}` names no file: use sqlite:PATH, like sqlite:jobs.db or sqlite:///var/lib/app/jobs.db",
                    redact(url)
                )));
            }
            if path == ":memory:" || path.starts_with(":memory:") {
                return Err(CliError::Usage(
                    "an in-memory SQLite database starts empty in each process: name a file, like sqlite:jobs.db"
                        .into(),
                ));
            }
            return Ok(Target::Sqlite {
                path: PathBuf::from(path),
            });
        }
        Err(CliError::Usage(format!(
            "unsupported database URL `{}`: expected postgres://user@host:port/db \
             (or postgresql://) or sqlite:PATH",
            redact(url)
        )))
    }

    /// The database in words, for messages (the password is hidden).
    pub fn describe(&self) -> String {
        match self {
            Target::Postgres { url, schema } => {
                format!("PostgreSQL schema `{schema}` at {}", redact(url))
            }
            Target::Sqlite { path } => format!("SQLite database {}", path.display()),
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `url` with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let auth_start = scheme_end + 3;
    let rest = &url[auth_start..];
    let host_start = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..host_start].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..auth_start],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// An open database and a [`Queue`] over it with no handlers.
pub struct Db {
    /// The queue every command works through.
    pub queue: Queue,
    backend: Backend,
}

enum Backend {
    Postgres(PostgresStorage),
    Sqlite(SqliteStorage),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("queue", &self.queue).finish()
    }
}

impl Db {
    /// Finishes queued writes and closes connections (SQLite checkpoints its WAL).
    pub async fn close(self) {
        match self.backend {
            Backend::Postgres(s) => s.pool().close().await,
            Backend::Sqlite(s) => s.close().await,
        }
    }

    /// The storage under the queue, for calls `Queue` has no wrapper for.
    pub fn storage(&self) -> &dyn Storage {
        self.queue.storage()
    }
}

/// What `migrate` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateReport {
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// The database in words.
    pub database: String,
    /// The schema version before.
    pub from_version: i64,
    /// The schema version now.
    pub to_version: i64,
}

/// Creates or upgrades the durable-jobs tables (creating the SQLite file if missing).
///
/// # Errors
/// [`CliError`] for an unreachable database, a bad URL or a failed migration.
pub async fn migrate(target: &Target, timeout: Duration) -> Result<MigrateReport, CliError> {
    match target {
        Target::Postgres { .. } => {
            let storage = connect_postgres(target, timeout).await?;
            let result = async {
                let from_version = storage.schema_version().await?;
                storage.migrate().await?;
                let to_version = storage.schema_version().await?;
                Ok::<_, durable_jobs::Error>((from_version, to_version))
            }
            .await;
            storage.pool().close().await;
            let (from_version, to_version) = result?;
            Ok(MigrateReport {
                backend: "postgres",
                database: target.describe(),
                from_version,
                to_version,
            })
        }
        Target::Sqlite { path } => {
            let from_version = if path.exists() {
                sqlite_version(path)?
            } else {
                0
            };
            if from_version > durable_jobs_sqlite::SCHEMA_VERSION {
                return Err(too_new(
                    target,
                    from_version,
                    durable_jobs_sqlite::SCHEMA_VERSION,
                ));
            }
            // Opening creates the file and applies every missing migration.
            let storage = SqliteStorage::open_with(path, sqlite_options())
                .await
                .map_err(|e| sqlite_error(path, e))?;
            let to_version = storage.schema_version().await;
            storage.close().await;
            Ok(MigrateReport {
                backend: "sqlite",
                database: target.describe(),
                from_version,
                to_version: to_version?,
            })
        }
    }
}

/// Opens a database that was migrated to this CLI's schema version, without creating or
/// migrating anything.
///
/// # Errors
/// [`CliError::NotMigrated`] for a database that needs `migrate`, [`CliError::NotFound`]
/// for a missing SQLite file, [`CliError::Usage`] for a malformed URL, and
/// [`CliError::Failed`] for an unreachable server.
pub async fn open_existing(target: &Target, timeout: Duration) -> Result<Db, CliError> {
    match target {
        Target::Postgres { .. } => {
            let storage = connect_postgres(target, timeout).await?;
            let version = match storage.schema_version().await {
                Ok(v) => v,
                Err(e) => {
                    storage.pool().close().await;
                    return Err(e.into());
                }
            };
            let latest = durable_jobs_postgres::LATEST_VERSION;
            if let Err(e) = check_version(target, version, latest) {
                storage.pool().close().await;
                return Err(e);
            }
            Ok(Db {
                queue: Queue::new(Arc::new(storage.clone())),
                backend: Backend::Postgres(storage),
            })
        }
        Target::Sqlite { path } => {
            if !path.exists() {
                return Err(CliError::NotFound(format!(
                    "no SQLite database at {}: check the path, or create one with `durable-jobs migrate`",
                    path.display()
                )));
            }
            let version = sqlite_version(path)?;
            check_version(target, version, durable_jobs_sqlite::SCHEMA_VERSION)?;
            let storage = SqliteStorage::open_with(path, sqlite_options())
                .await
                .map_err(|e| sqlite_error(path, e))?;
            Ok(Db {
                queue: Queue::new(Arc::new(storage.clone())),
                backend: Backend::Sqlite(storage),
            })
        }
    }
}

fn check_version(target: &Target, version: i64, latest: i64) -> Result<(), CliError> {
    if version == 0 {
        Err(CliError::not_migrated(&format!(
            "{} has no durable-jobs tables (never migrated)",
            target.describe()
        )))
    } else if version < latest {
        Err(CliError::not_migrated(&format!(
            "{} is at schema version {version}, this CLI needs version {latest}",
            target.describe()
        )))
    } else if version > latest {
        Err(too_new(target, version, latest))
    } else {
        Ok(())
    }
}

fn too_new(target: &Target, version: i64, latest: i64) -> CliError {
    CliError::Failed(format!(
        "{} is at schema version {version}, newer than this CLI's {latest}: upgrade durable-jobs-cli",
        target.describe()
    ))
}

fn postgres_options(schema: &str, timeout: Duration) -> PostgresOptions {
    // A CLI makes a few calls one after another: one connection is enough, and no LISTEN
    // connection (nothing here waits for wake-ups).
    PostgresOptions::new()
        .schema(schema)
        .max_connections(2)
        .listen(false)
        .acquire_timeout(timeout)
}

async fn connect_postgres(target: &Target, timeout: Duration) -> Result<PostgresStorage, CliError> {
    let Target::Postgres { url, schema } = target else {
        return Err(CliError::Failed("not a PostgreSQL target".into()));
    };
    let connect = PostgresStorage::connect_with(url, postgres_options(schema, timeout));
    // The pool gives up after `timeout` too; this bound also covers a server that accepts
    // the connection and then never answers.
    match tokio::time::timeout(timeout + Duration::from_secs(1), connect).await {
        Ok(Ok(storage)) => Ok(storage),
        Ok(Err(durable_jobs::Error::InvalidOption {
            option: "url",
            message,
        })) => Err(CliError::Usage(format!(
            "malformed PostgreSQL URL `{}`: {message}",
            redact(url)
        ))),
        Ok(Err(e)) if e.is_transient() => Err(unreachable(url, timeout, Some(&e))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(unreachable(url, timeout, None)),
    }
}

/// The one line for a server that could not be reached in `timeout`.
fn unreachable(url: &str, timeout: Duration, error: Option<&durable_jobs::Error>) -> CliError {
    // The pool's own timeout message gives library advice (pool sizes); the driver's
    // other messages (a refused or reset connection, an unknown host) say what happened.
    let why = error
        .map(storage_message)
        .filter(|m| !m.contains("timed out waiting for a PostgreSQL connection"))
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    CliError::Failed(format!(
        "cannot reach PostgreSQL at {} within {}{why}: is the server running and the URL \
         right? (wait longer with --connect-timeout)",
        redact(url),
        crate::duration::format_duration(timeout)
    ))
}

fn storage_message(e: &durable_jobs::Error) -> String {
    match e {
        durable_jobs::Error::Storage(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

fn sqlite_options() -> SqliteOptions {
    // No file watcher (nothing waits for other processes' commits) and one reader.
    SqliteOptions::new()
        .watch_interval(None)
        .read_connections(1)
}

fn sqlite_error(path: &Path, e: durable_jobs::Error) -> CliError {
    match e {
        durable_jobs::Error::Storage(s) => CliError::Failed(format!(
            "cannot open SQLite database {}: {}",
            path.display(),
            s.message()
        )),
        other => other.into(),
    }
}

/// The schema version recorded in a SQLite file, read without writing to it: 0 when
/// durable-jobs never migrated it.
fn sqlite_version(path: &Path) -> Result<i64, CliError> {
    use rusqlite::{Connection, OpenFlags, OptionalExtension};
    if path.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is a directory: name the SQLite file, like sqlite:{}/jobs.db",
            path.display(),
            path.display()
        )));
    }
    let fail = |e: rusqlite::Error| {
        let why = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => "it is not a SQLite database".to_string(),
            _ => e.to_string(),
        };
        CliError::Failed(format!("cannot read {}: {why}", path.display()))
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
    let has_table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'durable_jobs_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(fail)?;
    if has_table.is_none() {
        return Ok(0);
    }
    conn.query_row(
        "SELECT coalesce(max(version), 0) FROM durable_jobs_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            Target::parse(Some("sqlite:jobs.db"), None).unwrap(),
            Target::Sqlite {
                path: "jobs.db".into()
            }
        );
        assert_eq!(
            Target::parse(Some("sqlite://jobs.db"), None).unwrap(),
            Target::Sqlite {
                path: "jobs.db".into()
            }
        );
        assert_eq!(
            Target::parse(Some("sqlite:///var/jobs.db"), None).unwrap(),
            Target::Sqlite {
                path: "/var/jobs.db".into()
            }
        );
        assert_eq!(
            Target::parse(Some("postgres://u@h/db"), Some("jobs")).unwrap(),
            Target::Postgres {
                url: "postgres://u@h/db".into(),
                schema: "jobs".into()
            }
        );
        assert!(matches!(
            Target::parse(Some("postgresql://u@h/db"), None).unwrap(),
            Target::Postgres { schema, .. } if schema == "durable_jobs"
        ));
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        for (url, schema) in [
            (None, None),
            (Some(""), None),
            (Some("mysql://h/db"), None),
            (Some("jobs.db"), None),
            (Some("sqlite:"), None),
            (Some("sqlite::memory:"), None),
            (Some("sqlite:jobs.db"), Some("s")),
            (Some("postgres://h/db"), Some("bad-schema")),
        ] {
            assert!(
                matches!(Target::parse(url, schema), Err(CliError::Usage(_))),
                "{url:?} {schema:?}"
            );
        }
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://user:secret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(redact("postgres://user@host/db"), "postgres://user@host/db");
        assert_eq!(redact("sqlite:jobs.db"), "sqlite:jobs.db");
        let err = Target::parse(Some("mysql://root:hunter2@h/db"), None).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
