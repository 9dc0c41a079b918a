//! The `durable-jobs` binary run against real SQLite files and PostgreSQL schemas: every
//! command, `--json` parsed back, exit codes, and bad input.

// Test code: a failed unwrap is a failed test with its location. Clippy's
// `allow-unwrap-in-tests` covers `#[test]` functions but not the helpers they share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod errors;
mod harness;
mod postgres;
mod scenario;
mod sqlite;
