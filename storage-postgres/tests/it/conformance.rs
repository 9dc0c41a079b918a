//! The shared storage conformance suite, each case in a fresh schema.

use durable_jobs_postgres::testing::PostgresHarness;

durable_jobs::storage_conformance_tests!(PostgresHarness);

// Real time: the database answers over a socket, so a paused clock would jump.
durable_jobs::simulation_tests!(PostgresHarness, seeds = 3, paused_time = false);
durable_jobs::fault_conformance_tests!(PostgresHarness);
