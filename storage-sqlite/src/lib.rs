//! sqlite storage for durable-jobs (work in progress).
