//! The shared storage conformance suite, each case in a fresh schema.

use durable_jobs_postgres::testing::PostgresHarness;

durable_jobs::storage_conformance_tests!(PostgresHarness);
durable_jobs::storage_retention_conformance_tests!(PostgresHarness);
