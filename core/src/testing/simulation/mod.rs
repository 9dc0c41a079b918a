//! Deterministic simulation: each seed builds a random mix of jobs, retries, workflows
//! (nested calls, steps, sleeps, signals, children), bundles, a schedule and
//! cancellations, runs workers over [`crate::testing::fault::FaultStorage`] (errors
//! before and after writes, delays, writes paused past their lease, crashes), moves the
//! storage clock, lets fault-free workers finish, and checks invariants:
//!
//! - no job lost: every enqueued job exists and every job finished;
//! - each top-level job ended as designed (completed, failed by design, or cancelled when
//!   cancelled unfinished);
//! - no step or call body ran after its checkpoint committed (except in an attempt whose
//!   lease had already been replaced: counted as a zombie run, since fencing can refuse
//!   its writes but not stop its code), no checkpoint committed twice, and no handler
//!   started after its job's completion committed;
//! - at most one accepted final write (complete, fail, suspend, release) per attempt's
//!   lease, and one accepted completion per job;
//! - no write accepted under a lease after a later claim of its job, or after the
//!   lease's final write;
//! - parents consistent with their children: children are exactly what the spawn
//!   checkpoints recorded, a completed parent has no unfinished child;
//! - the schedule fired each tick once, none skipped.
//!
//! [`run_seeds`] runs the seeds a test asks for, or `DJ_SIM_SEEDS=<n>` seeds, or the one
//! seed `DJ_SIM_SEED=<seed>`; a failing seed panics with its violations and the command
//! that replays it, and `DJ_SIM_TRACE=1` prints the failing jobs' calls and executions.
//! On the memory backend the run uses tokio's paused clock, so worker timers and backoffs
//! cost no real time. [`crate::simulation_tests`] instantiates it for
//! a [`ConformanceHarness`].

mod driver;
mod invariants;
pub mod rng;
mod scenario;

use super::ConformanceHarness;
use std::sync::Arc;

/// How a backend's tests run the simulation.
#[derive(Debug, Clone)]
pub struct SimOptions {
    package: String,
    seeds: u64,
    first_seed: u64,
    scale: usize,
    paused_time: bool,
}

/// Runs this many seeds instead of the test's own number.
pub const SEEDS_ENV: &str = "DJ_SIM_SEEDS";
/// Runs only this seed (to replay a failure).
pub const SEED_ENV: &str = "DJ_SIM_SEED";
/// Set (to anything) to print, for a failing seed, every storage call and execution of
/// the jobs its violations name.
pub const TRACE_ENV: &str = "DJ_SIM_TRACE";

/// Prints the calls and executions of the jobs named (`job <id>`) in `violations`.
fn trace(violations: &[String], shared: &scenario::Shared) {
    let jobs: std::collections::BTreeSet<i64> = violations
        .iter()
        .flat_map(|v| v.split("job ").skip(1))
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    for r in shared.log.records() {
        let leases = r.claimed.iter().chain(r.writes.iter().map(|w| &w.lease));
        if leases.clone().any(|l| jobs.contains(&l.job_id)) {
            eprintln!("{r:?}");
        }
    }
    for e in shared.execs() {
        if jobs.contains(&e.job_id) {
            eprintln!("{e:?}");
        }
    }
}

impl SimOptions {
    /// `seeds` seeds from seed 1, for the tests of `package` (named in the replay
    /// command), on real time.
    pub fn new(package: &str, seeds: u64) -> Self {
        SimOptions {
            package: package.to_string(),
            seeds,
            first_seed: 1,
            scale: 12,
            paused_time: false,
        }
    }

    /// Runs each seed on tokio's paused clock (a current-thread runtime whose timers
    /// jump ahead whenever every task waits). Right for in-process storage only: a
    /// backend that waits on a socket or thread would see its timeouts fire early.
    pub fn paused_time(mut self, yes: bool) -> Self {
        self.paused_time = yes;
        self
    }

    /// At most this many top-level items per seed (12 by default).
    pub fn scale(mut self, items: usize) -> Self {
        self.scale = items;
        self
    }

    /// The seeds to run: `DJ_SIM_SEED` alone, else `DJ_SIM_SEEDS` (or the test's number)
    /// from the first seed.
    fn seeds(&self) -> Vec<u64> {
        let env = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        if let Some(seed) = env(SEED_ENV) {
            return vec![seed];
        }
        let n = env(SEEDS_ENV).unwrap_or(self.seeds);
        (self.first_seed..self.first_seed + n).collect()
    }
}

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Jobs in storage at the end.
    pub jobs: u64,
    /// Handler and body executions.
    pub executions: u64,
    /// Worker incarnations run under faults.
    pub workers: u64,
    /// Workers crashed mid-run.
    pub crashes: u64,
    /// Writes paused past their lease.
    pub pauses: u64,
    /// Calls with an injected error (before or after the write), delay, or crash.
    pub faults: u64,
    /// Bodies a replaced attempt ran again (allowed; see the module docs).
    pub zombie_runs: u64,
}

/// Runs one seed on a fresh harness; `Err` holds the violations.
///
/// # Panics
/// When the tokio runtime cannot be built, or the harness's setup panics.
pub fn run_seed<H: ConformanceHarness>(
    seed: u64,
    options: &SimOptions,
) -> Result<SeedReport, Vec<String>> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if options.paused_time {
        builder.start_paused(true);
    }
    let rt = builder
        .build()
        .expect("build a tokio runtime for the simulation");
    rt.block_on(async {
        let h = H::setup().await;
        let shared = Arc::new(scenario::Shared::default());
        let outcome = async {
            let rec = driver::run(&h, seed, options.scale, &shared)
                .await
                .map_err(|e| vec![format!("the driver failed: {e}")])?;
            let (violations, obs) = invariants::check(h.storage().as_ref(), &rec, &shared)
                .await
                .map_err(|e| vec![format!("reading the final state failed: {e}")])?;
            if !violations.is_empty() {
                if std::env::var_os(TRACE_ENV).is_some() {
                    trace(&violations, &shared);
                }
                return Err(violations);
            }
            let faults = shared.log.injected_counts().iter().sum();
            Ok(SeedReport {
                seed,
                jobs: obs.jobs,
                executions: obs.executions,
                workers: rec.workers,
                crashes: rec.crashes,
                pauses: rec.pauses,
                faults,
                zombie_runs: obs.zombie_runs,
            })
        }
        .await;
        h.teardown().await;
        outcome
    })
}

/// Runs the seeds `options` and the environment ask for (see the module docs) and
/// prints a summary.
///
/// # Panics
/// On the first failing seed, with its violations and the command that replays it.
pub fn run_seeds<H: ConformanceHarness>(options: SimOptions) {
    let started = std::time::Instant::now();
    let mut total = SeedReport::default();
    let seeds = options.seeds();
    for &seed in &seeds {
        // A panic inside the run (an engine bug, a harness failure) names its seed too.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_seed::<H>(seed, &options)
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            Err(vec![format!("the run panicked: {message}")])
        });
        match outcome {
            Ok(r) => {
                total.jobs += r.jobs;
                total.executions += r.executions;
                total.workers += r.workers;
                total.crashes += r.crashes;
                total.pauses += r.pauses;
                total.faults += r.faults;
                total.zombie_runs += r.zombie_runs;
            }
            Err(violations) => {
                let shown: Vec<&String> = violations.iter().take(20).collect();
                panic!(
                    "simulation seed {seed} failed ({} violations):\n  {}\nreplay it with: \
                     {SEED_ENV}={seed} cargo test -p {} simulation -- --nocapture \
                     (add {TRACE_ENV}=1 for the jobs' calls and executions)",
                    violations.len(),
                    shown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n  "),
                    options.package
                );
            }
        }
    }
    println!(
        "simulation: {} seeds in {:.1?}: {} jobs, {} executions, {} workers ({} crashed), \
         {} injected faults, {} paused writes, {} zombie runs",
        seeds.len(),
        started.elapsed(),
        total.jobs,
        total.executions,
        total.workers,
        total.crashes,
        total.faults,
        total.pauses,
        total.zombie_runs
    );
}

/// Expands to a `#[test] fn simulation()` that runs [`run_seeds`] for a
/// [`ConformanceHarness`]: `seeds` seeds by default, and on tokio's paused clock when
/// `paused_time` is true (in-process backends only).
///
/// ```ignore
/// durable_jobs::simulation_tests!(MyHarness, seeds = 300, paused_time = true);
/// ```
#[macro_export]
macro_rules! simulation_tests {
    ($harness:ty, seeds = $seeds:expr, paused_time = $paused:expr) => {
        #[test]
        fn simulation() {
            $crate::testing::simulation::run_seeds::<$harness>(
                $crate::testing::simulation::SimOptions::new(env!("CARGO_PKG_NAME"), $seeds)
                    .paused_time($paused),
            );
        }
    };
}
