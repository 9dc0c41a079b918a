//! The shared workflow conformance suite (storage calls) and the engine conformance
//! suite (workflows through a real Queue and Worker), each case in a fresh schema.

mod storage {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::storage_workflow_conformance_tests!(PostgresHarness);
}

mod engine {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::engine_conformance_tests!(PostgresHarness);
}

mod checkpoints {
    use durable_jobs_postgres::testing::PostgresHarness;
    durable_jobs::storage_checkpoint_conformance_tests!(PostgresHarness);
}
