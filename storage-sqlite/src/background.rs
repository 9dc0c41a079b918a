//! The writer's background lane: how the SQLite writer runs background work (the
//! retention purge) beside claims and completions.
//!
//! SQLite has one writer per file, so a purge step that runs holds up every claim and
//! completion queued behind it. Run back to back, the purge took about half the writer
//! and a drain beside it ran at 0.52-0.66x of its rate alone (bench `retention`). So a
//! background command runs alone in its own transaction (never inside a foreground
//! batch, whose commit it would delay), within the share
//! [`durable_jobs::storage::share`] gives it while foreground writes wait, and back to
//! back when the writer is idle (no foreground write for [`IDLE_AFTER`]).

pub(crate) use durable_jobs::storage::share::{BackgroundShare, ShareRamp};
use std::time::Duration;

/// How long the writer waits for a foreground write before it counts as idle and runs
/// a background command outside its share: 1 ms, longer than a worker takes to answer
/// a commit with its next claim or completion, so a busy drain is never taken for idle.
pub(crate) const IDLE_AFTER: Duration = Duration::from_millis(1);
