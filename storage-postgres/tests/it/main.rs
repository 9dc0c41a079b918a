//! Integration tests against a real PostgreSQL server (found or started by
//! `durable_jobs_postgres::testing`).

mod conformance;
