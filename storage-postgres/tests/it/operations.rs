//! The shared operations conformance suites (job-key modes, serial keys, flags, paused
//! queues, schedules, management calls; then the same through a real worker).

mod storage {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::storage_operations_conformance_tests!(PostgresHarness);
}

mod engine {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::engine_operations_conformance_tests!(PostgresHarness);
}

mod metadata {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::storage_metadata_conformance_tests!(PostgresHarness);
}

mod delete {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::storage_delete_conformance_tests!(PostgresHarness);
}

mod flow {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::storage_flow_conformance_tests!(PostgresHarness);
}
