//! postgres storage for durable-jobs (work in progress).
