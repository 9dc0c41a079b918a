//! Shared helpers for durable-jobs' cross-backend and multi-process tests.

pub mod capped;
pub mod crash;
pub mod pg;
pub mod workflow_worker;
