//! Every conformance suite (storage calls, and the engine through a real Queue and
//! Worker), each case in a fresh schema on the schema's own test clock.

use durable_jobs_postgres::testing::PostgresHarness;

durable_jobs::conformance_tests!(PostgresHarness);

// Real time: the database answers over a socket, so a paused clock would jump.
durable_jobs::simulation_tests!(PostgresHarness, seeds = 3, paused_time = false);
durable_jobs::fault_conformance_tests!(PostgresHarness);
