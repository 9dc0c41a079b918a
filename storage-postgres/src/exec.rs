//! Where the storage's statements run, and how: straight on the pool, or shaped for a
//! connection pooler in transaction mode (pgBouncer's `pool_mode = transaction`,
//! [`crate::PostgresOptions::pgbouncer_transaction_mode`]).
//!
//! sqlx runs a statement with parameters as two exchanges with the server: Parse and
//! Describe, then Sync; then Bind and Execute, then Sync. Outside a transaction a
//! transaction-mode pooler may hand the second exchange to another server connection
//! than the first: one that never saw the Parse (`prepared statement ... does not
//! exist`), or one holding another client's unnamed statement. And the statements sqlx
//! caches are named per client connection (`sqlx_s_1`, ...), so two clients that meet
//! on one server connection collide on those names, and a cached name is missing on the
//! next server connection. Disabling the cache does not help: sqlx then names every
//! execution afresh and never closes it. So in pooler mode every statement runs
//! unnamed (`persistent(false)`: parsed each time, nothing left on the server) inside a
//! transaction, which keeps one server connection from BEGIN to COMMIT.

use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};

use sqlx::{FromRow, PgConnection, PgPool, Postgres};
use std::future::Future;
use std::pin::Pin;

type Fut<'c, T> = Pin<Box<dyn Future<Output = sqlx::Result<T>> + Send + 'c>>;

/// Where a statement runs.
#[derive(Debug)]
pub(crate) enum Db<'a> {
    /// On a pool connection; with `pooler`, inside a transaction of its own.
    Pool { pool: &'a PgPool, pooler: bool },
    /// On a connection in a transaction (ours or the caller's); with `pooler`, unnamed.
    Conn {
        conn: &'a mut PgConnection,
        pooler: bool,
    },
}

impl Db<'_> {
    /// The same place for one more statement.
    pub(crate) fn re(&mut self) -> Db<'_> {
        match self {
            Db::Pool { pool, pooler } => Db::Pool {
                pool,
                pooler: *pooler,
            },
            Db::Conn { conn, pooler } => Db::Conn {
                conn,
                pooler: *pooler,
            },
        }
    }
}

/// Runs `$q.$op(connection)` where `$db` says (see the module docs).
macro_rules! on_db {
    ($db:expr, $q:expr, $op:ident) => {
        match $db {
            Db::Pool {
                pool,
                pooler: false,
            } => {
                let mut conn = pool.acquire().await?;
                $q.$op(&mut conn).await
            }
            Db::Pool { pool, pooler: true } => {
                let mut tx = crate::jit::begin(pool, true).await?;
                let out = $q.unnamed().$op(&mut tx).await?;
                tx.commit().await?;
                Ok(out)
            }
            Db::Conn {
                conn,
                pooler: false,
            } => $q.$op(conn).await,
            Db::Conn { conn, pooler: true } => $q.unnamed().$op(conn).await,
        }
    };
}

/// A statement that returns rows, run on a [`Db`].
pub(crate) trait Fetch: Sized + Send {
    /// What one row decodes to.
    type Out: Send;

    /// The statement, parsed without a name each time it runs.
    fn unnamed(self) -> Self;

    /// sqlx's `fetch_all` on one connection.
    fn all<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, Vec<Self::Out>>
    where
        Self: 'c;

    /// sqlx's `fetch_one` on one connection.
    fn one<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, Self::Out>
    where
        Self: 'c;

    /// sqlx's `fetch_optional` on one connection.
    fn optional<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, Option<Self::Out>>
    where
        Self: 'c;

    /// Every row.
    fn fetch_all_on<'a>(
        self,
        db: Db<'a>,
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Out>>> + Send + 'a
    where
        Self: 'a,
    {
        async move { on_db!(db, self, all) }
    }

    /// Exactly one row (`RowNotFound` otherwise).
    fn fetch_one_on<'a>(
        self,
        db: Db<'a>,
    ) -> impl Future<Output = sqlx::Result<Self::Out>> + Send + 'a
    where
        Self: 'a,
    {
        async move { on_db!(db, self, one) }
    }

    /// At most one row.
    fn fetch_optional_on<'a>(
        self,
        db: Db<'a>,
    ) -> impl Future<Output = sqlx::Result<Option<Self::Out>>> + Send + 'a
    where
        Self: 'a,
    {
        async move { on_db!(db, self, optional) }
    }
}

/// A statement run for its effect, on a [`Db`].
pub(crate) trait Exec: Fetch {
    /// sqlx's `execute` on one connection.
    fn run<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, PgQueryResult>
    where
        Self: 'c;

    /// Runs it; the result counts the rows it affected.
    fn execute_on<'a>(
        self,
        db: Db<'a>,
    ) -> impl Future<Output = sqlx::Result<PgQueryResult>> + Send + 'a
    where
        Self: 'a,
    {
        async move { on_db!(db, self, run) }
    }
}

/// Implements [`Fetch`] for one of sqlx's query types: the three differ only in what a
/// row decodes to, and each already has the `fetch_*` methods with those names.
macro_rules! fetch_impl {
    ($($gen:ident),* ; $ty:ty, $out:ty $(, where $($bound:tt)+)?) => {
        impl<'q, $($gen),*> Fetch for $ty $(where $($bound)+)? {
            type Out = $out;

            fn unnamed(self) -> Self {
                self.persistent(false)
            }

            fn all<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, Vec<$out>>
            where
                Self: 'c,
            {
                Box::pin(self.fetch_all(conn))
            }

            fn one<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, $out>
            where
                Self: 'c,
            {
                Box::pin(self.fetch_one(conn))
            }

            fn optional<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, Option<$out>>
            where
                Self: 'c,
            {
                Box::pin(self.fetch_optional(conn))
            }
        }
    };
}

fetch_impl!(; Query<'q, Postgres, PgArguments>, PgRow);
fetch_impl!(O; QueryScalar<'q, Postgres, O, PgArguments>, O,
    where O: Send + Unpin, (O,): Send + Unpin + for<'r> FromRow<'r, PgRow>);
fetch_impl!(O; QueryAs<'q, Postgres, O, PgArguments>, O,
    where O: Send + Unpin + for<'r> FromRow<'r, PgRow>);

impl<'q> Exec for Query<'q, Postgres, PgArguments> {
    fn run<'c>(self, conn: &'c mut PgConnection) -> Fut<'c, PgQueryResult>
    where
        Self: 'c,
    {
        Box::pin(self.execute(conn))
    }
}
