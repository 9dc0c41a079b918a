//! The stored jobs and their count per queue and status, kept in step.
//!
//! `counts()` (which every worker's metrics sampler calls) used to walk every job under
//! the store's one lock: 0.68 s with 2.1M jobs, during which no claim or completion
//! could run. The counts are now kept as jobs are written, so reading them costs one
//! entry per queue. Every write goes through [`Jobs`]: inserting and removing adjust the
//! counts, and a job changed through [`JobMut`] moves between statuses when the guard
//! is dropped.

use crate::paged::PagedMap;
use durable_jobs::idhash::IdBuildHasher;
use durable_jobs::{Job, JobId, JobStatus, QueueCount};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// How many statuses a job can have.
const STATUSES: usize = JobStatus::ALL.len();

/// Jobs by id, with their counts per queue and status.
#[derive(Default)]
pub(crate) struct Jobs {
    /// Shared with the claims that hand them out: a claim gives the worker the stored
    /// job itself rather than a copy, and a write to a job a claim still holds copies it
    /// first (`Arc::make_mut`), so a claimed job never changes under its holder. In
    /// pages of consecutive ids (see [`PagedMap`]): a drain's jobs sit side by side
    /// whatever the number of jobs around them.
    map: PagedMap<Arc<Job>>,
    tally: Tally,
}

/// Jobs per queue and status, a row per queue ever used (rows are never dropped: as few
/// as the queues an application names). Looked up by name, with the last row used
/// tried first: a store's writes mostly come in runs on one queue, and a string compare
/// costs a fraction of hashing the name (callgrind: the tally added about 250
/// instructions to a drained job with hashing alone).
#[derive(Default)]
struct Tally {
    rows: Vec<(String, [u64; STATUSES])>,
    /// Row numbers by queue name.
    index: HashMap<String, usize, IdBuildHasher>,
    /// The row the last lookup found.
    last: usize,
}

impl Tally {
    fn row(&mut self, queue: &str) -> &mut [u64; STATUSES] {
        let hit = self.rows.get(self.last).is_some_and(|(q, _)| q == queue);
        if !hit {
            self.last = match self.index.get(queue) {
                Some(&i) => i,
                None => {
                    self.rows.push((queue.to_string(), [0; STATUSES]));
                    self.index.insert(queue.to_string(), self.rows.len() - 1);
                    self.rows.len() - 1
                }
            };
        }
        &mut self.rows[self.last].1
    }

    fn add(&mut self, queue: &str, status: JobStatus) {
        self.row(queue)[status as usize] += 1;
    }

    /// A job of `queue` went from `from` to `to`: one lookup of the queue.
    fn moved(&mut self, queue: &str, from: JobStatus, to: JobStatus) {
        let row = self.row(queue);
        row[from as usize] = row[from as usize].saturating_sub(1);
        row[to as usize] += 1;
    }

    fn sub(&mut self, queue: &str, status: JobStatus) {
        let n = &mut self.row(queue)[status as usize];
        *n = n.saturating_sub(1);
    }
}

impl Jobs {
    pub(crate) fn get(&self, id: &JobId) -> Option<&Arc<Job>> {
        self.map.get(*id)
    }

    pub(crate) fn contains_key(&self, id: &JobId) -> bool {
        self.map.contains_key(*id)
    }

    /// Every job, in no particular order (callers sort or count, as with a hash map).
    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<Job>> {
        self.map.values()
    }

    /// Stores a new job (or replaces the one with its id).
    pub(crate) fn insert(&mut self, id: JobId, job: Arc<Job>) {
        self.tally.add(&job.queue, job.status);
        if let Some(old) = self.map.insert(id, job) {
            self.tally.sub(&old.queue, old.status);
        }
    }

    pub(crate) fn remove(&mut self, id: &JobId) -> Option<Arc<Job>> {
        let old = self.map.remove(*id)?;
        self.tally.sub(&old.queue, old.status);
        Some(old)
    }

    /// A job to change; its counts follow its status when the guard is dropped.
    pub(crate) fn get_mut(&mut self, id: &JobId) -> Option<JobMut<'_>> {
        let slot = self.map.get_mut(*id)?;
        Some(JobMut {
            was: slot.status,
            slot,
            tally: &mut self.tally,
        })
    }

    /// A job to change in ways that never change its status (a lease's result, error,
    /// expiry or progress): no guard counts it. Debug builds check the counts against
    /// every job at each [`Jobs::counts`], which a status changed through this would
    /// fail.
    pub(crate) fn get_mut_untracked(&mut self, id: &JobId) -> Option<&mut Job> {
        self.map.get_mut(*id).map(Arc::make_mut)
    }

    /// The counts per queue and status, zero counts omitted.
    pub(crate) fn counts(&self) -> Vec<QueueCount> {
        #[cfg(debug_assertions)]
        self.check();
        let mut out = Vec::new();
        for (queue, row) in &self.tally.rows {
            for status in JobStatus::ALL {
                let count = row[status as usize];
                if count > 0 {
                    out.push(QueueCount {
                        queue: queue.clone(),
                        status,
                        count,
                    });
                }
            }
        }
        out
    }

    /// Debug builds: the kept counts equal a walk of every job (a test calling `counts`
    /// after any sequence of writes checks that every write kept them in step).
    #[cfg(debug_assertions)]
    fn check(&self) {
        let mut walked: HashMap<&str, [u64; STATUSES]> = HashMap::new();
        for j in self.map.values() {
            walked.entry(j.queue.as_str()).or_insert([0; STATUSES])[j.status as usize] += 1;
        }
        for (queue, row) in &self.tally.rows {
            let want = walked.remove(queue.as_str()).unwrap_or([0; STATUSES]);
            debug_assert_eq!(*row, want, "kept counts of queue {queue}");
        }
        debug_assert!(walked.is_empty(), "queues without kept counts: {walked:?}");
    }
}

/// A stored job being changed. Reading goes to the stored job; the first write copies it
/// if a claim still holds it (`Arc::make_mut`). A change of status is counted when the
/// guard goes; a change of queue only through [`JobMut::set_queue`].
pub(crate) struct JobMut<'a> {
    slot: &'a mut Arc<Job>,
    tally: &'a mut Tally,
    /// The status the counts have the job under.
    was: JobStatus,
}

impl JobMut<'_> {
    /// The stored job itself, to share with a claim.
    pub(crate) fn shared(&self) -> &Arc<Job> {
        self.slot
    }

    /// Moves the job to another queue, and its count with it.
    pub(crate) fn set_queue(&mut self, queue: String) {
        self.tally.sub(&self.slot.queue, self.was);
        Arc::make_mut(self.slot).queue = queue;
        self.tally.add(&self.slot.queue, self.was);
    }
}

impl Deref for JobMut<'_> {
    type Target = Job;

    fn deref(&self) -> &Job {
        self.slot
    }
}

impl DerefMut for JobMut<'_> {
    fn deref_mut(&mut self) -> &mut Job {
        Arc::make_mut(self.slot)
    }
}

impl Drop for JobMut<'_> {
    fn drop(&mut self) {
        let now = self.slot.status;
        if now != self.was {
            self.tally.moved(&self.slot.queue, self.was, now);
        }
    }
}
