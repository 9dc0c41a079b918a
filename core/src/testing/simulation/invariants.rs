//! The checks a seed must pass, from storage state, the fault log (what the backend
//! accepted, on one sequence) and the handlers' execution log.
//!
//! Orderings are judged only where the log proves them: an event whose sequence number
//! is above another call's `ended` happened after that call returned, hence after its
//! write committed.

use super::driver::Record;
use super::scenario::{Exec, Kind, Shared, TICK_PERIOD, TICK_TASK};
use crate::testing::fault::CallRecord;
use crate::{Checkpoint, CheckpointOutcome, Job, JobFilter, JobId, JobStatus, Storage};
use std::collections::{BTreeSet, HashMap};

/// Counts beside the violations.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Observed {
    /// Bodies run again by an attempt whose lease another claim had already replaced:
    /// a stopped or lease-lost worker's code running on (fencing refuses its writes).
    pub(crate) zombie_runs: u64,
    /// Jobs in storage at the end.
    pub(crate) jobs: u64,
    /// Handler and body executions logged.
    pub(crate) executions: u64,
}

const FINAL_WRITES: [&str; 5] = ["complete", "complete_many", "fail", "suspend", "release"];

/// Checks every invariant; returns the violations (empty when the seed passed).
pub(crate) async fn check(
    storage: &dyn Storage,
    rec: &Record,
    shared: &Shared,
) -> crate::Result<(Vec<String>, Observed)> {
    let mut v = Vec::new();
    let jobs = all_jobs(storage).await?;
    let by_id: HashMap<JobId, &Job> = jobs.iter().map(|j| (j.id, j)).collect();
    let mut checkpoints = HashMap::new();
    for j in &jobs {
        checkpoints.insert(j.id, storage.list_checkpoints(j.id).await?);
    }
    let records = shared.log.records();
    let execs = shared.execs();
    let obs = Observed {
        jobs: jobs.len() as u64,
        executions: execs.len() as u64,
        ..Observed::default()
    };
    nothing_lost(rec, &jobs, &by_id, &mut v);
    outcomes(rec, &by_id, &mut v);
    parents(&jobs, &by_id, &checkpoints, rec, &mut v);
    let claims = claims(&records);
    let obs = reruns(&records, &execs, &claims, obs, &mut v);
    one_final_write(&records, &mut v);
    no_stale_writes(&records, &claims, &mut v);
    ticks(&jobs, &mut v);
    Ok((v, obs))
}

async fn all_jobs(storage: &dyn Storage) -> crate::Result<Vec<Job>> {
    let mut out: Vec<Job> = Vec::new();
    loop {
        let page = storage
            .list_jobs(JobFilter {
                after_id: out.last().map(|j| j.id),
                limit: Some(500),
                ..JobFilter::default()
            })
            .await?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// Every enqueued job exists, and every job finished.
fn nothing_lost(rec: &Record, jobs: &[Job], by_id: &HashMap<JobId, &Job>, v: &mut Vec<String>) {
    for (_, id) in &rec.enqueued {
        if !by_id.contains_key(id) {
            v.push(format!("job {id} was enqueued and is gone"));
        }
    }
    for j in jobs {
        if !j.status.is_finished() {
            v.push(format!(
                "job {} ({}) never finished: still {} (parent {:?})",
                j.id, j.task, j.status, j.parent_id
            ));
        }
    }
}

/// Each top-level item ended as designed: cancelled if cancelled while unfinished, the
/// doomed job failed with its own error, everything else completed.
fn outcomes(rec: &Record, by_id: &HashMap<JobId, &Job>, v: &mut Vec<String>) {
    for (item, id) in &rec.enqueued {
        let Some(j) = by_id.get(id) else { continue };
        let want = if rec.cancelled.contains(id) {
            JobStatus::Cancelled
        } else if matches!(item.kind, Kind::Doomed) {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        };
        if j.status != want && j.status.is_finished() {
            v.push(format!(
                "job {id} ({}) ended {} instead of {want}: {:?}",
                j.task, j.status, j.last_error
            ));
        }
        if want == JobStatus::Failed && !j.last_error.as_deref().unwrap_or("").contains("doomed") {
            v.push(format!(
                "job {id} failed with {:?}, not its own error",
                j.last_error
            ));
        }
    }
}

/// Parents are consistent with their children: a child's parent exists, a workflow's
/// children are exactly those its spawn checkpoints recorded (a replay never spawned
/// twice), and a completed parent's children all finished.
fn parents(
    jobs: &[Job],
    by_id: &HashMap<JobId, &Job>,
    checkpoints: &HashMap<JobId, Vec<Checkpoint>>,
    rec: &Record,
    v: &mut Vec<String>,
) {
    let mut children: HashMap<JobId, BTreeSet<JobId>> = HashMap::new();
    for j in jobs {
        if let Some(p) = j.parent_id {
            if !by_id.contains_key(&p) {
                v.push(format!("job {} has a missing parent {p}", j.id));
            }
            children.entry(p).or_default().insert(j.id);
        }
    }
    // A bundle's members are its children by construction, not by spawn checkpoints.
    // Besides the recorded bundles, a bundle whose enqueue committed but reported an
    // error (an injected fault after the write) was enqueued again by the producer: the
    // first one is a bundle too, recognised by its task.
    let bundles: BTreeSet<JobId> = rec
        .enqueued
        .iter()
        .filter(|(i, _)| matches!(i.kind, Kind::Bundle(_)))
        .map(|(_, id)| *id)
        .chain(
            jobs.iter()
                .filter(|j| j.task == crate::bundle::BUNDLE_TASK)
                .map(|j| j.id),
        )
        .collect();
    for j in jobs {
        let have = children.remove(&j.id).unwrap_or_default();
        if j.status == JobStatus::Completed {
            for c in &have {
                if by_id.get(c).is_some_and(|c| !c.status.is_finished()) {
                    v.push(format!("job {} completed with child {c} unfinished", j.id));
                }
            }
        }
        if bundles.contains(&j.id) {
            continue;
        }
        let spawned: BTreeSet<JobId> = checkpoints
            .get(&j.id)
            .into_iter()
            .flatten()
            .filter(|c| c.name.starts_with("spawn:"))
            .filter_map(|c| match &c.outcome {
                CheckpointOutcome::Ok(ids) => {
                    serde_json::from_value::<Vec<JobId>>(ids.clone()).ok()
                }
                _ => None,
            })
            .flatten()
            .collect();
        if spawned != have {
            v.push(format!(
                "job {}: its spawn checkpoints record children {spawned:?} but its children are {have:?}",
                j.id
            ));
        }
    }
}

/// Each lease's claim, (call started, call ended), by (job, token): a backend may give
/// one token to a whole batch, and fencing is by job and token.
type Claims = HashMap<(JobId, i64), (u64, u64)>;

fn claims(records: &[CallRecord]) -> Claims {
    records
        .iter()
        .flat_map(|r| {
            r.claimed
                .iter()
                .map(move |l| ((l.job_id, l.token), (r.started, r.ended)))
        })
        .collect()
}

/// True when, before `seq`, a claim of `job` with another token returned that certainly
/// came after the claim of `token`: the lease `token` had been replaced by then.
fn replaced_before(claims: &Claims, job: JobId, token: i64, seq: u64) -> bool {
    let Some(&(_, own_end)) = claims.get(&(job, token)) else {
        return false;
    };
    claims
        .iter()
        .any(|(&(j, t), &(s, e))| j == job && t != token && s > own_end && e < seq)
}

/// No step or call body runs after its checkpoint committed, unless it runs in an attempt
/// whose lease was already replaced (counted as a zombie run); no checkpoint commits
/// twice; no handler starts after its job's completion committed.
fn reruns(
    records: &[CallRecord],
    execs: &[Exec],
    claims: &Claims,
    mut obs: Observed,
    v: &mut Vec<String>,
) -> Observed {
    let mut commits: HashMap<(JobId, &str), Vec<(u64, u64)>> = HashMap::new();
    let mut completed: HashMap<JobId, u64> = HashMap::new();
    for r in records.iter().filter(|r| r.backend_ok) {
        for (job, key) in &r.checkpoints {
            commits
                .entry((*job, key.as_str()))
                .or_default()
                .push((r.started, r.ended));
        }
        if r.call == "complete" || r.call == "complete_many" {
            for w in r.writes.iter().filter(|w| w.accepted) {
                let e = completed.entry(w.lease.job_id).or_insert(r.ended);
                *e = (*e).min(r.ended);
            }
        }
    }
    for ((job, key), list) in &commits {
        let first_end = list.iter().map(|c| c.1).min().unwrap_or(0);
        if list.iter().any(|c| c.0 > first_end) {
            v.push(format!("job {job}: checkpoint `{key}` committed twice"));
        }
    }
    for e in execs {
        if e.key.is_empty() {
            if completed.get(&e.job_id).is_some_and(|&end| end < e.seq) {
                // A handler that starts under a lease already replaced (a worker that
                // held a claimed job while stopped) is a zombie, refused at its writes.
                if replaced_before(claims, e.job_id, e.token, e.seq) {
                    obs.zombie_runs += 1;
                } else {
                    v.push(format!(
                        "job {}: its handler started again after its completion committed",
                        e.job_id
                    ));
                }
            }
            continue;
        }
        let Some(list) = commits.get(&(e.job_id, e.key.as_str())) else {
            continue;
        };
        if list.iter().any(|c| c.1 < e.seq) {
            if replaced_before(claims, e.job_id, e.token, e.seq) {
                obs.zombie_runs += 1;
            } else {
                v.push(format!(
                    "job {}: `{}` ran again (lease {}) after its checkpoint committed",
                    e.job_id, e.key, e.token
                ));
            }
        }
    }
    obs
}

/// At most one accepted final write (complete, fail, suspend, release) per attempt's
/// lease, and at most one accepted completion per job.
fn one_final_write(records: &[CallRecord], v: &mut Vec<String>) {
    let mut per_lease: HashMap<(JobId, i64), u32> = HashMap::new();
    let mut per_job: HashMap<JobId, u32> = HashMap::new();
    for r in records.iter().filter(|r| FINAL_WRITES.contains(&r.call)) {
        for w in r.writes.iter().filter(|w| w.accepted) {
            *per_lease
                .entry((w.lease.job_id, w.lease.token))
                .or_default() += 1;
            if r.call.starts_with("complete") {
                *per_job.entry(w.lease.job_id).or_default() += 1;
            }
        }
    }
    for ((job, token), n) in per_lease.into_iter().filter(|(_, n)| *n > 1) {
        v.push(format!(
            "job {job}: {n} final writes accepted under lease {token}"
        ));
    }
    for (job, n) in per_job.into_iter().filter(|(_, n)| *n > 1) {
        v.push(format!("job {job}: {n} completions accepted"));
    }
}

/// No write is accepted under a lease after a later claim of the job returned, or after
/// the same lease's final write returned.
fn no_stale_writes(records: &[CallRecord], claims: &Claims, v: &mut Vec<String>) {
    let mut ended: HashMap<(JobId, i64), u64> = HashMap::new();
    for r in records.iter().filter(|r| FINAL_WRITES.contains(&r.call)) {
        for w in r.writes.iter().filter(|w| w.accepted) {
            let e = ended
                .entry((w.lease.job_id, w.lease.token))
                .or_insert(r.ended);
            *e = (*e).min(r.ended);
        }
    }
    for r in records {
        for w in r.writes.iter().filter(|w| w.accepted) {
            let (job, token) = (w.lease.job_id, w.lease.token);
            if replaced_before(claims, job, token, r.started) {
                v.push(format!(
                    "job {job}: `{}` accepted under lease {token} after a later claim",
                    r.call
                ));
            }
            if ended.get(&(job, token)).is_some_and(|&e| e < r.started) {
                v.push(format!(
                    "job {job}: `{}` accepted under lease {token} after the attempt ended",
                    r.call
                ));
            }
        }
    }
}

/// Each tick of the schedule enqueued exactly one job, and none was skipped.
fn ticks(jobs: &[Job], v: &mut Vec<String>) {
    let mut ticks: Vec<String> = jobs
        .iter()
        .filter(|j| j.task == TICK_TASK)
        .filter_map(|j| j.payload.pointer("/_cron/ts")?.as_str().map(str::to_string))
        .collect();
    ticks.sort();
    let parsed: Vec<_> = ticks
        .iter()
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .collect();
    if parsed.len() != ticks.len() {
        v.push(format!("tick payloads that do not parse: {ticks:?}"));
    }
    let period = chrono::Duration::seconds(TICK_PERIOD.as_secs() as i64);
    for w in parsed.windows(2) {
        if w[1] - w[0] != period {
            let what = if w[1] == w[0] {
                "fired twice"
            } else {
                "skipped after"
            };
            v.push(format!("schedule tick {} {what}", w[0]));
        }
    }
}
