//! What one seed runs: the jobs, workflows, bundles and schedule it builds, and the
//! handlers that run them while logging every execution for the invariant checks.

use super::rng::Rng;
use crate::testing::fault::FaultLog;
use crate::{call, FanOut, JobContext, JobId, JobOptions, Queue, RetryPolicy, TaskError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The task every scheduled tick enqueues.
pub(crate) const TICK_TASK: &str = "sim.tick";
/// The schedule's period.
pub(crate) const TICK_PERIOD: Duration = Duration::from_secs(60);
/// Attempts per job: enough that injected faults (each of which may spend an attempt)
/// never exhaust a job that is meant to succeed.
pub(crate) const ATTEMPTS: u32 = 60;

/// One execution of handler code: a job's handler at its root, or the body of a step or
/// called handler at its checkpoint key.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    /// On the fault log's sequence, when the execution started.
    pub(crate) seq: u64,
    pub(crate) job_id: JobId,
    /// The checkpoint key of the scope ("" for the handler itself).
    pub(crate) key: String,
    /// The lease token of the attempt that ran it.
    pub(crate) token: i64,
}

/// What the handlers share with the driver: the fault log's sequence and the executions.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) log: FaultLog,
    execs: Mutex<Vec<Exec>>,
}

impl Shared {
    fn ran(&self, ctx: &JobContext) {
        let exec = Exec {
            seq: self.log.tick(),
            job_id: ctx.job_id(),
            key: ctx.scope().as_str().to_string(),
            token: ctx.lease().token,
        };
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(exec);
    }

    pub(crate) fn execs(&self) -> Vec<Exec> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One thing a workflow does, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    /// A step whose body returns a number.
    Step,
    /// A durable call of `sim.leaf`, or of `sim.nested` (a step and a call inside).
    Call { nested: bool },
    /// A durable sleep.
    Sleep { secs: u64 },
    /// Waits for the signal with this name.
    Signal { name: String },
    /// One child job, joined.
    Child { fail: i32 },
    /// Several children, all collected.
    FanOut { n: usize },
    /// A retryable failure on the first attempt that reaches this point.
    FailOnce,
}

/// A plain job's arguments: it fails (retryably) while its attempt is at most `fail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plain {
    pub(crate) fail: i32,
}

/// What the driver enqueues.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Plain(Plain),
    /// Fails for good on its first attempt.
    Doomed,
    Flow(Vec<Op>),
    /// A bundle of plain jobs.
    Bundle(Vec<Plain>),
}

/// One top-level item of a seed's scenario, and when the driver acts on it.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) kind: Kind,
    /// The round it is enqueued in.
    pub(crate) round: usize,
    /// The round the driver cancels it in, if any.
    pub(crate) cancel_round: Option<usize>,
    /// The round its signals are sent in (after the last round: in the final phase).
    pub(crate) signal_round: usize,
    /// Its signals were sent.
    pub(crate) signalled: bool,
}

impl Item {
    /// The names of the signals its workflow waits for.
    pub(crate) fn signals(&self) -> Vec<String> {
        match &self.kind {
            Kind::Flow(ops) => ops
                .iter()
                .filter_map(|op| match op {
                    Op::Signal { name } => Some(name.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A seed's scenario.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) rounds: usize,
    pub(crate) items: Vec<Item>,
    pub(crate) schedule: bool,
}

impl Scenario {
    /// Draws a scenario from `rng`, `scale` items at most.
    pub(crate) fn generate(rng: &mut Rng, scale: usize) -> Self {
        let rounds = rng.range(4, 9) as usize;
        let n = rng.range(3, scale.max(3) as u64) as usize;
        let items = (0..n)
            .map(|_| {
                let kind = match rng.below(10) {
                    0..=2 => Kind::Plain(Plain {
                        fail: rng.below(3) as i32,
                    }),
                    3 => Kind::Doomed,
                    4 => Kind::Bundle(
                        (0..rng.range(1, 3))
                            .map(|_| Plain {
                                fail: rng.below(2) as i32,
                            })
                            .collect(),
                    ),
                    _ => Kind::Flow(flow(rng)),
                };
                let round = rng.below(rounds as u64) as usize;
                let cancel_round = rng
                    .chance(120)
                    .then(|| round + rng.below((rounds - round) as u64) as usize);
                let signal_round = round + rng.below((rounds - round + 1) as u64) as usize;
                Item {
                    kind,
                    round,
                    cancel_round,
                    signal_round,
                    signalled: false,
                }
            })
            .collect();
        Scenario {
            rounds,
            items,
            schedule: rng.chance(500),
        }
    }
}

fn flow(rng: &mut Rng) -> Vec<Op> {
    let mut signals = 0;
    (0..rng.range(1, 6))
        .map(|_| match rng.below(9) {
            0 | 1 => Op::Step,
            2 | 3 => Op::Call {
                nested: rng.chance(400),
            },
            4 => Op::Sleep {
                secs: rng.range(1, 400),
            },
            5 => {
                signals += 1;
                Op::Signal {
                    name: format!("s{signals}"),
                }
            }
            6 => Op::Child {
                fail: rng.below(2) as i32,
            },
            7 => Op::FanOut {
                n: rng.range(1, 3) as usize,
            },
            _ => Op::FailOnce,
        })
        .collect()
}

/// Registers the simulation's handlers on `queue`, logging executions into `shared`.
pub(crate) fn register(queue: &Queue, shared: &Arc<Shared>) {
    queue.set_default_retry_policy(RetryPolicy::exponential(
        Duration::from_secs(1),
        Duration::from_secs(20),
    ));
    let s = shared.clone();
    queue.register("sim.plain", move |ctx: JobContext, args: Plain| {
        s.ran(&ctx);
        async move {
            if ctx.attempt() <= args.fail {
                return Err(TaskError::retry("failing by design"));
            }
            Ok::<_, TaskError>(ctx.job_id())
        }
    });
    let s = shared.clone();
    queue.register("sim.doomed", move |ctx: JobContext, _: ()| {
        s.ran(&ctx);
        async move { Err::<(), _>(TaskError::no_retry("doomed by design")) }
    });
    let s = shared.clone();
    queue.register(TICK_TASK, move |ctx: JobContext, _: serde_json::Value| {
        s.ran(&ctx);
        async move { Ok::<_, TaskError>(()) }
    });
    let s = shared.clone();
    queue.register("sim.leaf", move |ctx: JobContext, n: i64| {
        s.ran(&ctx);
        async move { Ok::<_, TaskError>(n + 1) }
    });
    let s = shared.clone();
    queue.register("sim.nested", move |ctx: JobContext, n: i64| {
        s.ran(&ctx);
        let s = s.clone();
        async move {
            let a: i64 = ctx
                .step("inner", move |sctx| async move {
                    s.ran(&sctx);
                    Ok::<_, TaskError>(n * 2)
                })
                .await?;
            let b: i64 = call(&ctx, "sim.leaf", &a).await?;
            Ok::<_, TaskError>(a + b)
        }
    });
    let s = shared.clone();
    queue.register("sim.flow", move |ctx: JobContext, ops: Vec<Op>| {
        s.ran(&ctx);
        let s = s.clone();
        async move { run_flow(ctx, ops, s).await }
    });
}

async fn run_flow(ctx: JobContext, ops: Vec<Op>, s: Arc<Shared>) -> Result<i64, TaskError> {
    let mut total = 0i64;
    for (i, op) in ops.into_iter().enumerate() {
        total += match op {
            Op::Step => {
                let s = s.clone();
                ctx.step(&format!("step{i}"), move |sctx| async move {
                    s.ran(&sctx);
                    Ok::<_, TaskError>(i as i64)
                })
                .await?
            }
            Op::Call { nested } => {
                let task = if nested { "sim.nested" } else { "sim.leaf" };
                call::<i64, _>(&ctx, task, &(i as i64)).await?
            }
            Op::Sleep { secs } => {
                ctx.sleep(Duration::from_secs(secs)).await?;
                0
            }
            Op::Signal { name } => ctx.wait_for_signal::<i64>(&name).await?,
            Op::Child { fail } => {
                let opts = JobOptions::new().retries(ATTEMPTS);
                let id: JobId = ctx.join("sim.plain", &Plain { fail }, opts).await?;
                i64::from(id > 0)
            }
            Op::FanOut { n } => {
                let opts = JobOptions::new().retries(ATTEMPTS);
                let args = (0..n).map(|_| Plain { fail: 0 });
                let out = ctx
                    .fan_out::<JobId, _>("sim.plain", args, opts, FanOut::CollectAll)
                    .await?;
                if let Some(Err(e)) = out.iter().find(|r| r.is_err()) {
                    return Err(TaskError::no_retry(format!("a child failed: {e}")));
                }
                out.len() as i64
            }
            Op::FailOnce => {
                if ctx.attempt() == 1 {
                    return Err(TaskError::retry("failing once by design"));
                }
                0
            }
        };
    }
    Ok(total)
}
