//! Every conformance suite (storage calls, and the engine through a real Queue and
//! Worker), each case in a fresh schema on the schema's own test clock.

use durable_jobs_postgres::testing::PostgresHarness;

durable_jobs::conformance_tests!(PostgresHarness);
