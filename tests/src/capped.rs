//! The key-limit test's workload (`tests/*_processes.rs`, mode `capped` of the worker
//! binaries): jobs of one serial key with a running limit, whose handler records when it
//! starts and ends and, in between, holds its slot until as many jobs as the limit
//! allows have recorded their start (or none is left to start). A recorded interval lies
//! inside the job's time as running, so a claim that let one job too many through would
//! show as one interval too many open at once, and the first wave shows exactly the
//! limit, whatever the timing.

use durable_jobs::{JobFilter, JobStatus, NewJob, Storage};
use serde_json::json;
use std::time::Duration;

/// The queue and task of the capped jobs.
pub const QUEUE: &str = "capped";
/// The serial key every capped job carries.
pub const KEY: &str = "tenant-1";

/// `n` capped jobs.
pub fn jobs(n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|i| {
            let mut j = NewJob::new(QUEUE, json!(i));
            j.queue = QUEUE.into();
            j.serial_key = Some(KEY.into());
            j
        })
        .collect()
}

/// How many capped jobs have one of `statuses`.
async fn count(storage: &dyn Storage, statuses: Vec<JobStatus>) -> Result<usize, String> {
    storage
        .list_jobs(JobFilter {
            statuses,
            queue: Some(QUEUE.into()),
            limit: Some(10_000),
            ..JobFilter::default()
        })
        .await
        .map(|jobs| jobs.len())
        .map_err(|e| e.to_string())
}

/// Holds a running capped job until `limit` capped jobs have recorded their start and
/// not their end (`open` counts them from the record the test reads) or none is left to
/// start (polling: the other jobs start in other processes). Waiting on the record, not
/// on the jobs' status, makes the first wave show `limit` intervals open at once in the
/// record whatever the timing: no job records its end before `limit` starts are there.
///
/// # Errors
/// A storage or record error, as text.
pub async fn hold<F, Fut>(storage: &dyn Storage, limit: usize, mut open: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, String>>,
{
    loop {
        if open().await? >= limit {
            return Ok(());
        }
        let waiting = count(storage, vec![JobStatus::Pending, JobStatus::Retrying]).await?;
        if waiting == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The intervals open at the end of a sequence of events (true: a job started, false: it
/// ended).
pub fn open_now(events: &[bool]) -> usize {
    let starts = events.iter().filter(|s| **s).count();
    starts.saturating_sub(events.len() - starts)
}

/// The most intervals open at once in a sequence of events (true: a job started,
/// false: it ended), in the order they happened.
pub fn max_overlap(events: &[bool]) -> usize {
    let (mut open, mut most) = (0usize, 0usize);
    for &started in events {
        if started {
            open += 1;
            most = most.max(open);
        } else {
            open = open.saturating_sub(1);
        }
    }
    most
}

#[cfg(test)]
mod tests {
    use super::max_overlap;

    #[test]
    fn overlap_counts_open_intervals() {
        assert_eq!(max_overlap(&[]), 0);
        assert_eq!(max_overlap(&[true, false, true, false]), 1);
        assert_eq!(max_overlap(&[true, true, false, true, false, false]), 2);
        assert_eq!(super::open_now(&[true, true, false, true]), 2);
    }
}
