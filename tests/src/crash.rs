//! What the workflow crash tests share: the side-effect log the worker processes write,
//! process control, a seeded kill schedule, and the check that no checkpointed step ran
//! again.

use durable_jobs::{CheckpointOutcome, JobId, JobStatus, Storage};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// One logged step execution: `<job> <step> <pid> <checkpoint existed: 0|1>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// The workflow job.
    pub job: JobId,
    /// The step's name (`s0` .. `s4`).
    pub step: String,
    /// The worker process that ran it.
    pub pid: u32,
    /// The step's checkpoint already existed when it started.
    pub checkpointed: bool,
}

/// Every execution in the log, in the order they were written.
pub fn executions(log: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "malformed log line `{l}`");
            Execution {
                job: f[0].parse().expect("job id"),
                step: f[1].to_string(),
                pid: f[2].parse().expect("pid"),
                checkpointed: f[3] == "1",
            }
        })
        .collect()
}

/// SIGKILLs a worker that must still be running, and reaps it.
pub fn kill(mut child: Child) {
    if let Some(status) = child.try_wait().expect("poll child") {
        let out = child.wait_with_output().expect("collect output");
        panic!(
            "worker exited by itself ({status}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.kill().expect("SIGKILL the worker");
    child.wait().expect("reap the worker");
}

/// Waits for a child to exit, killing it if it outlives the deadline.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("poll child") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "worker still running after {limit:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Fails with the worker's output unless it exited successfully.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "worker failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small seeded generator (SplitMix64), so a failing kill schedule can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The seed from the environment variable `var` (to replay a run), else the clock.
pub fn seed(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("{var} is a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// Checks the outcome of five-step workflows (workflow `n` returns `[10n .. 10n+4]`)
/// that ran under SIGKILLs: each completed with the right result and all five
/// checkpoints; no step ran while its checkpoint existed; steps ran in order; every
/// re-execution came from a killed process, which cut off at most one step per job and at
/// most `concurrency` in all. Returns how many executions were repeats.
pub async fn verify_workflows(
    storage: &dyn Storage,
    ids: &[JobId],
    runs: &[Execution],
    killed: &HashSet<u32>,
    concurrency: usize,
) -> usize {
    for (n, id) in ids.iter().enumerate() {
        let job = storage.get_job(*id).await.expect("get").expect("exists");
        assert_eq!(job.status, JobStatus::Completed, "job {id}: {job:?}");
        let n = n as i64;
        let want: Vec<i64> = (0..5).map(|k| 10 * n + k).collect();
        assert_eq!(job.result, Some(json!(want)), "job {id}");
        let got: Vec<(String, String, CheckpointOutcome)> = storage
            .list_checkpoints(*id)
            .await
            .expect("checkpoints")
            .into_iter()
            .map(|c| (c.key, c.name, c.outcome))
            .collect();
        let expected: Vec<(String, String, CheckpointOutcome)> = (0..5)
            .map(|k| {
                (
                    k.to_string(),
                    format!("s{k}"),
                    CheckpointOutcome::Ok(json!(10 * n + k)),
                )
            })
            .collect();
        assert_eq!(got, expected, "job {id} checkpoints");
    }
    let stale: Vec<&Execution> = runs.iter().filter(|e| e.checkpointed).collect();
    assert!(
        stale.is_empty(),
        "steps ran after their checkpoint: {stale:?}"
    );
    let mut per_step: BTreeMap<(JobId, String), Vec<&Execution>> = BTreeMap::new();
    let mut last_step: HashMap<JobId, String> = HashMap::new();
    for e in runs {
        if let Some(prev) = last_step.get(&e.job) {
            assert!(
                e.step >= *prev,
                "job {}: step {} ran after step {prev}",
                e.job,
                e.step
            );
        }
        last_step.insert(e.job, e.step.clone());
        per_step.entry((e.job, e.step.clone())).or_default().push(e);
    }
    let mut duplicates = 0;
    let mut cut_per_pid: HashMap<u32, Vec<JobId>> = HashMap::new();
    for id in ids {
        for k in 0..5 {
            let execs = per_step
                .get(&(*id, format!("s{k}")))
                .unwrap_or_else(|| panic!("job {id} step s{k} never ran"));
            for cut in &execs[..execs.len() - 1] {
                assert!(
                    killed.contains(&cut.pid),
                    "job {id} step s{k} ran again although pid {} was not killed: {execs:?}",
                    cut.pid
                );
                cut_per_pid.entry(cut.pid).or_default().push(*id);
                duplicates += 1;
            }
        }
    }
    for (pid, jobs) in &cut_per_pid {
        let distinct: HashSet<&JobId> = jobs.iter().collect();
        assert_eq!(distinct.len(), jobs.len(), "pid {pid} cut one job twice");
        assert!(jobs.len() <= concurrency, "pid {pid} cut {jobs:?}");
    }
    assert!(duplicates <= killed.len() * concurrency);
    duplicates
}
