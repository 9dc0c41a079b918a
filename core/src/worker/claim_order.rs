//! The order a queue loop starts its claimed jobs in: the order storage claims them
//! (higher priority first, then earlier `run_at`, then lower id), across every claim whose
//! jobs wait in the local queue, not only within one.
//!
//! A claim that comes back while the local queue still holds jobs may carry jobs that
//! rank before them: a higher-priority job enqueued since the earlier claim, or the better
//! share of a split with a claim that raced it on the server. Appended, they would wait
//! behind worse jobs; merged, the loop starts what it holds as storage would hand it out.

use crate::storage::ClaimedJob;
use std::cmp::Reverse;
use std::collections::VecDeque;

/// A buffered job, with whatever the loop keeps beside it.
pub(crate) trait Ranked {
    /// The claimed job it carries.
    fn claimed(&self) -> &ClaimedJob;
}

/// The key storage claims by.
fn rank(c: &ClaimedJob) -> (Reverse<i32>, chrono::DateTime<chrono::Utc>, i64) {
    (Reverse(c.job.priority), c.job.run_at, c.job.id)
}

/// Adds a claim's `jobs` to `buffer`, keeping it in claim order. A claim's jobs come in
/// claim order and, while claims do not race, all rank after what the buffer holds: they
/// are then appended without sorting, the common case of a busy drain.
pub(crate) fn merge<T: Ranked>(buffer: &mut VecDeque<T>, jobs: impl IntoIterator<Item = T>) {
    let from = buffer.len();
    buffer.extend(jobs);
    let in_order = buffer
        .range(from.saturating_sub(1)..)
        .zip(buffer.range(from.max(1)..))
        .all(|(a, b)| rank(a.claimed()) <= rank(b.claimed()));
    if !in_order {
        buffer.make_contiguous().sort_by_key(|c| rank(c.claimed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Job, JobStatus};
    use chrono::{TimeZone, Utc};

    impl Ranked for ClaimedJob {
        fn claimed(&self) -> &ClaimedJob {
            self
        }
    }

    fn job(id: i64, priority: i32, second: u32) -> ClaimedJob {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, second)
            .single()
            .expect("valid time");
        let j = Job {
            id,
            task: "t".into(),
            payload: serde_json::Value::Null,
            queue: "default".into(),
            priority,
            status: JobStatus::Running,
            attempt: 1,
            max_attempts: 1,
            run_at: at,
            lease: None,
            last_error: None,
            result: None,
            dedupe_key: None,
            timeout_ms: None,
            created_at: at,
            started_at: None,
            completed_at: None,
            updated_at: at,
            trace_context: None,
            parent_id: None,
            tags: Vec::new(),
            flags: Vec::new(),
            serial_key: None,
            progress: None,
            metadata: Default::default(),
        };
        ClaimedJob::new(j, 1, at)
    }

    fn ids(buffer: &VecDeque<ClaimedJob>) -> Vec<i64> {
        buffer.iter().map(|c| c.job.id).collect()
    }

    #[test]
    fn a_claim_ranking_after_the_buffer_is_appended() {
        let mut buffer = VecDeque::new();
        merge(&mut buffer, [job(1, 0, 0), job(2, 0, 1)]);
        merge(&mut buffer, [job(3, 0, 2), job(4, 0, 2)]);
        merge(&mut buffer, []);
        assert_eq!(ids(&buffer), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_claim_holding_better_jobs_goes_before_the_buffer() {
        let mut buffer = VecDeque::new();
        // A racing claim took 1, 3 and 5 while the other held 4 (priority 10).
        merge(&mut buffer, [job(1, 0, 0), job(3, 0, 2), job(5, -5, 4)]);
        merge(&mut buffer, [job(4, 10, 3)]);
        assert_eq!(ids(&buffer), vec![4, 1, 3, 5]);
    }

    #[test]
    fn ties_rank_by_run_at_then_id() {
        let mut buffer = VecDeque::new();
        merge(&mut buffer, [job(2, 0, 1), job(9, -5, 0)]);
        merge(&mut buffer, [job(8, 0, 1), job(3, 0, 1), job(6, 20, 9)]);
        assert_eq!(ids(&buffer), vec![6, 2, 3, 8, 9]);
    }

    #[test]
    fn a_claim_out_of_order_within_itself_is_sorted() {
        let mut buffer = VecDeque::new();
        merge(&mut buffer, [job(2, 0, 1), job(1, 0, 0)]);
        assert_eq!(ids(&buffer), vec![1, 2]);
    }
}
