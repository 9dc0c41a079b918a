//! PostgreSQL storage for durable-jobs.
//!
//! Many worker processes on many machines share one schema safely:
//!
//! - **Claims**: one statement claims a batch (`FOR UPDATE SKIP LOCKED` over a partial
//!   index of claimable jobs, in priority, run_at, id order) and leases every claimed job.
//! - **Fencing**: every lease write (`complete`, `fail`, `release`, `heartbeat`,
//!   checkpoints) carries `WHERE id = $1 AND status = 'running' AND lease_token = $2`; a
//!   stale holder gets [`durable_jobs::Error::LeaseLost`] and changes nothing.
//! - **Bulk writes**: a batch of plain jobs (no job key, flags or tags) is one
//!   `INSERT ... SELECT FROM unnest(...)`, unpacking a single payload array when the jobs
//!   differ only in payload; keyed batches take a longer statement that resolves keys in
//!   order. `complete_many` completes a batch in one statement, each row fenced by its own
//!   token, planned by primary key whatever the statistics say.
//! - **Commits**: a claim commits without waiting for its WAL flush (`synchronous_commit`
//!   off for that one transaction). A claim lost in a server crash leaves its jobs as an
//!   expired lease would (they run again; the lost lease's holder gets `LeaseLost`).
//!   Enqueues, completions, failures and checkpoints wait for the flush as usual, and a
//!   durable completion or checkpoint implies a durable claim (WAL is flushed in order).
//! - **Time** comes from the database clock (`now()`), never the client's.
//! - **Wake-ups**: inserting jobs fires one `NOTIFY` per statement; a LISTEN connection
//!   wakes idle workers in every process ([`durable_jobs::Storage::wakeups`]). Polling
//!   stays the fallback.
//! - **Finished jobs stay** queryable (status, result, last error) until you delete them.
//!   Listings (`list_jobs`, `counts`) are built with sea-query, the builder the SQLite
//!   backend uses too, with every filter value bound; a tag filter uses the GIN tag index.
//! - **Workflows**: suspended jobs wait as `waiting` rows with their wake time as
//!   `run_at`; signals are rows consumed exactly once with their checkpoint; a child's
//!   final write wakes its parent in the same transaction (a trigger); cancelling a job
//!   cancels its unfinished descendants.
//! - **Operations**: job-key modes (dedupe, replace, preserve_run_at) through
//!   `INSERT ... ON CONFLICT`; serial keys through `serial_slots` rows numbered 1 to the
//!   key's limit (`key_limits`, 1 by default; taken inside the claim, freed by a trigger
//!   when the job stops running); due jobs of a key with no free slot are parked out of
//!   the claim index by the first claim that meets them, and the key's next ones come
//!   back in the transaction that gives it room, so claims do not walk a busy key's
//!   backlog (migration 13); rate limits per queue through a window row in
//!   `queue_rate_limits` that the single-queue claim locks, reads and counts into; flags,
//!   tags, paused queues, schedules (the cursor moves by compare-and-set) and the
//!   management calls.
//! - **Observability**: each job stores the enqueuing span's trace context (a nullable
//!   column written by every insert and read with the job, claims included); workers
//!   register in a `workers` table, renewed on the database clock. A lease sweep returns
//!   the jobs it released and wakes listeners once when it released any.
//! - **Timeline**: every job read (claims included) carries its parent, tags, flags and
//!   serial key. Each ended attempt (number, worker, start, end, outcome, error) is
//!   appended to an array of a composite type (`<schema>.attempt`) on the job row by
//!   the very statement that ends it (complete, batch complete, fail, release, suspend,
//!   lease sweep, cancel), never by an extra statement or on the claim; it goes with the
//!   row on delete and purge, and only `list_attempts` reads it. Checkpoints record their write time. Finished jobs
//!   are indexed by end time (a partial index) for `finished_counts` and the purge.
//! - **Errors** carry a [`durable_jobs::StorageErrorKind`] read from the sqlx error and its
//!   SQLSTATE, with the sqlx error as the source: connection failures, pool timeouts and a
//!   server shutting down are `Unavailable`; serialization failures, deadlocks and lock
//!   timeouts `Busy`; insufficient resources (class 53) `Exhausted`; integrity violations
//!   (class 23) `Constraint`; values that do not decode `Corrupt`; a missing table,
//!   function, column or schema `Schema` (call `migrate()`); anything else `Other`.
//!
//! # Connecting and migrating
//! ```no_run
//! # async fn example() -> durable_jobs::Result<()> {
//! use durable_jobs::Storage;
//! use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
//! let storage = PostgresStorage::connect_with(
//!     "postgres://postgres@127.0.0.1:5432/app",
//!     PostgresOptions::new().schema("durable_jobs").max_connections(10),
//! )
//! .await?;
//! storage.migrate().await?; // safe to run on every start, from every process
//! # Ok(()) }
//! ```
//! Or share the application's pool: `PostgresStorage::from_pool(pool)`.
//!
//! Migrations are embedded and versioned in the library's own schema (default
//! `durable_jobs`, table `<schema>.migrations`; the application's `_sqlx_migrations` is
//! never touched). Concurrent `migrate()` calls serialize on an advisory lock. A schema
//! migrated by a newer library version is refused with
//! [`durable_jobs::Error::SchemaTooNew`].
//!
//! # Enqueue in your own transaction
//! [`PostgresStorage::enqueue_in_tx`] inserts the job with your business write, so the job
//! exists only if that transaction commits:
//! ```no_run
//! # async fn example(storage: durable_jobs_postgres::PostgresStorage) -> Result<(), Box<dyn std::error::Error>> {
//! let mut tx = storage.pool().begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
//! storage
//!     .enqueue_in_tx(&mut tx, durable_jobs::NewJob::new("ship_order", serde_json::json!({"order": 42})))
//!     .await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # SQL API
//! Jobs can be added from SQL, functions and triggers (replace `durable_jobs` by your
//! schema). `add_job` takes graphile-worker's arguments, in the same order:
//! ```sql
//! SELECT * FROM durable_jobs.add_job(
//!     identifier   => 'send_email',              -- task name (required)
//!     payload      => '{"to": "a@b.c"}'::json,   -- default {}
//!     queue_name   => 'emails',                  -- default 'default'
//!     run_at       => now() + interval '5 min',  -- default now()
//!     max_attempts => 5,                         -- default 4 (3 retries)
//!     job_key      => 'welcome:a@b.c',           -- dedupe key
//!     priority     => 10,                        -- higher runs first; default 0
//!     metadata     => '{"tenant": "acme"}'       -- a JSON object (`Job::metadata`); default {}
//! );
//! ```
//! It returns the job row. `metadata` follows the Rust API's rules (an object of at most
//! 64 KiB with non-empty keys; SQLSTATE `22023` otherwise); it came with schema
//! version 12, and earlier calls keep their meaning. Unlike graphile-worker (whose default `job_key_mode` replaces
//! the existing job), a `job_key` held by an unfinished job returns that job unchanged,
//! the same dedupe rule as the Rust API.
//!
//! A trigger can enqueue one job per changed row. Attach it with a helper:
//! ```sql
//! -- payload_mode: 'id' => {"id": ...}, 'row' => the whole row, 'fields' => chosen columns
//! SELECT durable_jobs.attach_job_trigger('public.users', 'welcome_email');
//! SELECT durable_jobs.attach_job_trigger('public.orders', 'ship_order',
//!     payload_mode => 'fields', fields => ARRAY['id', 'customer_id'],
//!     events => ARRAY['INSERT', 'UPDATE'], trigger_name => 'orders_ship');
//! ```
//! or by hand: `CREATE TRIGGER t AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION
//! durable_jobs.job_trigger('welcome_email', 'id');`. Payloads are built with `to_jsonb`,
//! and the helper quotes every identifier and value with `format('%I' / '%L')`; no SQL is
//! built from row data.
//!
//! Signals can be sent from SQL too; it returns the job's status (NULL when there is no
//! such job; a finished job gets no signal):
//! ```sql
//! SELECT durable_jobs.send_signal(42, 'shipped', '{"tracking": "XY123"}'::jsonb);
//! ```
//!
//! # graphile-worker's SQL API
//! Migration 8 installs graphile-worker's SQL functions, with graphile's signatures and
//! semantics, in a schema of their own next to the library's: the schema name followed
//! by `_graphile` (`durable_jobs_graphile` by default; [`migrate::graphile_schema`]).
//! Callers opt in by replacing `graphile_worker.` with it (or by putting it on their
//! `search_path`). It is a separate schema because graphile's `add_job` has two more
//! defaulted arguments than `durable_jobs.add_job`: an overload beside it would make
//! existing short calls ambiguous, and changing it would change what existing callers'
//! `queue_name`, `max_attempts` and `job_key` mean. The native functions above keep their
//! own semantics.
//! ```sql
//! SELECT * FROM durable_jobs_graphile.add_job('generate_report', '{"id": 7}',
//!     queue_name => 'reports', job_key => 'report:7', job_key_mode => 'preserve_run_at',
//!     run_at => now() + interval '5 min', priority => 1, flags => ARRAY['slow']);
//! SELECT * FROM durable_jobs_graphile.add_jobs(ARRAY[
//!     ('a', '{}', NULL, NULL, NULL, NULL, NULL, NULL)::durable_jobs_graphile.job_spec]);
//! SELECT durable_jobs_graphile.remove_job('report:7');
//! SELECT * FROM durable_jobs_graphile.complete_jobs(ARRAY[1, 2]);
//! SELECT * FROM durable_jobs_graphile.permanently_fail_jobs(ARRAY[3], 'bad data');
//! SELECT * FROM durable_jobs_graphile.reschedule_jobs(ARRAY[4], run_at => now(),
//!     priority => 0, attempts => 0, max_attempts => 25);
//! ```
//! They return rows of `durable_jobs.jobs`. As in graphile:
//! - `queue_name` serializes: it becomes the job's serial key (one running job per name
//!   across all workers); the job stays on the routing queue `default`, so any worker
//!   serving `default` runs it.
//! - `max_attempts` defaults to 25; `priority` runs smaller numbers first (stored
//!   negated, since larger runs first here).
//! - `job_key_mode`: `replace` (the default) updates the waiting job holding the key
//!   (task, payload, run_at, queue_name, priority, max_attempts, flags; attempts reset;
//!   two array payloads are concatenated); `preserve_run_at` does the same but keeps its
//!   `run_at`; `unsafe_dedupe` returns the holder unchanged. In `replace` and
//!   `preserve_run_at` a running holder keeps running without the key and will not retry,
//!   and a new job gets the key.
//! - Bad input raises graphile's SQLSTATEs: `GWBKM` (unknown `job_key_mode`), `GWBID`
//!   (identifier not 1 to 128 characters), `GWBQN` (`queue_name` over 128), `GWBJK`
//!   (`job_key` empty or over 512), `GWBMA` (`max_attempts` below 1).
//! - `remove_job`, `complete_jobs`, `permanently_fail_jobs` (default reason `Manually
//!   marked as failed`) and `reschedule_jobs` leave running (and waiting) jobs alone;
//!   `remove_job` on a running holder only takes its key and its retries.
//!
//! Differences: a key is held only by unfinished jobs (so `unsafe_dedupe` does not match
//! a completed or failed job); removed jobs are cancelled and completed jobs kept (graphile
//! deletes both); `complete_jobs`, `permanently_fail_jobs` and `reschedule_jobs` act on
//! pending, retrying and failed jobs, and `reschedule_jobs` makes a failed job with
//! attempts left `retrying` again.
//!
//! # SQL worker protocol
//! Workers in any language can take and finish jobs through SQL (migration 7). A worker
//! loop, each statement autocommitted:
//! ```sql
//! -- Claim one due job (or get no row): task filter, lease length, optional queues.
//! SELECT id, task, payload, attempt FROM durable_jobs.get_job(
//!     'billing-worker:host-1:4711', task_identifiers => ARRAY['send_invoice'],
//!     job_expiry => interval '5 minutes');
//! -- ... run it, then either
//! SELECT durable_jobs.complete_job('billing-worker:host-1:4711', 42, '{"sent": true}'::jsonb);
//! -- or
//! SELECT durable_jobs.fail_job('billing-worker:host-1:4711', 42, 'SMTP timeout');
//! -- and loop; when get_job returns no row, sleep or LISTEN "durable_jobs:durable_jobs".
//! ```
//! `get_job(worker_id, task_identifiers DEFAULT NULL, job_expiry DEFAULT '4 hours',
//! queue_names DEFAULT NULL)` claims like the Rust workers (priority, then run_at, then
//! id; skipping paused queues, jobs not yet due and serial keys already running) with
//! `FOR UPDATE SKIP LOCKED`, and returns the job row leased to `worker_id` until now +
//! `job_expiry`. A job that outlives its lease is reclaimed by the lease sweep
//! (`Storage::release_stale_locks`, which a Rust worker's lease sweeper runs; with SQL
//! workers only, call it periodically) and runs again.
//!
//! `complete_job` and `fail_job` are fenced: they succeed only while the job is running
//! under an unexpired lease held by `worker_id`. Otherwise they raise SQLSTATE `DJ001`
//! (message `...: lease lost: job ... is not held by worker ...`) and change nothing; a
//! job that does not exist raises `P0002`. Give each worker process its own id: the
//! fence is the holder's name. `fail_job` retries after `least(2^attempt s, 1 hour)`
//! while attempts remain (2 s, 4 s, 8 s, ...), else fails the job for good. Both append
//! the attempt to the job's history and wake a waiting parent on a final write, like the
//! Rust completion. SQL workers renew no lease: pick a `job_expiry` longer than a run.
//!
//! # Behind pgBouncer in transaction mode
//! With [`PostgresOptions::pgbouncer_transaction_mode`] the storage works through a
//! connection pooler in transaction mode (pgBouncer's `pool_mode = transaction`), where
//! each transaction may run on another server connection and no session state survives:
//! ```no_run
//! # async fn example() -> durable_jobs::Result<()> {
//! use durable_jobs::Storage;
//! use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
//! let storage = PostgresStorage::connect_with(
//!     "postgres://app@pgbouncer:6432/app",
//!     // LISTEN goes to the server itself; `None` leaves other processes polling.
//!     PostgresOptions::new().pgbouncer_transaction_mode(Some("postgres://app@db:5432/app")),
//! )
//! .await?;
//! storage.migrate().await?;
//! # Ok(()) }
//! ```
//! Every statement then runs without a named prepared statement and inside a
//! transaction: sqlx sends a statement with parameters as two exchanges (Parse and
//! Describe, then Bind and Execute), and outside a transaction the pooler may hand the
//! second to another server connection. The option's rustdoc lists the rest. Tested by
//! running the conformance suites through a real pgBouncer
//! (`testing::PgBouncerHarness`, feature `testing`).
//!
//! # Testing
//! The `testing` feature adds the `testing` module: it finds a server (or starts a throwaway one)
//! and gives each test its own schema, on a test clock that tests move forward instead of
//! sleeping.

pub mod listen;
pub mod migrate;
pub mod options;

mod delete;
mod error;
mod exec;
mod filter;
mod operations;
mod rate;
mod retention;
mod sql;
mod step;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;
mod tx;
mod workflow;

pub use migrate::LATEST_VERSION;
pub use options::{
    PostgresOptions, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_PING_IDLE_AFTER,
    DEFAULT_SCHEMA, MAX_SCHEMA_LEN,
};
/// Re-exported so users name the same sqlx version as this crate.
pub use sqlx;
pub use step::{PgStepFuture, PostgresStepExt};
pub use storage::PostgresStorage;
