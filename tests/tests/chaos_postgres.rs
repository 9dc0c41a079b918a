//! Chaos on a real PostgreSQL server, a throwaway cluster this test starts with `initdb`
//! and `pg_ctl` (never the shared server): worker processes (`chaos_worker`) run plain
//! jobs and three-step workflows while the test SIGKILLs workers at random (starting a
//! replacement each time), SIGSTOPs one that holds jobs until every lease it held was
//! reclaimed elsewhere and then resumes it (its late writes must be refused), and
//! restarts the server mid-run. Checked afterwards, in SQL and from the workers'
//! execution log:
//! - 0 jobs lost: every job completed, every workflow with its three checkpoints;
//! - 0 stale writes accepted: each job's result comes from its last attempt, and the
//!   stopped worker reports its late outcomes as lost;
//! - no checkpointed step ran again, except in the stopped worker (its code runs on;
//!   fencing refuses its writes);
//! - every duplicate execution is explained by a kill, the stop, or the restart (it
//!   started while the server was going down or before the leases could be renewed).
//!
//! `DJ_CHAOS_SEED` replays a schedule (the seed is printed); `DJ_CHAOS_SCALE=<n>` runs
//! n times the jobs and the chaos (a longer run).

use durable_jobs::{JobOptions, Storage};
use durable_jobs_postgres::sqlx::{self, AssertSqlSafe, Row};
use durable_jobs_postgres::testing::ThrowawayCluster;
use durable_jobs_postgres::{PostgresOptions, PostgresStorage};
use durable_jobs_tests::crash::{seed, Rng};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SCHEMA: &str = "chaos";
// Long enough that a loaded machine does not miss a renewal (a third of it) and lose a
// lease no kill, stop or restart explains.
const LEASE_MS: u64 = 4_000;
const STEP_MS: u64 = 60;
const WORKERS: usize = 3;

/// One logged execution (see `chaos_worker`'s docs for the line format).
#[derive(Debug, Clone)]
struct Exec {
    kind: String,
    job: i64,
    attempt: i32,
    pid: u32,
    key: String,
    existed: bool,
    started: u128,
}

fn read_log(path: &Path) -> Vec<Exec> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 8, "malformed log line `{l}`");
            Exec {
                kind: f[0].to_string(),
                job: f[1].parse().expect("job"),
                attempt: f[2].parse().expect("attempt"),
                pid: f[4].parse().expect("pid"),
                key: f[5].to_string(),
                existed: f[6] == "1",
                started: f[7].parse().expect("micros"),
            }
        })
        .collect()
}

fn micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

struct World {
    cluster: ThrowawayCluster,
    storage: PostgresStorage,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    fn spawn(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_chaos_worker"))
            .args(["--url", self.cluster.url(), "--schema", SCHEMA])
            .arg("--log")
            .arg(&self.log)
            .args(["--lease-ms", &LEASE_MS.to_string()])
            .args(["--step-ms", &STEP_MS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chaos_worker")
    }

    /// One number from SQL, retried while the server restarts.
    async fn count(&self, sql: &str) -> i64 {
        let sql = sql.replace("{s}", SCHEMA);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sqlx::query(AssertSqlSafe(sql.clone()))
                .fetch_one(self.storage.pool())
                .await
                .and_then(|r| r.try_get::<i64, _>(0))
            {
                Ok(n) => return n,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chaos: `{sql}` failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("`{sql}`: {e}"),
            }
        }
    }

    /// Waits until `cond` holds on the count `sql` returns.
    async fn wait_count(&self, sql: &str, what: &str, cond: impl Fn(i64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let n = self.count(sql).await;
            if cond(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what} ({n})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A live worker that holds running jobs, the one with the most, once there is one;
    /// `None` when all work finished first.
    async fn holder(&self, workers: &[Child]) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let holders = sqlx::query(AssertSqlSafe(format!(
                "SELECT lease_holder FROM {SCHEMA}.jobs WHERE status = 'running' \
                 GROUP BY lease_holder ORDER BY count(*) DESC"
            )))
            .fetch_all(self.storage.pool())
            .await
            .unwrap_or_default();
            let pid = holders
                .iter()
                .filter_map(|r| r.try_get::<String, _>(0).ok())
                .filter_map(|h| h.split('-').nth(1)?.parse::<u32>().ok())
                .find(|p| workers.iter().any(|w| w.id() == *p));
            if pid.is_some() {
                return pid;
            }
            if self
                .count("SELECT count(*) FROM {s}.jobs WHERE status <> 'completed'")
                .await
                == 0
            {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits until the log holds at least `lines` executions (or all work finished).
    async fn wait_log(&self, lines: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while read_log(&self.log).len() < lines && Instant::now() < deadline {
            if self
                .count("SELECT count(*) FROM {s}.jobs WHERE status <> 'completed'")
                .await
                == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

fn reported(out: &Output, field: &str) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(field)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no `{field}` in the worker's report; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Kill,
    Stop,
    Restart,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_stopped_and_a_server_restart_lose_nothing() {
    let seed = seed("DJ_CHAOS_SEED");
    let scale: usize = std::env::var("DJ_CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    eprintln!("chaos: seed {seed} (replay with DJ_CHAOS_SEED={seed}), scale {scale}");
    let mut rng = Rng(seed);
    let dir = tempfile::Builder::new()
        .prefix("durable-jobs-chaos-")
        .tempdir()
        .expect("temporary directory");
    let cluster = ThrowawayCluster::start().expect("start a throwaway PostgreSQL cluster");
    let storage = PostgresStorage::connect_with(
        cluster.url(),
        PostgresOptions::new().schema(SCHEMA).max_connections(4),
    )
    .await
    .expect("connect");
    storage.migrate().await.expect("migrate");
    let mut world = World {
        cluster,
        storage,
        log: dir.path().join("executions.log"),
        _dir: dir,
    };
    let (jobs, flows) = (240 * scale, 40 * scale);
    let opts = JobOptions::new().retries(100);
    let mut new = Vec::new();
    for i in 0..jobs {
        new.push(opts.build("chaos.job", json!(i)).expect("job"));
        if i < flows {
            new.push(opts.build("chaos.flow", json!(i)).expect("flow"));
        }
    }
    world.storage.enqueue_many(new).await.expect("enqueue");

    let mut workers: Vec<Child> = (0..WORKERS).map(|_| world.spawn()).collect();
    let mut actions = vec![Action::Stop, Action::Restart];
    actions.extend(std::iter::repeat_n(Action::Kill, 4 * scale));
    for _ in 1..scale {
        actions.extend([Action::Stop, Action::Restart]);
    }
    for i in (1..actions.len()).rev() {
        actions.swap(i, rng.below(i as u64 + 1) as usize);
    }
    // The first stop comes early, while the workers still hold jobs.
    if let Some(i) = actions.iter().position(|a| *a == Action::Stop) {
        actions.swap(i, rng.below(3) as usize);
    }
    let mut killed: HashSet<u32> = HashSet::new();
    let mut stopped: HashSet<u32> = HashSet::new();
    let mut restarts: Vec<(u128, u128)> = Vec::new();
    let mut done = Vec::new();
    let mut progress = 0;
    for action in &actions {
        progress += 10 + rng.below(30) as usize;
        world.wait_log(progress).await;
        match action {
            Action::Kill => {
                // Never the stopped worker: its late writes are what the stop tests.
                let live: Vec<usize> = (0..workers.len())
                    .filter(|&i| !stopped.contains(&workers[i].id()))
                    .collect();
                if live.is_empty() {
                    continue;
                }
                let pick = live[rng.below(live.len() as u64) as usize];
                let mut victim = workers.swap_remove(pick);
                killed.insert(victim.id());
                victim.kill().expect("SIGKILL a worker");
                victim.wait().expect("reap");
                workers.push(world.spawn());
            }
            Action::Stop => {
                // A worker holding running jobs, so its writes come late.
                let Some(pid) = world.holder(&workers).await else {
                    continue;
                };
                stopped.insert(pid);
                signal(pid, "-STOP");
                let held: Vec<i64> = sqlx::query(AssertSqlSafe(format!(
                    "SELECT id FROM {SCHEMA}.jobs WHERE status = 'running' \
                     AND lease_holder LIKE 'worker-{pid}-%'"
                )))
                .fetch_all(world.storage.pool())
                .await
                .expect("held jobs")
                .iter()
                .map(|r| r.get::<i64, _>(0))
                .collect();
                let held = held
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                // Stopped past its lease: wait until other workers reclaimed every job
                // it held and run one of them again, then let it run on, so its late
                // writes meet a job that another attempt holds.
                if !held.is_empty() {
                    // Held here * 10^6 + running elsewhere * 10^3 + unfinished.
                    let sql = format!(
                        "SELECT count(*) FILTER (WHERE status = 'running' \
                             AND lease_holder LIKE 'worker-{pid}-%') * 1000000 \
                         + count(*) FILTER (WHERE status = 'running' \
                             AND lease_holder NOT LIKE 'worker-{pid}-%') * 1000 \
                         + count(*) FILTER (WHERE status <> 'completed') \
                         FROM {{s}}.jobs WHERE id IN ({held})"
                    );
                    world
                        .wait_count(&sql, "the stopped worker's jobs to move", |n| {
                            n < 1_000_000 && (n >= 1_000 || n == 0)
                        })
                        .await;
                }
                signal(pid, "-CONT");
            }
            Action::Restart => {
                let t0 = micros();
                world.cluster.stop().expect("stop the server");
                world.cluster.start_again().expect("start the server again");
                restarts.push((t0, micros()));
            }
        }
        done.push(*action);
    }
    world
        .wait_count(
            "SELECT count(*) FROM {s}.jobs WHERE status <> 'completed'",
            "every job to finish",
            |n| n == 0,
        )
        .await;
    let mut lost_by_stopped = 0;
    for w in workers {
        let pid = w.id();
        signal(pid, "-TERM");
        let out = durable_jobs_tests::crash::wait_with_deadline(w, Duration::from_secs(30));
        assert!(out.status.success(), "worker {pid} failed: {out:?}");
        if stopped.contains(&pid) {
            lost_by_stopped += reported(&out, "lost");
        }
    }

    // 0 jobs lost.
    let total = (jobs + flows) as i64;
    assert_eq!(world.count("SELECT count(*) FROM {s}.jobs").await, total);
    assert_eq!(
        world
            .count("SELECT count(*) FROM {s}.jobs WHERE status = 'completed'")
            .await,
        total
    );
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM {s}.checkpoints c JOIN {s}.jobs j ON j.id = c.job_id \
                 WHERE j.task = 'chaos.flow' AND c.ok IS NOT NULL"
            )
            .await,
        3 * flows as i64,
        "every workflow has its three checkpoints"
    );
    // 0 stale writes accepted: each result (and each step's checkpoint) was written by
    // the job's last attempt.
    assert_eq!(
        world
            .count("SELECT count(*) FROM {s}.jobs WHERE (result->>'attempt')::int <> attempt")
            .await,
        0,
        "a completion from an older attempt was accepted"
    );

    // Accepted executions: the attempt and pid each result and checkpoint names.
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, '-', (result->>'attempt')::int, (result->>'pid')::bigint FROM {SCHEMA}.jobs \
         WHERE task = 'chaos.job' \
         UNION ALL \
         SELECT c.job_id, c.key, (c.ok->>'attempt')::int, (c.ok->>'pid')::bigint \
         FROM {SCHEMA}.checkpoints c"
    )))
    .fetch_all(world.storage.pool())
    .await
    .expect("accepted executions");
    let accepted: HashSet<(i64, String, i32, u32)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>(0),
                r.get::<String, _>(1),
                r.get::<i32, _>(2),
                u32::try_from(r.get::<i64, _>(3)).expect("pid"),
            )
        })
        .collect();
    let execs = read_log(&world.log);
    let lease = u128::from(LEASE_MS) * 1_000;
    let step = u128::from(STEP_MS) * 1_000;
    let in_restart = |t: u128| {
        restarts
            .iter()
            .any(|(a, b)| t + lease + 2 * step >= *a && t <= b + lease)
    };
    let mut per: BTreeMap<(i64, String), Vec<&Exec>> = BTreeMap::new();
    for e in &execs {
        per.entry((e.job, e.key.clone())).or_default().push(e);
    }
    let (mut by_kill, mut by_stop, mut by_restart, mut zombie_steps) = (0, 0, 0, 0);
    let mut unexplained = Vec::new();
    for ((job, key), list) in &per {
        for e in list {
            if e.kind == "step" && e.existed {
                if stopped.contains(&e.pid) {
                    zombie_steps += 1;
                } else {
                    unexplained.push(format!("checkpointed step ran again: {e:?}"));
                }
            }
            if accepted.contains(&(*job, key.clone(), e.attempt, e.pid)) {
                continue;
            }
            if killed.contains(&e.pid) {
                by_kill += 1;
            } else if stopped.contains(&e.pid) {
                by_stop += 1;
            } else if in_restart(e.started) {
                by_restart += 1;
            } else {
                unexplained.push(format!(
                    "duplicate execution without a kill, stop or restart: {e:?} of {list:?}"
                ));
            }
        }
    }
    assert!(
        done.contains(&Action::Stop) && done.contains(&Action::Restart),
        "the work ended before the chaos: {done:?}"
    );
    // Work the stopped worker did that was not accepted ended in outcomes it was refused.
    assert!(
        by_stop == 0 || lost_by_stopped > 0,
        "the stopped worker's late work ({by_stop} executions) reported no refused write"
    );
    let expected_keys = jobs + 3 * flows;
    assert_eq!(per.len(), expected_keys, "every job and step ran");
    eprintln!(
        "chaos: {} executions of {expected_keys} jobs and steps; actions {done:?}; \
         duplicates explained by a kill {by_kill}, the stop {by_stop}, a restart \
         {by_restart}; stopped worker's refused outcomes {lost_by_stopped}; its steps \
         that ran after their checkpoint {zombie_steps}",
        execs.len()
    );
    assert!(unexplained.is_empty(), "{unexplained:#?}");
}
