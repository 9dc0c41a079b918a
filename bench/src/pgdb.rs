//! A fresh Postgres database per scenario, so runs do not see each other's bloat.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A database created for one scenario and dropped by [`FreshDb::drop_db`].
pub struct FreshDb {
    admin: PgPool,
    pub name: String,
    /// A URL for the fresh database (for backends that connect by URL).
    pub url: String,
    pub options: PgConnectOptions,
}

impl FreshDb {
    /// Creates `bench_<pid>_<seq>` on the server `admin_url` points at.
    pub async fn create(admin_url: &str) -> Result<FreshDb, String> {
        let admin_opts =
            PgConnectOptions::from_str(admin_url).map_err(|e| format!("bad database url: {e}"))?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin_opts.clone())
            .await
            .map_err(|e| format!("cannot connect to {admin_url}: {e}"))?;
        let name = format!(
            "bench_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        Ok(FreshDb {
            admin,
            url: url_with_database(admin_url, &name),
            options: admin_opts.database(&name),
            name,
        })
    }

    /// A pool on the fresh database.
    pub async fn pool(&self, max_connections: u32) -> Result<PgPool, String> {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options.clone())
            .await
            .map_err(|e| format!("connect to {}: {e}", self.name))
    }

    /// Drops the database, disconnecting whoever is still connected.
    pub async fn drop_db(self) -> Result<(), String> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await
        .map(|_| ())
        .map_err(|e| format!("DROP DATABASE {}: {e}", self.name));
        self.admin.close().await;
        r
    }
}

/// `url` with its database path replaced by `db` (query string kept).
pub fn url_with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            url_with_database("postgres://u@h?sslmode=disable", "b"),
            "postgres://u@h/b?sslmode=disable"
        );
    }
}
