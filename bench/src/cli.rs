//! Hand-written argument parsing (no clap: the bench should build fast on 2 cores).

use std::time::Duration;

pub const USAGE: &str = "\
durable-jobs benchmark: our backends side by side with graphile_worker

USAGE:
  cargo run --release --manifest-path bench/Cargo.toml -- [OPTIONS]

OPTIONS:
  --backend LIST        backends to run: postgres,sqlite,memory        [all]
  --scenario LIST       enqueue,drain,latency,raw,steps,heartbeat,workflow  [all]
                        and, only when named: backlog, retention (each
                        seeds millions of rows; every backend), soak
                        (PostgreSQL)
  --systems LIST        on Postgres: ours,graphile                      [both]
  --jobs N              jobs per enqueue/drain scenario                 [100000]
  --runs K              repeat every scenario K times, report medians   [1]
  --concurrency LIST    worker concurrencies for the drain scenario     [10,50,500]
  --batch N             enqueue_many / add_raw_jobs batch size          [1000]
  --latency-jobs N      jobs in the latency scenario                    [1000]
  --latency-rate R      latency-scenario enqueue rate, jobs/s           [200]
  --latency-concurrency N  our worker's concurrency when idle           [50]
  --raw-batches LIST    raw SQL yardstick claim/complete batch sizes    [100,250,1000]
  --raw-workers LIST    concurrent claim+complete loops in the yardstick [1,4]
  --pool N              max Postgres connections per system             [20]
  --database-url URL    server to create bench_<pid>_<n> databases on
                        [env DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres]
  --prefetch N          our WorkerOptions::prefetch (its local queue)   [sized by the worker]
  --checkpoint-writers N  our WorkerOptions::checkpoint_writers (steps, workflow)
                                                                        [the library's default]
  --workflows N         three-step workflows in the workflow scenario   [10000]
  --workflow-concurrency N  both sides' worker concurrency there        [50]
  --duration SECS       how long the soak runs                          [600]
  --soak-rate R         the soak's steady enqueue rate, jobs/s          [500]
  --worker LIST         more of our WorkerOptions for drains, key=value:
                        claim-batch, claims-in-flight, completion-batch,
                        completion-writers                          [library defaults]
  --profile             tally every storage call of our scenarios (a StorageLayer),
                        print calls/items/time per storage method
  --instrumented        before our queues and workers are made, install a tracing
                        subscriber (fmt at info for durable_jobs*, to a sink) and a
                        Prometheus metrics recorder (no listener), to measure what
                        instrumentation costs                            [off]
  --timeout SECS        give up on one scenario after this long        [300]
  -h, --help            this text
";

#[derive(Debug, Clone)]
pub struct Config {
    pub backends: Vec<String>,
    pub scenarios: Vec<String>,
    pub systems: Vec<String>,
    pub jobs: usize,
    pub runs: usize,
    pub concurrency: Vec<usize>,
    pub batch: usize,
    pub latency_jobs: usize,
    pub latency_rate: f64,
    pub latency_concurrency: usize,
    pub raw_batches: Vec<usize>,
    pub raw_workers: Vec<usize>,
    pub pool: u32,
    pub database_url: String,
    pub timeout: Duration,
    pub profile: bool,
    /// Our `WorkerOptions::prefetch` (None: the worker sizes its local queue).
    pub prefetch: Option<usize>,
    /// Our `WorkerOptions::checkpoint_writers` in the steps and workflow scenarios (None:
    /// the library's default).
    pub checkpoint_writers: Option<usize>,
    /// Workflows in the workflow scenario.
    pub workflows: usize,
    /// Both sides' worker concurrency in the workflow scenario.
    pub workflow_concurrency: usize,
    /// How long the soak runs.
    pub soak_duration: Duration,
    /// The soak's enqueue rate, jobs/s.
    pub soak_rate: f64,
    /// `--worker key=value,...`: WorkerOptions tuning (None: library default).
    pub claim_batch: Option<usize>,
    /// See `claim_batch`.
    pub claims_in_flight: Option<usize>,
    /// See `claim_batch`.
    pub completion_batch: Option<usize>,
    /// See `claim_batch`.
    pub completion_writers: Option<usize>,
    /// `--instrumented`: install a tracing subscriber and a metrics recorder.
    pub instrumented: bool,
}

impl Config {
    pub fn backend(&self, b: &str) -> bool {
        self.backends.iter().any(|x| x == b)
    }
    pub fn scenario(&self, s: &str) -> bool {
        self.scenarios.iter().any(|x| x == s)
    }
    pub fn system(&self, s: &str) -> bool {
        self.systems.iter().any(|x| x == s)
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_ascii_lowercase())
        .filter(|x| !x.is_empty())
        .collect()
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: expected a number, got `{v}`"))
}

fn nums(flag: &str, v: &str) -> Result<Vec<usize>, String> {
    list(v).iter().map(|x| num(flag, x)).collect()
}

fn check(flag: &str, got: &[String], allowed: &[&str]) -> Result<(), String> {
    for g in got {
        if !allowed.contains(&g.as_str()) {
            return Err(format!(
                "{flag}: unknown `{g}` (expected one of {allowed:?})"
            ));
        }
    }
    Ok(())
}

/// Parses the arguments after the program name. `Ok(None)` means help was asked for.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Config>, String> {
    let mut c = Config {
        backends: list("postgres,sqlite,memory"),
        scenarios: list("enqueue,drain,latency,raw,steps,heartbeat,workflow"),
        systems: list("ours,graphile"),
        jobs: 100_000,
        runs: 1,
        concurrency: vec![10, 50, 500],
        batch: 1000,
        latency_jobs: 1000,
        latency_rate: 200.0,
        latency_concurrency: 50,
        raw_batches: vec![100, 250, 1000],
        raw_workers: vec![1, 4],
        pool: 20,
        database_url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string()),
        timeout: Duration::from_secs(300),
        profile: false,
        prefetch: None,
        checkpoint_writers: None,
        workflows: 10_000,
        workflow_concurrency: 50,
        soak_duration: Duration::from_secs(600),
        soak_rate: 500.0,
        claim_batch: None,
        claims_in_flight: None,
        completion_batch: None,
        completion_writers: None,
        instrumented: false,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        if flag == "--profile" {
            c.profile = true;
            continue;
        }
        if flag == "--instrumented" {
            c.instrumented = true;
            continue;
        }
        if flag == "--experiment" {
            return Err(
                "--experiment was removed: its only experiment, prefetch=N, is now \
                        the library's WorkerOptions::prefetch, see --prefetch N (and \
                        --worker claim-batch=N for claims as large)"
                    .into(),
            );
        }
        const TAKES_VALUE: &[&str] = &[
            "--backend",
            "--backends",
            "--scenario",
            "--scenarios",
            "--systems",
            "--jobs",
            "--runs",
            "--concurrency",
            "--batch",
            "--latency-jobs",
            "--latency-rate",
            "--latency-concurrency",
            "--raw-batches",
            "--raw-workers",
            "--pool",
            "--database-url",
            "--timeout",
            "--prefetch",
            "--checkpoint-writers",
            "--worker",
            "--workflows",
            "--workflow-concurrency",
            "--duration",
            "--soak-rate",
        ];
        if !TAKES_VALUE.contains(&flag.as_str()) {
            return Err(format!("unknown option `{flag}` (see --help)"));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))?,
        };
        match flag.as_str() {
            "--backend" | "--backends" => c.backends = list(&value),
            "--scenario" | "--scenarios" => c.scenarios = list(&value),
            "--systems" => c.systems = list(&value),
            "--jobs" => c.jobs = num(&flag, &value)?,
            "--runs" => c.runs = num(&flag, &value)?,
            "--concurrency" => c.concurrency = nums(&flag, &value)?,
            "--batch" => c.batch = num(&flag, &value)?,
            "--latency-jobs" => c.latency_jobs = num(&flag, &value)?,
            "--latency-rate" => c.latency_rate = num(&flag, &value)?,
            "--latency-concurrency" => c.latency_concurrency = num(&flag, &value)?,
            "--raw-batches" => c.raw_batches = nums(&flag, &value)?,
            "--raw-workers" => c.raw_workers = nums(&flag, &value)?,
            "--pool" => c.pool = num(&flag, &value)?,
            "--prefetch" => c.prefetch = Some(num(&flag, &value)?),
            "--checkpoint-writers" => c.checkpoint_writers = Some(num(&flag, &value)?),
            "--workflows" => c.workflows = num(&flag, &value)?,
            "--workflow-concurrency" => c.workflow_concurrency = num(&flag, &value)?,
            "--duration" => c.soak_duration = Duration::from_secs(num(&flag, &value)?),
            "--soak-rate" => c.soak_rate = num(&flag, &value)?,
            "--worker" => {
                for kv in list(&value) {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--worker: expected key=value, found `{kv}`"))?;
                    let n = Some(num(&flag, v)?);
                    match k {
                        "claim-batch" => c.claim_batch = n,
                        "claims-in-flight" => c.claims_in_flight = n,
                        "completion-batch" => c.completion_batch = n,
                        "completion-writers" => c.completion_writers = n,
                        _ => return Err(format!("--worker: unknown key `{k}` (see --help)")),
                    }
                }
            }
            "--database-url" => c.database_url = value,
            "--timeout" => c.timeout = Duration::from_secs(num(&flag, &value)?),
            other => return Err(format!("unknown option `{other}` (see --help)")),
        }
    }
    check("--backend", &c.backends, &["postgres", "sqlite", "memory"])?;
    check(
        "--scenario",
        &c.scenarios,
        &[
            "enqueue",
            "drain",
            "latency",
            "raw",
            "steps",
            "heartbeat",
            "backlog",
            "retention",
            "workflow",
            "soak",
        ],
    )?;
    check("--systems", &c.systems, &["ours", "graphile"])?;
    if c.jobs == 0
        || c.runs == 0
        || c.batch == 0
        || c.latency_jobs == 0
        || c.raw_workers.contains(&0)
        || c.workflows == 0
        || c.workflow_concurrency == 0
    {
        return Err("--jobs, --runs, --batch, --latency-jobs and --raw-workers must be > 0".into());
    }
    if c.concurrency.is_empty() || c.concurrency.contains(&0) {
        return Err("--concurrency needs positive numbers".into());
    }
    if c.raw_batches.contains(&0) {
        return Err("--raw-batches needs positive numbers".into());
    }
    if c.soak_rate.is_nan() || c.soak_rate <= 0.0 || c.soak_duration.is_zero() {
        return Err("--soak-rate and --duration must be > 0".into());
    }
    if c.latency_rate.is_nan() || c.latency_rate <= 0.0 {
        return Err("--latency-rate must be > 0".into());
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_documented_flag_parses() {
        let c = parse(args(&[
            "--backend",
            "memory",
            "--scenario",
            "drain",
            "--systems",
            "ours",
            "--jobs",
            "5",
            "--runs",
            "2",
            "--concurrency",
            "1,2",
            "--batch",
            "3",
            "--latency-jobs",
            "4",
            "--latency-rate",
            "9.5",
            "--latency-concurrency",
            "6",
            "--raw-batches",
            "7",
            "--raw-workers",
            "8",
            "--pool",
            "9",
            "--database-url",
            "postgres://x@y/z",
            "--timeout",
            "10",
            "--profile",
            "--instrumented",
            "--prefetch",
            "11",
            "--worker",
            "claim-batch=12",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((c.jobs, c.runs, c.batch, c.prefetch), (5, 2, 3, Some(11)));
        assert_eq!(c.claim_batch, Some(12));
        assert!(c.profile && c.instrumented);
        assert!(!parse(args(&[])).unwrap().unwrap().instrumented);
        assert!(parse(args(&["--experiment", "prefetch=1"])).is_err());
        assert_eq!(c.concurrency, vec![1, 2]);
        // Every option the help text lists is one the parser knows.
        let options = USAGE.split("OPTIONS:").nth(1).unwrap_or_default();
        for word in options.split_whitespace().filter(|w| w.starts_with("--")) {
            let known = parse(args(&[word, "1"]));
            assert!(
                !matches!(&known, Err(e) if e.contains(&format!("unknown option `{word}`"))),
                "{word} is documented but not parsed"
            );
        }
        assert!(parse(args(&["--bogus"])).is_err());
        assert!(parse(args(&["--help"])).unwrap().is_none());
    }
}
