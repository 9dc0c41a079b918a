//! The storage's statements run with PostgreSQL's JIT compilation off.
//!
//! PostgreSQL decides to JIT-compile a statement from its plan's estimated cost alone
//! (`jit_above_cost`, 100,000 by default; inlining and optimization above 500,000). The
//! claim's estimate grows with the table even though it reads one short index range: its
//! limit is an expression the planner cannot evaluate (so it assumes a tenth of the
//! rows), and the `run_at <= now()` bound is estimated from the whole table's statistics,
//! where retained finished jobs (all due in the past) dominate. Beside 1M pending jobs due
//! tomorrow, 100k parked workflows and 1M retained completed jobs the claim was estimated
//! at 7.5M, and LLVM spent about 0.9 s compiling, inlining and optimizing it for each
//! call, while the claim itself ran in under 1 ms. Every statement of this crate reads or
//! writes a bounded number of rows through an index, so none gains from JIT.
//!
//! Where it is turned off:
//! - connections the storage opens itself ([`crate::PostgresStorage::connect_with`]):
//!   the `jit=off` startup option, so every statement on them, at no round trip;
//! - behind a transaction-mode pooler, which refuses startup options it does not track:
//!   every transaction the storage opens starts with `SET LOCAL jit = off`, sent in the
//!   same message as its `BEGIN` (statements there each run in a transaction of their
//!   own, see [`crate::exec`]);
//! - a pool the application passes in ([`crate::PostgresStorage::from_pool`]) is left as
//!   the application configured it: set `jit = off` on its connect options (see
//!   [`JIT_OFF`]) or for the database role.

use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres, Transaction};

/// The startup option that turns JIT off for a connection's session, for
/// `PgConnectOptions::options`.
pub const JIT_OFF: (&str, &str) = ("jit", "off");

/// Opens a transaction behind a pooler: `BEGIN` and `SET LOCAL jit = off` in one simple
/// query, so the setting costs no round trip and ends with the transaction.
const BEGIN_JIT_OFF: &str = "BEGIN; SET LOCAL jit = off";

/// `options` with JIT off for every session they open, unless the connections go through
/// a transaction-mode pooler (which would refuse the option).
pub(crate) fn connect_options(options: PgConnectOptions, pooler: bool) -> PgConnectOptions {
    if pooler {
        options
    } else {
        options.options([JIT_OFF])
    }
}

/// Begins a transaction on `pool`; behind a pooler, with JIT off for it.
pub(crate) async fn begin(
    pool: &PgPool,
    pooler: bool,
) -> sqlx::Result<Transaction<'static, Postgres>> {
    if pooler {
        pool.begin_with(BEGIN_JIT_OFF).await
    } else {
        pool.begin().await
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use crate::exec::Fetch;
    use crate::testing::{PgBouncerHarness, TestSchema};
    use crate::PostgresStorage;
    use sqlx::postgres::PgConnectOptions;
    use sqlx::Connection;
    use std::str::FromStr;

    const JIT_SETTING: &str = "SELECT current_setting('jit')";

    /// The JIT setting a statement of the storage's sees, autocommitted and inside a
    /// transaction of the storage's own.
    async fn seen_by(storage: &PostgresStorage) -> (String, String) {
        let alone: String = sqlx::query_scalar(JIT_SETTING)
            .fetch_one_on(storage.db())
            .await
            .expect("autocommitted");
        let mut tx = storage.begin().await.expect("begin");
        let in_tx: String = sqlx::query_scalar(JIT_SETTING)
            .fetch_one_on(storage.on(&mut tx))
            .await
            .expect("in a transaction");
        tx.commit().await.expect("commit");
        (alone, in_tx)
    }

    /// The server's own setting, on a connection opened without the startup option: the
    /// test shows something only where JIT is on by default (PostgreSQL's default).
    async fn server_default(url: &str) -> String {
        let mut conn =
            sqlx::PgConnection::connect_with(&PgConnectOptions::from_str(url).expect("url"))
                .await
                .expect("connect");
        sqlx::query_scalar(JIT_SETTING)
            .fetch_one(&mut conn)
            .await
            .expect("default")
    }

    #[tokio::test]
    async fn the_storage_s_connections_run_without_jit() {
        let t = TestSchema::new().await.expect("schema");
        assert_eq!(server_default(t.url()).await, "on", "the server's default");
        assert_eq!(
            seen_by(t.storage()).await,
            ("off".to_string(), "off".to_string())
        );
        t.drop_schema().await.expect("drop");
    }

    /// Behind a real pgBouncer in transaction mode, which refuses a `jit` startup option:
    /// each statement's transaction and each transaction of the storage's turn it off.
    #[tokio::test]
    async fn behind_a_pooler_every_transaction_runs_without_jit() {
        let h = PgBouncerHarness::new().await.expect("pgbouncer");
        assert_eq!(
            server_default(h.direct().url()).await,
            "on",
            "the server's default"
        );
        assert_eq!(
            seen_by(h.storage()).await,
            ("off".to_string(), "off".to_string())
        );
        durable_jobs::testing::ConformanceHarness::teardown(h).await;
    }
}
