//! The command line: global options, commands and their arguments (clap derive).

use crate::duration::parse_duration;
use clap::{Args, Parser, Subcommand};
use durable_jobs::{JobId, JobStatus};
use std::time::Duration;

/// The help heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// Operate durable-jobs on PostgreSQL or SQLite: inspect and manage jobs, queues,
/// schedules and workers.
///
/// Exit codes: 0 success, 1 not found, refused or a database failure, 2 bad usage.
#[derive(Debug, Parser)]
#[command(name = "durable-jobs", version, max_term_width = 100)]
pub struct Cli {
    /// Database URL: postgres://user:pass@host:port/db (or postgresql://), or
    /// sqlite:PATH (also sqlite://PATH).
    #[arg(
        long,
        short = 'd',
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL",
        help_heading = GLOBAL
    )]
    pub database: Option<String>,

    /// PostgreSQL schema that holds the durable-jobs tables [default: durable_jobs].
    #[arg(long, global = true, value_name = "NAME", help_heading = GLOBAL)]
    pub schema: Option<String>,

    /// Print exactly one JSON document on stdout instead of tables.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,

    /// How long to wait for a PostgreSQL connection before giving up (30s, 2m, ...).
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = duration_arg,
        help_heading = GLOBAL
    )]
    pub connect_timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the durable-jobs tables (creates a missing SQLite file). The only
    /// command that writes the schema.
    Migrate,
    /// Overview: jobs per queue and status, paused queues, workers, schedules.
    Status,
    /// List, inspect, retry, cancel, delete and purge jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Enqueue a job by task name. The payload is not checked against a handler here.
    Enqueue(EnqueueArgs),
    /// Send a signal to a waiting workflow.
    Signal(SignalArgs),
    /// List, pause and resume queues.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// List, pause, resume and remove schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Registered workers, alive or dead.
    Workers,
    /// Serve the web dashboard.
    Dashboard(DashboardArgs),
}

/// `jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs matching filters, by ascending id (keyset pagination with --after).
    List(ListArgs),
    /// One job: fields, payload, result, error, attempts, checkpoints and children.
    Show {
        /// The job's id.
        id: JobId,
    },
    /// Requeue failed or cancelled jobs with a fresh attempt count.
    Retry {
        /// Job ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<JobId>,
        /// Keep workflow checkpoints, so a workflow resumes after its finished steps
        /// (default: start from scratch).
        #[arg(long)]
        keep_checkpoints: bool,
    },
    /// Cancel unfinished jobs (and their unfinished descendants).
    Cancel {
        /// Job ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<JobId>,
    },
    /// Delete jobs that are not running, with their checkpoints and signals: by id, or
    /// every job matching filters (in batches; a matching job goes with its workflow
    /// children, and a child of a live parent never matches on its own).
    Delete(DeleteArgs),
    /// Delete finished jobs (completed, failed, cancelled) that finished longer ago than
    /// a duration.
    Purge {
        /// Age of the finish time: 30s, 90m, 2h, 7d, 1w, 1h30m.
        #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
        older_than: Duration,
        /// Only this finished status: completed, failed or cancelled.
        #[arg(long, value_name = "STATUS", value_parser = finished_status_arg)]
        status: Option<JobStatus>,
    },
}

/// Filters for `jobs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only these statuses (repeat or separate with commas): pending, retrying, running,
    /// waiting, completed, failed, cancelled.
    #[arg(long, value_name = "STATUS", value_delimiter = ',', value_parser = status_arg)]
    pub status: Vec<JobStatus>,
    /// Only this queue.
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Only this task.
    #[arg(long, value_name = "TASK")]
    pub task: Option<String>,
    /// Only jobs carrying this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only jobs whose metadata holds KEY with VALUE (see `enqueue --meta`).
    #[arg(long, value_name = "KEY=VALUE", value_parser = meta_arg)]
    pub meta: Option<(String, serde_json::Value)>,
    /// Only children of this job.
    #[arg(long, value_name = "ID")]
    pub parent: Option<JobId>,
    /// At most this many jobs (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Only jobs with an id greater than this (the next page starts after the last id
    /// shown).
    #[arg(long, value_name = "ID")]
    pub after: Option<JobId>,
}

/// Arguments of `jobs delete`: ids, or filters (at least one) confirmed with `--yes`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("filters").multiple(true)
    .args(["status", "queue", "task", "tag", "meta", "older_than"])))]
pub struct DeleteArgs {
    /// Job ids (instead of filters).
    #[arg(
        value_name = "ID",
        conflicts_with = "filters",
        required_unless_present = "filters"
    )]
    pub ids: Vec<JobId>,
    /// Only these statuses (repeat or separate with commas); running jobs are never
    /// deleted.
    #[arg(long, value_name = "STATUS", value_delimiter = ',', value_parser = status_arg)]
    pub status: Vec<JobStatus>,
    /// Only this queue.
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Only this task.
    #[arg(long, value_name = "TASK")]
    pub task: Option<String>,
    /// Only jobs carrying this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only jobs whose metadata holds KEY with VALUE (VALUE as JSON if it parses as a
    /// number, boolean or null, else as a string: tenant=acme, attempt=3).
    #[arg(long, value_name = "KEY=VALUE", value_parser = meta_arg)]
    pub meta: Option<(String, serde_json::Value)>,
    /// Only jobs created longer ago than this: 30s, 90m, 2h, 7d, 1w.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub older_than: Option<Duration>,
    /// At most this many matching jobs per transaction (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,
    /// Delete without asking: without it, filters only count what they match.
    #[arg(long)]
    pub yes: bool,
}

/// Arguments of `enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The task name a worker has a handler for.
    pub task: String,
    /// The arguments as JSON (default: null), e.g. '{"to": "a@b.c"}' or '"text"'.
    #[arg(long, value_name = "JSON", value_parser = json_arg)]
    pub payload: Option<serde_json::Value>,
    /// The routing queue [default: default].
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Higher runs first [default: 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Run no earlier than this long from now (30s, 90m, 2h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub delay: Option<Duration>,
    /// A job key: while an unfinished job holds it, nothing new is enqueued.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Retries after the first attempt [default: 3].
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// A tag to find the job by (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// A metadata pair to find the job by (repeatable): tenant=acme, attempt=3 (VALUE as
    /// JSON if it parses as a number, boolean or null, else as a string).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = meta_arg)]
    pub meta: Vec<(String, serde_json::Value)>,
}

/// Arguments of `signal`.
#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The job to signal.
    pub id: JobId,
    /// The signal's name, as the workflow waits for it.
    pub name: String,
    /// The signal's payload as JSON (default: null).
    #[arg(long, value_name = "JSON", value_parser = json_arg)]
    pub payload: Option<serde_json::Value>,
}

/// `queues ...`
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Queues with their job counts and whether they are paused.
    List,
    /// Stop workers claiming from a queue (running jobs go on).
    Pause {
        /// The queue.
        name: String,
    },
    /// Let workers claim from a paused queue again.
    Resume {
        /// The queue.
        name: String,
    },
}

/// `schedules ...`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule with its state and next tick.
    List,
    /// Stop a schedule firing (missed ticks follow its catch-up rule on resume).
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Let a paused schedule fire again.
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Delete a schedule (an application that declares it at startup adds it back).
    Remove {
        /// The schedule's name.
        name: String,
    },
}

/// Arguments of `dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to listen on. Loopback by default; put it behind your own proxy, or set
    /// DURABLE_JOBS_DASHBOARD_USER and DURABLE_JOBS_DASHBOARD_PASSWORD for basic auth,
    /// before exposing it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Show data only: no retry, cancel, delete or pause actions.
    #[arg(long)]
    pub read_only: bool,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn status_arg(s: &str) -> Result<JobStatus, String> {
    s.trim().to_ascii_lowercase().parse().map_err(|_| {
        format!(
            "unknown status `{s}`: expected one of {}",
            JobStatus::ALL.map(JobStatus::as_str).join(", ")
        )
    })
}

fn finished_status_arg(s: &str) -> Result<JobStatus, String> {
    match status_arg(s)? {
        st if st.is_finished() => Ok(st),
        st => Err(format!(
            "only finished jobs are purged: expected completed, failed or cancelled, found {st}"
        )),
    }
}

fn meta_arg(s: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, found `{s}`"))?;
    if key.is_empty() {
        return Err("the metadata key must not be empty".into());
    }
    let value = match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v,
        Ok(serde_json::Value::Null) => serde_json::Value::Null,
        _ => serde_json::Value::String(value.to_string()),
    };
    Ok((key.to_string(), value))
}

fn json_arg(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| {
        format!("not valid JSON ({e}): write e.g. '{{\"id\": 1}}', 42, or '\"text\"' for a string")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn statuses_parse_and_purge_takes_finished_ones() {
        assert_eq!(status_arg("Failed"), Ok(JobStatus::Failed));
        assert!(status_arg("done")
            .unwrap_err()
            .contains("pending, retrying"));
        assert!(finished_status_arg("running").is_err());
        assert_eq!(finished_status_arg("cancelled"), Ok(JobStatus::Cancelled));
    }

    #[test]
    fn metadata_terms_parse() {
        use serde_json::json;
        assert_eq!(
            meta_arg("tenant=acme"),
            Ok(("tenant".into(), json!("acme")))
        );
        assert_eq!(meta_arg("n=3"), Ok(("n".into(), json!(3))));
        assert_eq!(meta_arg("ok=true"), Ok(("ok".into(), json!(true))));
        assert_eq!(meta_arg("a=b=c"), Ok(("a".into(), json!("b=c"))));
        assert_eq!(meta_arg("q=\"x\""), Ok(("q".into(), json!("\"x\""))));
        assert!(meta_arg("tenant").is_err());
        assert!(meta_arg("=x").is_err());
    }

    #[test]
    fn json_payloads_parse() {
        assert_eq!(json_arg("{\"a\":1}"), Ok(serde_json::json!({"a": 1})));
        assert!(json_arg("{a:1}").unwrap_err().contains("not valid JSON"));
    }
}
