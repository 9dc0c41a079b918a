//! The memory backend's [`Storage`] implementation.

use crate::jobs::Jobs;
use crate::paged::PagedMap;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use durable_jobs::idhash::{IdBuildHasher, IdMap, IdSet};
use durable_jobs::job::{far_future, new_lease_token};
use durable_jobs::storage::share::{BackgroundShare, ShareRamp};
use durable_jobs::{
    AdvanceScheduleParams, Capabilities, Checkpoint, CheckpointOutcome, ClaimedJob, Clock,
    Completion, DeletedBatch, DequeueParams, Enqueued, Error, Failure, Job, JobFilter, JobId,
    JobStatus, KeyMode, Lease, LeaseInfo, ManualClock, ManualOutcome, NewJob, QueueCount,
    ReleasedJob, Result, RetentionBatch, RetentionPurged, ScheduleRecord, SpawnChildrenParams,
    StaleLocks, Storage, SystemClock, TakeSignalsParams, WorkerRecord,
};
use durable_jobs::{AttemptOutcome, AttemptRecord, CheckpointWrite, RateLimit};
use parking_lot::{Mutex, MutexGuard};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Claim order: priority (higher first), then run_at, then id.
type ReadyKey = (Reverse<i32>, DateTime<Utc>, JobId);

#[derive(Default)]
struct State {
    next_id: JobId,
    /// The jobs, shared with the claims that hand them out, and their counts (see
    /// [`Jobs`]).
    jobs: Jobs,
    /// Claimable (pending or retrying) jobs per queue, in claim order. Queue names are
    /// the application's, so the fast hasher serves here too.
    ready: HashMap<String, BTreeSet<ReadyKey>, IdBuildHasher>,
    /// Running jobs by lease expiry, for the sweeper.
    /// One entry per expiry: the jobs of one claim share theirs, so a claim adds one
    /// entry and then a hash-set insert per job.
    running: BTreeMap<DateTime<Utc>, IdSet>,
    /// Dedupe keys of unfinished jobs.
    dedupe: HashMap<String, JobId>,
    /// Checkpoints, parents and children stay in plain maps, not pages like `jobs` and
    /// `attempts`: they are empty beside the bench's backlogs, where paging helped,
    /// and a job's parent or children are rare, so a page would often hold one entry
    /// at 64 times its size.
    checkpoints: IdMap<BTreeMap<String, Checkpoint>>,
    parents: IdMap<JobId>,
    children: IdMap<Vec<JobId>>,
    /// Running jobs woken while running: their next suspend is due at once.
    wake_requested: IdSet,
    /// Unconsumed signals per job and name, oldest first.
    /// Ordered by job first, so removing a job drops its signals with one range walk.
    signals: BTreeMap<(JobId, String), VecDeque<Value>>,
    /// The running jobs of each serial key.
    serial_running: HashMap<String, IdSet>,
    /// How many jobs of a serial key may run at once, where not 1.
    key_limits: BTreeMap<String, u32>,
    /// Rate-limited queues and their current windows.
    rate_limits: BTreeMap<String, RateWindow>,
    schedules: BTreeMap<String, ScheduleRecord>,
    paused_queues: BTreeSet<String>,
    workers: BTreeMap<String, WorkerRecord>,
    /// Ended attempts per job, oldest first, in pages of consecutive ids as the jobs
    /// are (see [`PagedMap`]).
    attempts: PagedMap<Attempts>,
    /// Finished jobs by finish time, one list per final status (see [`final_slot`]), so
    /// a retention batch walks only jobs old enough to go, oldest first, as PostgreSQL
    /// and SQLite walk their index on the finish time. One entry per finish time, as for
    /// `running`: the jobs of one completion batch share theirs, so finishing a job is a
    /// hash-set insert (an ordered set of (time, id) cost a tenth of a no-op job's
    /// drain). Kept in step wherever a job finishes, leaves its final status or is
    /// removed; a read still checks each job against its entry and drops one that no
    /// longer matches.
    by_finish: [BTreeMap<DateTime<Utc>, IdSet>; 3],
    /// Bumped by every final write, for `Queue::wait_for` (see `Storage::finishes`).
    finished: Option<Arc<watch::Sender<u64>>>,
    /// Counts the times the lock was taken for anything but a retention batch: when it
    /// moved since the last batch, foreground work is going on (see
    /// `MemoryStorage::purge_retained`).
    foreground: u64,
}

/// The retention purge's share of the store's lock (see
/// [`durable_jobs::storage::share`]).
#[derive(Debug)]
struct Background {
    share: BackgroundShare,
    /// `State::foreground` when the last batch ended.
    foreground_seen: u64,
}

/// A job's ended attempts, oldest first. Most jobs end after one attempt, which needs no
/// list. The record is boxed so that an entry of the attempts map stays two words: inline,
/// a record (about 100 bytes) made every entry that size, and with a million retained
/// jobs each insert touched several cache lines of a table hundreds of megabytes large,
/// and each doubling of it moved them all. A drain of 10 x 100k jobs beside 1M retained
/// ones ran at a median of 475k jobs/s with the record inline, 561k boxed, and 770k with
/// no history kept at all.
enum Attempts {
    One(Box<AttemptRecord>),
    Many(Vec<AttemptRecord>),
}

/// A queue's rate limit and its current window.
struct RateWindow {
    limit: RateLimit,
    /// When the current window opened (`None`: none yet).
    opened: Option<DateTime<Utc>>,
    /// Starts in the current window.
    starts: u32,
}

impl RateWindow {
    fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.opened
            .is_some_and(|at| add(at, self.limit.period) > now)
    }

    /// Starts left in the window at `now`.
    fn left(&self, now: DateTime<Utc>) -> usize {
        let used = if self.is_open(now) { self.starts } else { 0 };
        self.limit.max_starts.saturating_sub(used) as usize
    }

    fn record(&mut self, now: DateTime<Utc>, n: u32) {
        if !self.is_open(now) {
            self.opened = Some(now);
            self.starts = 0;
        }
        self.starts += n;
    }
}

/// Jobs held in this process's memory. Cloning shares the same jobs.
#[derive(Clone)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    wake: Arc<watch::Sender<u64>>,
    background: Arc<Mutex<Background>>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage").finish_non_exhaustive()
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// Storage on the system clock.
    pub fn new() -> Self {
        Self::build(Arc::new(SystemClock))
    }

    /// Storage on a manual clock: advancing the clock also wakes idle workers.
    pub fn with_clock(clock: ManualClock) -> Self {
        let storage = Self::build(Arc::new(clock.clone()));
        let wake = Arc::downgrade(&storage.wake);
        clock.on_change(move || {
            if let Some(w) = wake.upgrade() {
                w.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        storage
    }

    /// A [`TestKit`](durable_jobs::testing::kit::TestKit) on fresh memory storage and a
    /// new [`ManualClock`]: its workers run on virtual time (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn test_kit() -> durable_jobs::testing::kit::TestKit {
        let clock = ManualClock::new();
        durable_jobs::testing::kit::TestKit::new(Arc::new(Self::with_clock(clock.clone())), clock)
    }

    /// Storage on any clock.
    pub fn with_custom_clock(clock: Arc<dyn Clock>) -> Self {
        Self::build(clock)
    }

    fn build(clock: Arc<dyn Clock>) -> Self {
        let (tx, _) = watch::channel(0);
        let (finished, _) = watch::channel(0);
        MemoryStorage {
            state: Arc::new(Mutex::new(State {
                next_id: 1,
                finished: Some(Arc::new(finished)),
                ..State::default()
            })),
            clock,
            wake: Arc::new(tx),
            background: Arc::new(Mutex::new(Background {
                share: BackgroundShare::new(ShareRamp::default()),
                foreground_seen: 0,
            })),
        }
    }

    /// Marks a job finished with `status` (completed, failed or cancelled, now) the way a
    /// write from outside the library would: it wakes nobody, the job's parent included.
    /// For tests of the recovery [`Storage::release_stale_locks`] makes (a parent left
    /// waiting on a finished child); returns false when there is no such job or `status`
    /// is not a finished one.
    pub fn finish_out_of_band(&self, id: JobId, status: JobStatus) -> bool {
        if !status.is_finished() {
            return false;
        }
        let now = self.clock.now();
        let mut st = self.lock();
        let Some(job) = st.jobs.get(&id).cloned() else {
            return false;
        };
        if job.status.is_claimable() || job.status == JobStatus::Waiting {
            st.unready(&job);
        }
        st.end_lease(id);
        st.unindex_finished(&job);
        if let Some(mut j) = st.jobs.get_mut(&id) {
            let j = &mut *j;
            j.status = status;
            j.completed_at = Some(now);
            j.updated_at = now;
        }
        st.index_finished(status, now, id);
        true
    }

    /// The state, under the store's one lock. (`parking_lot`'s lock: a thread waiting on
    /// it is handed it after a while, where the standard one lets the releasing thread
    /// take it straight back, which starved claims beside a back-to-back retention
    /// purge. It has no poisoning; every mutation below keeps the state consistent
    /// before it can panic anyway.)
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock();
        st.foreground = st.foreground.wrapping_add(1);
        st
    }

    fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl State {
    fn insert(&mut self, mut new: NewJob, now: DateTime<Utc>) -> Enqueued {
        if let Some(key) = new.dedupe_key.clone() {
            if let Some(&id) = self.dedupe.get(&key) {
                match new.key_mode {
                    KeyMode::Dedupe => return Enqueued { id, created: false },
                    KeyMode::Replace | KeyMode::PreserveRunAt => {
                        if let Some(out) = self.replace_keyed(id, &mut new, now) {
                            return out;
                        }
                    }
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let run_at = new.resolve_run_at(now);
        if let Some(key) = &new.dedupe_key {
            self.dedupe.insert(key.clone(), id);
        }
        if let Some(parent) = new.parent_id {
            self.parents.insert(id, parent);
            self.children.entry(parent).or_default().push(id);
        }
        let job = Job {
            id,
            task: new.task,
            payload: new.payload,
            queue: new.queue,
            priority: new.priority,
            status: JobStatus::Pending,
            attempt: 0,
            max_attempts: new.max_attempts,
            run_at,
            lease: None,
            last_error: None,
            result: None,
            dedupe_key: new.dedupe_key,
            timeout_ms: new.timeout_ms,
            created_at: now,
            started_at: None,
            completed_at: None,
            updated_at: now,
            trace_context: new.trace_context,
            parent_id: new.parent_id,
            tags: new.tags,
            flags: new.flags,
            serial_key: new.serial_key,
            progress: None,
            metadata: new.metadata,
        };
        self.make_ready(&job);
        self.jobs.insert(id, Arc::new(job));
        Enqueued { id, created: true }
    }

    /// Job-key replace: a holder still waiting to run takes the new payload (and run_at
    /// unless preserved) and keeps its id; a holder already running (or suspended
    /// mid-workflow) gives up its key and `None` tells the caller to insert a new job.
    fn replace_keyed(
        &mut self,
        id: JobId,
        new: &mut NewJob,
        now: DateTime<Utc>,
    ) -> Option<Enqueued> {
        let job = self.jobs.get(&id)?.clone();
        if !job.status.is_claimable() {
            if let Some(k) = &job.dedupe_key {
                self.dedupe.remove(k);
            }
            if let Some(mut j) = self.jobs.get_mut(&id) {
                j.dedupe_key = None;
            }
            return None;
        }
        self.unready(&job);
        let run_at = match new.key_mode {
            KeyMode::PreserveRunAt => job.run_at,
            _ => new.resolve_run_at(now),
        };
        if let Some(mut g) = self.jobs.get_mut(&id) {
            g.set_queue(new.queue.clone());
            let j = &mut *g;
            j.task = new.task.clone();
            j.payload = std::mem::take(&mut new.payload);
            j.priority = new.priority;
            j.max_attempts = new.max_attempts;
            j.timeout_ms = new.timeout_ms;
            j.run_at = run_at;
            j.attempt = 0;
            j.status = JobStatus::Pending;
            j.last_error = None;
            j.updated_at = now;
            // The job now runs for the latest enqueue: its trace continues that one.
            j.trace_context = new.trace_context.clone();
            j.tags = new.tags.clone();
            j.flags = new.flags.clone();
            j.serial_key = new.serial_key.clone();
            j.metadata = new.metadata.clone();
        }
        let job = self.jobs.get(&id)?.clone();
        self.make_ready(&job);
        Some(Enqueued { id, created: false })
    }

    fn make_ready(&mut self, job: &Job) {
        let key = (Reverse(job.priority), job.run_at, job.id);
        // The queue's name is copied only for its first job.
        match self.ready.get_mut(&job.queue) {
            Some(set) => {
                set.insert(key);
            }
            None => {
                self.ready.entry(job.queue.clone()).or_default().insert(key);
            }
        }
    }

    fn unready(&mut self, job: &Job) {
        if let Some(set) = self.ready.get_mut(&job.queue) {
            set.remove(&(Reverse(job.priority), job.run_at, job.id));
        }
    }

    /// The job held by `lease`, if the lease is still current.
    /// (Callers write the attempt's result, error, expiry or progress, never its
    /// status: that goes through `finish` or `requeue`, which keep the counts.)
    fn leased(&mut self, lease: &Lease) -> Result<&mut Job> {
        match self.jobs.get_mut_untracked(&lease.job_id) {
            Some(job)
                if job.status == JobStatus::Running
                    && job.lease.as_ref().map(|l| l.token) == Some(lease.token) =>
            {
                Ok(job)
            }
            _ => Err(Error::LeaseLost {
                job_id: lease.job_id,
            }),
        }
    }

    /// Moves a current lease's expiry to `expires_at`. Fenced.
    fn renew(&mut self, lease: &Lease, expires_at: DateTime<Utc>) -> Result<Lease> {
        let job = self.leased(lease)?;
        let old = job.lease.as_ref().map(|l| l.expires_at);
        if let Some(l) = job.lease.as_mut() {
            l.expires_at = expires_at;
        }
        if let Some(old) = old {
            unlist_running(&mut self.running, old, lease.job_id);
        }
        self.running
            .entry(expires_at)
            .or_default()
            .insert(lease.job_id);
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    /// Records how a running job's current attempt ended, in its history. Call before the
    /// transition that ends it (the lease and attempt number are still the attempt's).
    fn close_attempt(
        &mut self,
        id: JobId,
        outcome: AttemptOutcome,
        error: Option<String>,
        now: DateTime<Utc>,
    ) {
        let Some(mut job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.status != JobStatus::Running {
            return;
        }
        let job = &mut *job;
        let record = AttemptRecord {
            attempt: job.attempt,
            // Moved, not copied: every caller ends the lease right after (it finishes or
            // requeues the job), and only the lease's token and expiry matter until then.
            worker: job.lease.as_mut().map(|l| std::mem::take(&mut l.holder)),
            started_at: job.started_at.unwrap_or(now),
            finished_at: Some(now),
            outcome,
            error,
        };
        // (A job's first record looks its page up twice; the page table is small.)
        match self.attempts.get_mut(id) {
            None => {
                self.attempts.insert(id, Attempts::One(Box::new(record)));
            }
            Some(ended) => {
                let all = match std::mem::replace(ended, Attempts::Many(Vec::new())) {
                    Attempts::One(first) => vec![*first, record],
                    Attempts::Many(mut all) => {
                        all.push(record);
                        all
                    }
                };
                *ended = Attempts::Many(all);
            }
        }
    }

    /// Takes a running job off its lease (status is set by the caller).
    fn end_lease(&mut self, id: JobId) {
        let Some(mut job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.lease.is_some() {
            if let Some(l) = job.lease.take() {
                unlist_running(&mut self.running, l.expires_at, id);
            }
        }
        if let Some(key) = &job.serial_key {
            if let Some(running) = self.serial_running.get_mut(key) {
                running.remove(&id);
                if running.is_empty() {
                    self.serial_running.remove(key);
                }
            }
        }
    }

    fn finish(&mut self, id: JobId, status: JobStatus, now: DateTime<Utc>) {
        self.finish_quietly(id, status, now);
        self.bump_finished();
    }

    /// [`State::finish`] without telling `Queue::wait_for` waiters: for a batch, which
    /// tells them once at its end ([`State::bump_finished`]).
    fn finish_quietly(&mut self, id: JobId, status: JobStatus, now: DateTime<Utc>) {
        if let Some(&parent) = self.parents.get(&id) {
            self.wake_job(parent, now);
        }
        self.end_lease(id);
        let Some(mut guard) = self.jobs.get_mut(&id) else {
            return;
        };
        let job = &mut *guard;
        let (old, old_at) = (job.status, job.completed_at);
        job.status = status;
        job.completed_at = Some(now);
        job.updated_at = now;
        if let Some(key) = &job.dedupe_key {
            if self.dedupe.get(key) == Some(&id) {
                self.dedupe.remove(key);
            }
        }
        drop(guard);
        if let Some(at) = old_at {
            unlist_finished_as(&mut self.by_finish, old, at, id);
        }
        self.index_finished(status, now, id);
    }

    /// Lists a job that just finished with `status` at `at` for retention.
    fn index_finished(&mut self, status: JobStatus, at: DateTime<Utc>, id: JobId) {
        if let Some(slot) = final_slot(status) {
            self.by_finish[slot].entry(at).or_default().insert(id);
        }
    }

    /// Takes `job` (as stored before a change) off the retention lists, if it is on one.
    fn unindex_finished(&mut self, job: &Job) {
        if let Some(at) = job.completed_at {
            unlist_finished_as(&mut self.by_finish, job.status, at, job.id);
        }
    }

    /// Tells `Queue::wait_for` waiters that jobs finished (see `Storage::finishes`).
    fn bump_finished(&self) {
        if let Some(finished) = &self.finished {
            finished.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn requeue(&mut self, id: JobId, status: JobStatus, run_at: DateTime<Utc>, now: DateTime<Utc>) {
        self.end_lease(id);
        let Some(mut slot) = self.jobs.get_mut(&id) else {
            return;
        };
        let job = &mut *slot;
        job.status = status;
        job.run_at = run_at;
        job.updated_at = now;
        let job = Arc::clone(slot.shared());
        drop(slot);
        self.make_ready(&job);
    }
}

impl State {
    /// Removes a job that is not running, with everything attached to it.
    fn remove_job(&mut self, job: &Job) {
        let job_id = job.id;
        if job.status.is_claimable() || job.status == JobStatus::Waiting {
            self.unready(job);
        }
        if let Some(key) = &job.dedupe_key {
            if self.dedupe.get(key) == Some(&job_id) {
                self.dedupe.remove(key);
            }
        }
        self.unindex_finished(job);
        self.jobs.remove(&job_id);
        self.children.remove(&job_id);
        self.checkpoints.remove(&job_id);
        self.attempts.remove(job_id);
        let names: Vec<(JobId, String)> = self
            .signals
            .range((job_id, String::new())..)
            .take_while(|((id, _), _)| *id == job_id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in names {
            self.signals.remove(&k);
        }
        if let Some(parent) = self.parents.remove(&job_id) {
            if let Some(kids) = self.children.get_mut(&parent) {
                kids.retain(|k| *k != job_id);
            }
        }
    }

    /// One retention batch (see [`Storage::purge_retained`]). The state's mutex is the
    /// lock: one batch runs at a time, so it is never busy. The batch walks the
    /// finish-time lists of the statuses it purges together, oldest finish first, and
    /// deletes at most `limit` trees: a root whose tree is all finished goes with its
    /// descendants; a child is skipped (its root decides), as is a root with unfinished
    /// descendants.
    fn purge_retained(&mut self, batch: RetentionBatch) -> RetentionPurged {
        let cuts = [
            batch.completed_before,
            batch.failed_before,
            batch.cancelled_before,
        ];
        // Per list, the last finish time visited: the walk goes on after it.
        let mut after: [Option<DateTime<Utc>>; 3] = [None; 3];
        let mut out = RetentionPurged::default();
        'walk: while (out.roots as usize) < batch.limit {
            let mut next: Option<(usize, DateTime<Utc>)> = None;
            for (slot, cut) in cuts.iter().enumerate() {
                let Some(cut) = *cut else {
                    continue;
                };
                let lower = after[slot].map_or(Bound::Unbounded, Bound::Excluded);
                let first = self.by_finish[slot]
                    .range((lower, Bound::Excluded(cut)))
                    .next()
                    .map(|(at, _)| *at);
                if let Some(at) = first {
                    if next.is_none_or(|(_, n)| at < n) {
                        next = Some((slot, at));
                    }
                }
            }
            let Some((slot, at)) = next else {
                break;
            };
            after[slot] = Some(at);
            let mut ids: Vec<JobId> = self.by_finish[slot]
                .get(&at)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default();
            ids.sort_unstable();
            for id in ids {
                if out.roots as usize >= batch.limit {
                    break 'walk;
                }
                let root = match self.jobs.get(&id) {
                    Some(j) if final_slot(j.status) == Some(slot) && j.completed_at == Some(at) => {
                        j.parent_id.is_none_or(|p| !self.jobs.contains_key(&p))
                    }
                    _ => {
                        unlist_finished(&mut self.by_finish, slot, at, id);
                        continue;
                    }
                };
                if !root {
                    continue;
                }
                let Some(tree) = self.finished_tree(id) else {
                    continue;
                };
                out.roots += 1;
                for id in tree {
                    if let Some(job) = self.jobs.get(&id).cloned() {
                        match job.status {
                            JobStatus::Completed => out.completed += 1,
                            JobStatus::Failed => out.failed += 1,
                            _ => out.cancelled += 1,
                        }
                        self.remove_job(&job);
                    }
                }
            }
        }
        out
    }

    /// Every finished job that finished before `older_than`, whatever its tree (see
    /// [`Storage::purge_finished`]), read off the finish-time lists.
    fn finished_before(&self, older_than: DateTime<Utc>) -> Vec<Arc<Job>> {
        self.by_finish
            .iter()
            .enumerate()
            .flat_map(|(slot, list)| {
                list.range(..older_than).flat_map(move |(&at, ids)| {
                    ids.iter()
                        .filter_map(move |id| {
                            self.jobs.get(id).filter(|j| {
                                final_slot(j.status) == Some(slot) && j.completed_at == Some(at)
                            })
                        })
                        .cloned()
                })
            })
            .collect()
    }

    /// A job and all its descendants, or `None` when any of them is unfinished.
    fn finished_tree(&self, root: JobId) -> Option<Vec<JobId>> {
        let mut tree = vec![root];
        let mut i = 0;
        while let Some(&id) = tree.get(i) {
            if !self.jobs.get(&id).is_some_and(|j| j.status.is_finished()) {
                return None;
            }
            tree.extend(self.children.get(&id).into_iter().flatten().copied());
            i += 1;
        }
        Some(tree)
    }

    /// True when `j` matches every term of `filter` (its limit aside).
    fn matches(&self, j: &Job, filter: &JobFilter) -> bool {
        (filter.statuses.is_empty() || filter.statuses.contains(&j.status))
            && filter.queue.as_ref().is_none_or(|q| *q == j.queue)
            && filter.task.as_ref().is_none_or(|t| *t == j.task)
            && filter.after_id.is_none_or(|a| j.id > a)
            && filter
                .parent_id
                .is_none_or(|p| self.parents.get(&j.id) == Some(&p))
            && filter.tag.as_ref().is_none_or(|t| j.tags.contains(t))
            && filter
                .metadata
                .as_ref()
                .is_none_or(|(k, v)| durable_jobs::metadata::matches(&j.metadata, k, v))
            && filter.created_after.is_none_or(|t| j.created_at >= t)
            && filter.created_before.is_none_or(|t| j.created_at < t)
    }

    /// Wakes a job: due now if waiting or pending, a wake request if running.
    fn wake_job(&mut self, id: JobId, now: DateTime<Utc>) {
        let Some(job) = self.jobs.get(&id).cloned() else {
            return;
        };
        match job.status {
            JobStatus::Waiting | JobStatus::Pending if job.run_at > now => {
                self.unready(&job);
                let Some(mut slot) = self.jobs.get_mut(&id) else {
                    return;
                };
                let j = &mut *slot;
                j.run_at = now;
                j.updated_at = now;
                let j = Arc::clone(slot.shared());
                drop(slot);
                self.make_ready(&j);
            }
            JobStatus::Running => {
                self.wake_requested.insert(id);
            }
            _ => {}
        }
    }

    /// Wakes waiting parents, not yet due, one of whose children finished after the
    /// parent last changed: the state a write from outside the library can leave (here
    /// every final write wakes its parent under the same lock). Looks at every parent
    /// link: this backend holds test-sized data. Returns how many it woke.
    fn heal_waiting_parents(&mut self, now: DateTime<Utc>) -> u64 {
        let stuck: BTreeSet<JobId> = self
            .parents
            .iter()
            .filter_map(|(child, parent)| {
                let (c, p) = (self.jobs.get(child)?, self.jobs.get(parent)?);
                let finished_since =
                    c.status.is_finished() && c.completed_at.is_some_and(|at| at > p.updated_at);
                (p.status == JobStatus::Waiting && p.run_at > now && finished_since)
                    .then_some(*parent)
            })
            .collect();
        for &parent in &stuck {
            self.wake_job(parent, now);
        }
        stuck.len() as u64
    }

    /// The job and all its descendants, parents before children.
    fn subtree(&self, root: JobId) -> Vec<JobId> {
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(kids) = self.children.get(&out[i]) {
                out.extend(kids.iter().copied());
            }
            i += 1;
        }
        out
    }
}

/// Takes a job off the running index's entry for `expires_at`.
fn unlist_running(
    running: &mut BTreeMap<DateTime<Utc>, IdSet>,
    expires_at: DateTime<Utc>,
    id: JobId,
) {
    if let Some(ids) = running.get_mut(&expires_at) {
        ids.remove(&id);
        if ids.is_empty() {
            running.remove(&expires_at);
        }
    }
}

/// Which finish-time list (`State::by_finish`) holds jobs of `status`: none for a status
/// that is not final.
fn final_slot(status: JobStatus) -> Option<usize> {
    match status {
        JobStatus::Completed => Some(0),
        JobStatus::Failed => Some(1),
        JobStatus::Cancelled => Some(2),
        _ => None,
    }
}

/// Takes a job that finished at `at` off finish-time list `slot`.
fn unlist_finished(
    lists: &mut [BTreeMap<DateTime<Utc>, IdSet>; 3],
    slot: usize,
    at: DateTime<Utc>,
    id: JobId,
) {
    if let Some(ids) = lists[slot].get_mut(&at) {
        ids.remove(&id);
        if ids.is_empty() {
            lists[slot].remove(&at);
        }
    }
}

/// Takes a job that finished with `status` at `at` off its finish-time list, if the
/// status is a final one.
fn unlist_finished_as(
    lists: &mut [BTreeMap<DateTime<Utc>, IdSet>; 3],
    status: JobStatus,
    at: DateTime<Utc>,
    id: JobId,
) {
    if let Some(slot) = final_slot(status) {
        unlist_finished(lists, slot, at, id);
    }
}

fn add(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(false, false, false)
    }

    async fn migrate(&self) -> Result<()> {
        Ok(())
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(self.clock.now())
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let now = self.clock.now();
        let out = self.lock().insert(job, now);
        self.wake();
        Ok(out)
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let now = self.clock.now();
        let out = {
            let mut st = self.lock();
            jobs.into_iter().map(|j| st.insert(j, now)).collect()
        };
        self.wake();
        Ok(out)
    }

    async fn enqueue_with_children(
        &self,
        parent: NewJob,
        children: Vec<NewJob>,
    ) -> Result<(Enqueued, Vec<Enqueued>)> {
        let now = self.clock.now();
        let out = {
            // One lock: no other call sees the parent without its children.
            let mut st = self.lock();
            let parent = st.insert(parent, now);
            // A deduplicated parent already has its children: nothing new is added.
            let children = if parent.created { children } else { Vec::new() };
            let children = children
                .into_iter()
                .map(|mut c| {
                    c.parent_id = Some(parent.id);
                    st.insert(c, now)
                })
                .collect();
            (parent, children)
        };
        self.wake();
        Ok(out)
    }

    async fn dequeue(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        let now = self.clock.now();
        let expires_at = add(now, params.lease_duration);
        let mut st = self.lock();
        let st = &mut *st;
        // Gather candidates across queues in global claim order.
        let mut picked: Vec<ReadyKey> = Vec::with_capacity(params.limit.min(1024));
        // Whether any candidate has a serial key: most batches have none, and skip the
        // serial pass below.
        let mut serial = false;
        for q in &params.queues {
            if st.paused_queues.contains(q) {
                continue;
            }
            let Some(set) = st.ready.get(q) else { continue };
            let cap = st
                .rate_limits
                .get(q)
                .map_or(params.limit, |w| w.left(now).min(params.limit));
            let mut taken = 0;
            // One range per priority, ending at run_at <= now, then a jump to the next
            // priority: jobs due later and parked workflows are never visited.
            let mut next = set.first().copied();
            while let (Some(first), true) = (next, taken < cap) {
                let due =
                    (first.0, DateTime::<Utc>::MIN_UTC, JobId::MIN)..=(first.0, now, JobId::MAX);
                for key in set.range(due) {
                    if taken >= cap {
                        break;
                    }
                    let Some(job) = st.jobs.get(&key.2) else {
                        continue;
                    };
                    if !params.tasks.is_empty() && !params.tasks.contains(&job.task) {
                        continue;
                    }
                    if job.flags.iter().any(|f| params.forbidden_flags.contains(f)) {
                        continue;
                    }
                    serial |= job.serial_key.is_some();
                    picked.push(*key);
                    taken += 1;
                }
                let past = (first.0, DateTime::<Utc>::MAX_UTC, JobId::MAX);
                next = set
                    .range((Bound::Excluded(past), Bound::Unbounded))
                    .next()
                    .copied();
            }
        }
        picked.sort();
        // At most one job per serial key runs: skip keys running now, and take only the
        // first job of each key in this batch.
        if serial {
            let mut batch_keys = HashSet::new();
            picked.retain(
                |key| match st.jobs.get(&key.2).and_then(|j| j.serial_key.as_ref()) {
                    Some(k) => {
                        let running = st.serial_running.get(k).map_or(0, HashSet::len);
                        let limit = st.key_limits.get(k).copied().unwrap_or(1) as usize;
                        running < limit && batch_keys.insert(k.clone())
                    }
                    None => true,
                },
            );
        }
        picked.truncate(params.limit);
        if !st.rate_limits.is_empty() {
            let mut started: HashMap<String, u32> = HashMap::new();
            for key in &picked {
                if let Some(job) = st.jobs.get(&key.2) {
                    if st.rate_limits.contains_key(&job.queue) {
                        *started.entry(job.queue.clone()).or_default() += 1;
                    }
                }
            }
            for (queue, n) in started {
                if let Some(w) = st.rate_limits.get_mut(&queue) {
                    w.record(now, n);
                }
            }
        }
        let token = new_lease_token();
        let mut out = Vec::with_capacity(picked.len());
        let mut running = st.running.remove(&expires_at).unwrap_or_default();
        running.reserve(picked.len());
        for key in picked {
            // Memory knows exactly: the job's first durable call need not ask.
            let none = st.checkpoints.get(&key.2).is_none_or(BTreeMap::is_empty);
            let Some(mut slot) = st.jobs.get_mut(&key.2) else {
                continue;
            };
            // Nothing else holds a claimable job, so this changes it in place.
            let job = &mut *slot;
            if let Some(set) = st.ready.get_mut(&job.queue) {
                // Claims mostly take a queue's first jobs: popping skips the search.
                if set.first() == Some(&key) {
                    set.pop_first();
                } else {
                    set.remove(&key);
                }
            }
            if !st.wake_requested.is_empty() {
                st.wake_requested.remove(&job.id);
            }
            job.status = JobStatus::Running;
            job.attempt += 1;
            job.started_at = Some(now);
            job.updated_at = now;
            job.lease = Some(LeaseInfo {
                holder: params.holder.clone(),
                token,
                expires_at,
            });
            running.insert(job.id);
            if let Some(k) = &job.serial_key {
                st.serial_running
                    .entry(k.clone())
                    .or_default()
                    .insert(job.id);
            }
            out.push(
                ClaimedJob::new(Arc::clone(slot.shared()), token, expires_at)
                    .with_no_checkpoints(none),
            );
        }
        if !running.is_empty() {
            st.running.insert(expires_at, running);
        }
        Ok(out)
    }

    async fn complete(&self, lease: &Lease, result: Value) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.leased(lease)?.result = Some(result);
        st.close_attempt(lease.job_id, AttemptOutcome::Completed, None, now);
        st.finish(lease.job_id, JobStatus::Completed, now);
        Ok(())
    }

    async fn complete_many(&self, items: Vec<Completion>) -> Result<Vec<Result<()>>> {
        let now = self.clock.now();
        let mut st = self.lock();
        let out = items
            .into_iter()
            .map(|c| {
                st.leased(&c.lease)?.result = Some(c.result);
                st.close_attempt(c.lease.job_id, AttemptOutcome::Completed, None, now);
                st.finish_quietly(c.lease.job_id, JobStatus::Completed, now);
                Ok(())
            })
            .collect();
        // One wake for the whole batch: waiters look at their jobs again either way.
        st.bump_finished();
        Ok(out)
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<()> {
        let now = self.clock.now();
        let retry = {
            let mut st = self.lock();
            let job = st.leased(lease)?;
            job.last_error = Some(failure.error.clone());
            let outcome = match failure.retry_in {
                Some(_) => AttemptOutcome::Retrying,
                None => AttemptOutcome::Failed,
            };
            st.close_attempt(lease.job_id, outcome, Some(failure.error), now);
            match failure.retry_in {
                Some(d) => {
                    st.requeue(lease.job_id, JobStatus::Retrying, add(now, d), now);
                    true
                }
                None => {
                    st.finish(lease.job_id, JobStatus::Failed, now);
                    false
                }
            }
        };
        if retry {
            self.wake();
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let now = self.clock.now();
        {
            let mut st = self.lock();
            st.leased(lease)?;
            st.close_attempt(lease.job_id, AttemptOutcome::Released, None, now);
            let job = st.leased(lease)?;
            job.attempt -= 1;
            let status = if job.attempt > 0 {
                JobStatus::Retrying
            } else {
                JobStatus::Pending
            };
            st.requeue(lease.job_id, status, now, now);
        }
        self.wake();
        Ok(())
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.leased(lease)?;
        st.close_attempt(lease.job_id, AttemptOutcome::Snoozed, None, now);
        let job = st.leased(lease)?;
        job.attempt -= 1;
        let status = if job.attempt > 0 {
            JobStatus::Retrying
        } else {
            JobStatus::Pending
        };
        st.requeue(lease.job_id, status, add(now, delay), now);
        Ok(())
    }

    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        let job = st.leased(lease)?;
        job.progress = Some(progress);
        job.updated_at = now;
        Ok(())
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Lease> {
        let expires_at = add(self.clock.now(), extend);
        self.lock().renew(lease, expires_at)
    }

    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Result<Lease>>> {
        let expires_at = add(self.clock.now(), extend);
        let mut st = self.lock();
        Ok(leases.iter().map(|l| st.renew(l, expires_at)).collect())
    }

    async fn release_stale_locks(&self) -> Result<StaleLocks> {
        let now = self.clock.now();
        let mut released = Vec::new();
        {
            let mut st = self.lock();
            // By expiry, then id, as one ordered index would give them.
            let mut expired: Vec<(DateTime<Utc>, JobId)> = st
                .running
                .range(..=now)
                .flat_map(|(exp, ids)| ids.iter().map(|id| (*exp, *id)))
                .collect();
            expired.sort_unstable();
            let expired = expired.into_iter().map(|(_, id)| id);
            for id in expired {
                // (The status changes below, through `requeue` or `finish`.)
                let Some(job) = st.jobs.get_mut_untracked(&id) else {
                    continue;
                };
                let error = "lease expired: the worker stopped heartbeating".to_string();
                job.last_error = Some(error.clone());
                let status = if job.attempt < job.max_attempts {
                    JobStatus::Retrying
                } else {
                    JobStatus::Failed
                };
                let (attempt, queue, task) = (job.attempt, job.queue.clone(), job.task.clone());
                st.close_attempt(id, AttemptOutcome::Reclaimed, Some(error), now);
                released.push(ReleasedJob {
                    job_id: id,
                    queue,
                    task,
                    attempt,
                    status,
                });
                if status == JobStatus::Retrying {
                    st.requeue(id, JobStatus::Retrying, now, now);
                } else {
                    st.finish(id, JobStatus::Failed, now);
                }
            }
        }
        let parents_woken = self.lock().heal_waiting_parents(now);
        if !released.is_empty() || parents_woken > 0 {
            self.wake();
        }
        Ok(StaleLocks {
            released,
            parents_woken,
        })
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Checkpoint) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.leased(lease)?;
        st.checkpoints.entry(lease.job_id).or_default().insert(
            checkpoint.key.clone(),
            Checkpoint {
                created_at: Some(now),
                ..checkpoint
            },
        );
        Ok(())
    }

    async fn list_checkpoints(&self, job_id: JobId) -> Result<Vec<Checkpoint>> {
        Ok(self
            .lock()
            .checkpoints
            .get(&job_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn delete_checkpoints(&self, job_id: JobId) -> Result<u64> {
        Ok(self
            .lock()
            .checkpoints
            .remove(&job_id)
            .map(|m| m.len() as u64)
            .unwrap_or(0))
    }

    async fn get_job(&self, job_id: JobId) -> Result<Option<Job>> {
        Ok(self.lock().jobs.get(&job_id).map(|j| Job::clone(j)))
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        filter.validate()?;
        let st = self.lock();
        let mut jobs: Vec<&Job> = st
            .jobs
            .values()
            .map(|j| &**j)
            .filter(|j| st.matches(j, &filter))
            .collect();
        jobs.sort_by_key(|j| j.id);
        Ok(jobs
            .into_iter()
            .take(filter.limit.unwrap_or(100))
            .cloned()
            .collect())
    }

    async fn counts(&self) -> Result<Vec<QueueCount>> {
        // Kept as jobs are written (see `jobs.rs`): one entry per queue, not per job.
        Ok(self.lock().jobs.counts())
    }

    async fn cancel(&self, job_id: JobId) -> Result<bool> {
        let now = self.clock.now();
        let mut st = self.lock();
        let Some(job) = st.jobs.get(&job_id).cloned() else {
            return Err(Error::JobNotFound(job_id));
        };
        if job.status.is_finished() {
            return Ok(false);
        }
        for id in st.subtree(job_id) {
            let Some(j) = st.jobs.get(&id).cloned() else {
                continue;
            };
            if j.status.is_finished() {
                continue;
            }
            if j.status.is_claimable() || j.status == JobStatus::Waiting {
                st.unready(&j);
            }
            st.close_attempt(id, AttemptOutcome::Cancelled, None, now);
            st.finish(id, JobStatus::Cancelled, now);
        }
        Ok(true)
    }

    fn wakeups(&self) -> Option<watch::Receiver<u64>> {
        Some(self.wake.subscribe())
    }

    fn finishes(&self) -> Option<watch::Receiver<u64>> {
        self.lock().finished.as_ref().map(|f| f.subscribe())
    }

    async fn suspend(&self, lease: &Lease, wake_at: Option<DateTime<Utc>>) -> Result<()> {
        let now = self.clock.now();
        {
            let mut st = self.lock();
            st.leased(lease)?;
            st.close_attempt(lease.job_id, AttemptOutcome::Suspended, None, now);
            let job = st.leased(lease)?;
            job.attempt -= 1;
            let woken = st.wake_requested.remove(&lease.job_id);
            let at = if woken {
                now
            } else {
                wake_at.unwrap_or_else(far_future)
            };
            st.requeue(lease.job_id, JobStatus::Waiting, at, now);
        }
        self.wake();
        Ok(())
    }

    async fn spawn_children(&self, params: SpawnChildrenParams<'_>) -> Result<Vec<JobId>> {
        let SpawnChildrenParams {
            lease,
            key,
            name,
            jobs,
        } = params;
        let now = self.clock.now();
        let ids = {
            let mut st = self.lock();
            st.leased(lease)?;
            let ids: Vec<JobId> = jobs
                .into_iter()
                .map(|mut j| {
                    j.parent_id = Some(lease.job_id);
                    st.insert(j, now).id
                })
                .collect();
            st.checkpoints.entry(lease.job_id).or_default().insert(
                key.to_string(),
                Checkpoint {
                    key: key.to_string(),
                    name: name.to_string(),
                    outcome: CheckpointOutcome::Ok(serde_json::json!(ids)),
                    created_at: Some(now),
                    args_hash: None,
                },
            );
            ids
        };
        self.wake();
        Ok(ids)
    }

    async fn send_signal(&self, job_id: JobId, name: &str, payload: Value) -> Result<()> {
        let now = self.clock.now();
        {
            let mut st = self.lock();
            let Some(job) = st.jobs.get(&job_id) else {
                return Err(Error::JobNotFound(job_id));
            };
            if job.status.is_finished() {
                return Err(Error::JobFinished {
                    job_id,
                    status: job.status.to_string(),
                });
            }
            st.signals
                .entry((job_id, name.to_string()))
                .or_default()
                .push_back(payload);
            st.wake_job(job_id, now);
        }
        self.wake();
        Ok(())
    }

    async fn take_signals(&self, params: TakeSignalsParams<'_>) -> Result<Vec<Value>> {
        let TakeSignalsParams {
            lease,
            name,
            limit,
            key,
        } = params;
        let mut st = self.lock();
        st.leased(lease)?;
        let taken: Vec<Value> = match st.signals.get_mut(&(lease.job_id, name.to_string())) {
            Some(q) => {
                let n = limit.min(q.len());
                q.drain(..n).collect()
            }
            None => Vec::new(),
        };
        if !taken.is_empty() {
            st.checkpoints.entry(lease.job_id).or_default().insert(
                key.to_string(),
                Checkpoint {
                    key: key.to_string(),
                    name: format!("signal:{name}"),
                    outcome: CheckpointOutcome::Ok(Value::Array(taken.clone())),
                    created_at: Some(self.clock.now()),
                    args_hash: None,
                },
            );
        }
        Ok(taken)
    }

    async fn peek_signal(&self, job_id: JobId, name: &str) -> Result<Option<Value>> {
        Ok(self
            .lock()
            .signals
            .get(&(job_id, name.to_string()))
            .and_then(|q| q.front().cloned()))
    }

    // ----- Workflows: group-committed checkpoints -----

    async fn checkpoint_many(&self, items: Vec<CheckpointWrite>) -> Result<Vec<Result<()>>> {
        let now = self.clock.now();
        // One lock for the batch: the items land together, as one commit would.
        let mut st = self.lock();
        Ok(items
            .into_iter()
            .map(|item| {
                st.leased(&item.lease)?;
                st.checkpoints.entry(item.lease.job_id).or_default().insert(
                    item.checkpoint.key.clone(),
                    Checkpoint {
                        created_at: Some(now),
                        ..item.checkpoint
                    },
                );
                Ok(())
            })
            .collect())
    }

    async fn delete_job(&self, job_id: JobId) -> Result<bool> {
        let mut st = self.lock();
        let Some(job) = st.jobs.get(&job_id).cloned() else {
            return Ok(false);
        };
        if job.status == JobStatus::Running {
            return Err(Error::InvalidState {
                job_id,
                status: job.status.to_string(),
                operation: "delete",
            });
        }
        st.remove_job(&job);
        Ok(true)
    }

    async fn delete_jobs(&self, filter: JobFilter) -> Result<DeletedBatch> {
        filter.validate()?;
        let mut st = self.lock();
        let st = &mut *st;
        let mut candidates: Vec<JobId> = st
            .jobs
            .values()
            .filter(|j| j.status != JobStatus::Running)
            .filter(|j| j.parent_id.is_none_or(|p| !st.jobs.contains_key(&p)))
            .filter(|j| st.matches(j, &filter))
            .map(|j| j.id)
            .collect();
        candidates.sort_unstable();
        candidates.truncate(filter.limit.unwrap_or(100));
        let mut deleted = 0;
        for &root in &candidates {
            let tree: Vec<Arc<Job>> = st
                .subtree(root)
                .iter()
                .filter_map(|id| st.jobs.get(id).cloned())
                .collect();
            if tree.iter().any(|j| j.status == JobStatus::Running) {
                continue;
            }
            for job in &tree {
                st.remove_job(job);
                st.children.remove(&job.id);
                deleted += 1;
            }
        }
        Ok(DeletedBatch {
            deleted,
            last_id: candidates.last().copied(),
        })
    }

    async fn upsert_schedule(
        &self,
        name: &str,
        definition: Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut st = self.lock();
        st.schedules
            .entry(name.to_string())
            .and_modify(|r| r.definition = definition.clone())
            .or_insert_with(|| ScheduleRecord {
                name: name.to_string(),
                definition,
                paused: false,
                cursor: now,
                last_job_id: None,
            });
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        Ok(match self.lock().schedules.get_mut(name) {
            Some(r) => {
                r.paused = paused;
                true
            }
            None => false,
        })
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        Ok(self.lock().schedules.remove(name).is_some())
    }

    async fn advance_schedule(
        &self,
        params: AdvanceScheduleParams<'_>,
    ) -> Result<Option<Vec<JobId>>> {
        let AdvanceScheduleParams {
            name,
            from,
            to,
            jobs,
        } = params;
        let now = self.clock.now();
        let ids = {
            let mut st = self.lock();
            match st.schedules.get(name) {
                Some(r) if r.cursor == from => {}
                _ => return Ok(None),
            }
            let ids: Vec<JobId> = jobs.into_iter().map(|j| st.insert(j, now).id).collect();
            if let Some(r) = st.schedules.get_mut(name) {
                r.cursor = to;
                if let Some(&last) = ids.last() {
                    r.last_job_id = Some(last);
                }
            }
            ids
        };
        if !ids.is_empty() {
            self.wake();
        }
        Ok(Some(ids))
    }

    async fn retry_jobs(&self, ids: &[JobId], keep_checkpoints: bool) -> Result<u64> {
        let now = self.clock.now();
        let mut n = 0;
        {
            let mut st = self.lock();
            for &id in ids {
                let Some(job) = st.jobs.get(&id).cloned() else {
                    continue;
                };
                if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
                    continue;
                }
                if !keep_checkpoints {
                    st.checkpoints.remove(&id);
                }
                // The key comes back only if no other unfinished job took it meanwhile.
                let key_free = job
                    .dedupe_key
                    .as_ref()
                    .is_some_and(|k| !st.dedupe.contains_key(k));
                st.unindex_finished(&job);
                if let Some(mut j) = st.jobs.get_mut(&id) {
                    let j = &mut *j;
                    j.attempt = 0;
                    j.completed_at = None;
                    j.result = None;
                    if !key_free {
                        j.dedupe_key = None;
                    }
                }
                if key_free {
                    if let Some(k) = job.dedupe_key.clone() {
                        st.dedupe.insert(k, id);
                    }
                }
                st.requeue(id, JobStatus::Pending, now, now);
                n += 1;
            }
        }
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    async fn reschedule_job(&self, job_id: JobId, run_at: DateTime<Utc>) -> Result<bool> {
        let now = self.clock.now();
        let mut st = self.lock();
        let Some(job) = st.jobs.get(&job_id).cloned() else {
            return Err(Error::JobNotFound(job_id));
        };
        if !(job.status.is_claimable() || job.status == JobStatus::Waiting) {
            return Ok(false);
        }
        st.unready(&job);
        st.requeue(job_id, job.status, run_at, now);
        Ok(true)
    }

    async fn finish_jobs(&self, ids: &[JobId], outcome: ManualOutcome) -> Result<u64> {
        let now = self.clock.now();
        let mut st = self.lock();
        let mut n = 0;
        for &id in ids {
            let Some(job) = st.jobs.get(&id).cloned() else {
                continue;
            };
            if job.status.is_finished() || job.status == JobStatus::Running {
                continue;
            }
            st.unready(&job);
            let status = match &outcome {
                ManualOutcome::Complete(v) => {
                    if let Some(mut j) = st.jobs.get_mut(&id) {
                        j.result = Some(v.clone());
                    }
                    JobStatus::Completed
                }
                ManualOutcome::Fail(e) => {
                    if let Some(mut j) = st.jobs.get_mut(&id) {
                        j.last_error = Some(e.clone());
                    }
                    JobStatus::Failed
                }
            };
            st.finish(id, status, now);
            n += 1;
        }
        Ok(n)
    }

    async fn purge_finished(&self, older_than: DateTime<Utc>) -> Result<u64> {
        let mut st = self.lock();
        let doomed = st.finished_before(older_than);
        for j in &doomed {
            st.remove_job(j);
        }
        Ok(doomed.len() as u64)
    }

    async fn purge_retained(&self, batch: RetentionBatch) -> Result<RetentionPurged> {
        // A batch is CPU work under the one lock (1-2 ms for 1000 jobs): run back to back
        // beside a drain, the drain kept 0.35-0.66x of its rate (bench `retention`).
        // While claims and completions take the lock, wait out the share of it retention
        // is owed (as the SQLite writer's background lane does); when nothing else does,
        // go at once.
        let wait = {
            let foreground = self.state.lock().foreground;
            let mut bg = self.background.lock();
            let now = Instant::now();
            bg.share.arrived(now);
            if foreground == bg.foreground_seen {
                Duration::ZERO
            } else {
                bg.share.wait(now)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let start = Instant::now();
        // Not `lock()`: this batch is not foreground work.
        let mut st = self.state.lock();
        let purged = st.purge_retained(batch);
        let foreground = st.foreground;
        // Hand the lock to a claim or completion waiting for it, if any.
        MutexGuard::unlock_fair(st);
        let mut bg = self.background.lock();
        bg.share.ran(start, Instant::now());
        bg.foreground_seen = foreground;
        Ok(purged)
    }

    async fn set_key_limit(&self, key: &str, max_running: Option<u32>) -> Result<()> {
        {
            let mut st = self.lock();
            match max_running {
                Some(n) => st.key_limits.insert(key.to_string(), n),
                None => st.key_limits.remove(key),
            };
        }
        self.wake();
        Ok(())
    }

    async fn key_limits(&self) -> Result<Vec<(String, u32)>> {
        Ok(self
            .lock()
            .key_limits
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect())
    }

    async fn set_queue_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        {
            let mut st = self.lock();
            match limit {
                Some(limit) => {
                    // A changed limit keeps the current window and its count.
                    let w = st
                        .rate_limits
                        .entry(queue.to_string())
                        .or_insert(RateWindow {
                            limit,
                            opened: None,
                            starts: 0,
                        });
                    w.limit = limit;
                }
                None => {
                    st.rate_limits.remove(queue);
                }
            }
        }
        self.wake();
        Ok(())
    }

    async fn queue_rate_limits(&self) -> Result<Vec<(String, RateLimit)>> {
        Ok(self
            .lock()
            .rate_limits
            .iter()
            .map(|(q, w)| (q.clone(), w.limit))
            .collect())
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        {
            let mut st = self.lock();
            if paused {
                st.paused_queues.insert(queue.to_string());
            } else {
                st.paused_queues.remove(queue);
            }
        }
        if !paused {
            self.wake();
        }
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>> {
        Ok(self.lock().paused_queues.iter().cloned().collect())
    }

    async fn register_worker(&self, mut worker: WorkerRecord) -> Result<()> {
        worker.last_seen = self.clock.now();
        self.lock().workers.insert(worker.name.clone(), worker);
        Ok(())
    }

    async fn touch_worker(&self, name: &str) -> Result<bool> {
        let now = self.clock.now();
        Ok(match self.lock().workers.get_mut(name) {
            Some(w) => {
                w.last_seen = now;
                true
            }
            None => false,
        })
    }

    async fn deregister_worker(&self, name: &str) -> Result<bool> {
        Ok(self.lock().workers.remove(name).is_some())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(self.lock().workers.values().cloned().collect())
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut st = self.lock();
        let n = st.workers.len();
        st.workers.retain(|_, w| w.last_seen >= before);
        Ok((n - st.workers.len()) as u64)
    }

    async fn finished_counts(&self, since: DateTime<Utc>) -> Result<Vec<QueueCount>> {
        let st = self.lock();
        let mut by: BTreeMap<(String, JobStatus), u64> = BTreeMap::new();
        for j in st.jobs.values() {
            if j.status.is_finished() && j.completed_at.is_some_and(|t| t >= since) {
                *by.entry((j.queue.clone(), j.status)).or_default() += 1;
            }
        }
        Ok(by
            .into_iter()
            .map(|((queue, status), count)| QueueCount {
                queue,
                status,
                count,
            })
            .collect())
    }

    async fn list_attempts(&self, job_id: JobId) -> Result<Vec<AttemptRecord>> {
        let st = self.lock();
        let mut out = match st.attempts.get(job_id) {
            None => Vec::new(),
            Some(Attempts::One(r)) => vec![(**r).clone()],
            Some(Attempts::Many(all)) => all.clone(),
        };
        if let Some(job) = st
            .jobs
            .get(&job_id)
            .filter(|j| j.status == JobStatus::Running)
        {
            out.push(AttemptRecord {
                attempt: job.attempt,
                worker: job.lease.as_ref().map(|l| l.holder.clone()),
                started_at: job.started_at.unwrap_or(job.updated_at),
                finished_at: None,
                outcome: AttemptOutcome::Running,
                error: None,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable_jobs::RetentionPolicy;
    use serde_json::json;

    /// The finish-time lists must hold exactly the finished jobs, each under its final
    /// status and finish time: retention reads nothing else.
    fn assert_lists_match_the_jobs(s: &MemoryStorage, when: &str) {
        let st = s.lock();
        let mut want: [BTreeMap<DateTime<Utc>, IdSet>; 3] = Default::default();
        for j in st.jobs.values() {
            if let (Some(slot), Some(at)) = (final_slot(j.status), j.completed_at) {
                want[slot].entry(at).or_default().insert(j.id);
            }
        }
        assert_eq!(st.by_finish, want, "{when}");
    }

    async fn claim_all(s: &MemoryStorage) -> Vec<ClaimedJob> {
        s.dequeue(DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["t".into()],
            limit: 100,
            lease_duration: Duration::from_secs(30),
            holder: "test".into(),
            forbidden_flags: Vec::new(),
        })
        .await
        .expect("dequeue")
    }

    /// Ten finished jobs, finished a day before the clock's now.
    async fn finished_jobs(s: &MemoryStorage, clock: &ManualClock) {
        for i in 0..10 {
            s.enqueue(NewJob::new("t", json!(i)))
                .await
                .expect("enqueue");
        }
        for c in claim_all(s).await {
            s.complete(&c.lease, json!("ok")).await.expect("complete");
        }
        clock.advance(Duration::from_secs(2 * 86_400));
    }

    /// Whether a retention batch of one tree waited out a share of the lock: on a paused
    /// runtime a wait moves the runtime's clock and nothing else does.
    async fn batch_waited(s: &MemoryStorage, clock: &ManualClock) -> bool {
        let batch = RetentionPolicy::default().batch(clock.now(), 1);
        let before = tokio::time::Instant::now();
        let p = s.purge_retained(batch).await.expect("purge");
        assert_eq!(p.roots, 1);
        tokio::time::Instant::now() > before
    }

    /// Records a retention batch that took a second and just ended: the next one owes
    /// nine (at the starting share of a tenth) if other work takes the lock meanwhile.
    fn a_long_batch_just_ended(s: &MemoryStorage) {
        let end = Instant::now();
        let start = end.checked_sub(Duration::from_secs(1)).unwrap_or(end);
        s.background.lock().share.ran(start, end);
    }

    #[tokio::test(start_paused = true)]
    async fn retention_waits_its_share_only_while_other_work_takes_the_lock() {
        let clock = ManualClock::new();
        let s = MemoryStorage::with_clock(clock.clone());
        finished_jobs(&s, &clock).await;
        // Nothing has run yet: the first batch owes nothing.
        assert!(!batch_waited(&s, &clock).await);
        // Nobody else took the lock since: the store is idle, batches go back to back,
        // whatever they owe.
        a_long_batch_just_ended(&s);
        assert!(!batch_waited(&s, &clock).await);
        // A read between batches is other work: the next batch waits its turn.
        a_long_batch_just_ended(&s);
        s.get_job(1).await.expect("get");
        assert!(batch_waited(&s, &clock).await);
        assert!(!batch_waited(&s, &clock).await);
    }

    #[tokio::test]
    async fn finish_time_lists_follow_every_way_a_job_finishes_or_goes() {
        let clock = ManualClock::new();
        let s = MemoryStorage::with_clock(clock.clone());
        let mut ids = Vec::new();
        for i in 0..6 {
            let mut job = NewJob::new("t", json!(i));
            job.max_attempts = 1;
            ids.push(s.enqueue(job).await.expect("enqueue").id);
        }
        let claimed = claim_all(&s).await;
        assert_eq!(claimed.len(), 6);
        let failure = |retry_in| Failure {
            error: "boom".into(),
            retry_in,
        };
        s.complete(&claimed[0].lease, json!(0))
            .await
            .expect("complete");
        let many = s
            .complete_many(vec![Completion {
                lease: claimed[1].lease.clone(),
                result: json!(1),
            }])
            .await
            .expect("complete_many");
        assert!(many.iter().all(Result::is_ok));
        s.fail(&claimed[2].lease, failure(None))
            .await
            .expect("fail");
        s.fail(&claimed[3].lease, failure(Some(Duration::from_secs(60))))
            .await
            .expect("fail to retry");
        let pending = s
            .enqueue(NewJob::new("t", json!("p")))
            .await
            .expect("enqueue")
            .id;
        assert!(s.cancel(pending).await.expect("cancel"));
        assert_lists_match_the_jobs(&s, "after complete, complete_many, fail, cancel");

        clock.advance(Duration::from_secs(1));
        let t1 = s.now().await.expect("now");
        assert_eq!(
            s.retry_jobs(&[ids[2], pending], false)
                .await
                .expect("retry"),
            2
        );
        assert_lists_match_the_jobs(&s, "after a retry by hand");
        let outcome = ManualOutcome::Complete(json!("by hand"));
        assert_eq!(
            s.finish_jobs(&[ids[2]], outcome)
                .await
                .expect("finish_jobs"),
            1
        );
        assert!(s.finish_out_of_band(ids[4], JobStatus::Cancelled));
        assert_lists_match_the_jobs(&s, "after finishing by hand and out of band");

        assert!(s.delete_job(ids[0]).await.expect("delete"));
        assert_lists_match_the_jobs(&s, "after a delete");
        clock.advance(Duration::from_secs(1));
        let cut = s.now().await.expect("now");
        let purged = s.purge_finished(t1).await.expect("purge_finished");
        assert_eq!(purged, 1, "only the second job finished before the retry");
        assert_lists_match_the_jobs(&s, "after purge_finished");
        let batch = RetentionBatch {
            completed_before: Some(cut),
            failed_before: Some(cut),
            cancelled_before: Some(cut),
            limit: 100,
        };
        let p = s.purge_retained(batch).await.expect("purge_retained");
        assert_eq!((p.completed, p.failed, p.cancelled), (1, 0, 1));
        assert_lists_match_the_jobs(&s, "after a retention batch");
        assert!(s.lock().by_finish.iter().all(BTreeMap::is_empty));
    }
}
