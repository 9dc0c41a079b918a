//! The shared storage conformance suite, each case in a fresh schema.

use durable_jobs_postgres::testing::PostgresHarness;

durable_jobs::storage_conformance_tests!(PostgresHarness);
durable_jobs::results_conformance_tests!(PostgresHarness);
durable_jobs::snooze_conformance_tests!(PostgresHarness);
durable_jobs::progress_conformance_tests!(PostgresHarness);
durable_jobs::determinism_conformance_tests!(PostgresHarness);
