//! The commands: each opens the database the way it needs, calls the public `Queue` and
//! storage APIs, and prints a table or one JSON document.

mod dashboard;
mod enqueue;
mod job_actions;
mod jobs;
mod queues;
mod schedules;
mod status;
mod workers;

use crate::cli::{Cli, Command, JobsCommand, QueuesCommand, SchedulesCommand};
use crate::database::{self, Db, Target};
use crate::error::CliError;
use crate::output;
use durable_jobs::JobId;
use serde::Serialize;
use std::future::Future;

/// How the output is wanted.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// One JSON document instead of tables.
    pub json: bool,
}

/// Runs the parsed command line.
///
/// # Errors
/// The command's [`CliError`]; the caller prints it and exits with its code.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let target = Target::parse(cli.database.as_deref(), cli.schema.as_deref())?;
    let ctx = Ctx { json: cli.json };
    let timeout = cli.connect_timeout;
    match cli.command {
        Command::Migrate => migrate(&target, timeout, ctx).await,
        Command::Dashboard(args) => dashboard::run(&target, timeout, args).await,
        command => {
            let db = database::open_existing(&target, timeout).await?;
            let result = dispatch(&db, command, ctx).await;
            db.close().await;
            result
        }
    }
}

async fn dispatch(db: &Db, command: Command, ctx: Ctx) -> Result<(), CliError> {
    match command {
        Command::Status => status::run(db, ctx).await,
        Command::Jobs(JobsCommand::List(args)) => jobs::list(db, args, ctx).await,
        Command::Jobs(JobsCommand::Show { id }) => jobs::show(db, id, ctx).await,
        Command::Jobs(JobsCommand::Retry {
            ids,
            keep_checkpoints,
        }) => job_actions::retry(db, &ids, keep_checkpoints, ctx).await,
        Command::Jobs(JobsCommand::Cancel { ids }) => job_actions::cancel(db, &ids, ctx).await,
        Command::Jobs(JobsCommand::Delete(args)) if !args.ids.is_empty() => {
            job_actions::delete(db, &args.ids, ctx).await
        }
        Command::Jobs(JobsCommand::Delete(args)) => {
            job_actions::delete_matching(db, args, ctx).await
        }
        Command::Jobs(JobsCommand::Purge { older_than, status }) => {
            job_actions::purge(db, older_than, status, ctx).await
        }
        Command::Enqueue(args) => enqueue::enqueue(db, args, ctx).await,
        Command::Signal(args) => enqueue::signal(db, args, ctx).await,
        Command::Queues(QueuesCommand::List) => queues::list(db, ctx).await,
        Command::Queues(QueuesCommand::Pause { name }) => {
            queues::set_paused(db, &name, true, ctx).await
        }
        Command::Queues(QueuesCommand::Resume { name }) => {
            queues::set_paused(db, &name, false, ctx).await
        }
        Command::Schedules(SchedulesCommand::List) => schedules::list(db, ctx).await,
        Command::Schedules(SchedulesCommand::Pause { name }) => {
            schedules::act(db, &name, schedules::Action::Pause, ctx).await
        }
        Command::Schedules(SchedulesCommand::Resume { name }) => {
            schedules::act(db, &name, schedules::Action::Resume, ctx).await
        }
        Command::Schedules(SchedulesCommand::Remove { name }) => {
            schedules::act(db, &name, schedules::Action::Remove, ctx).await
        }
        Command::Workers => workers::run(db, ctx).await,
        Command::Migrate | Command::Dashboard(_) => Err(CliError::Failed(
            "this command does not run on an opened database".into(),
        )),
    }
}

async fn migrate(target: &Target, timeout: std::time::Duration, ctx: Ctx) -> Result<(), CliError> {
    let report = database::migrate(target, timeout).await?;
    if ctx.json {
        return output::print_json(&report);
    }
    let line = if report.from_version == report.to_version {
        format!(
            "{} is already at schema version {}\n",
            report.database, report.to_version
        )
    } else {
        format!(
            "migrated {} from schema version {} to {}\n",
            report.database, report.from_version, report.to_version
        )
    };
    output::print(&line);
    Ok(())
}

/// One failed item of a multi-item command, as `--json` shows it.
#[derive(Debug, Serialize)]
pub struct ItemError {
    /// The job.
    pub id: JobId,
    /// `not_found`, `refused` or `failed`.
    pub kind: &'static str,
    /// What went wrong.
    pub error: String,
}

/// What a multi-item command did, as `--json` shows it.
#[derive(Debug, Serialize)]
pub struct ActionReport {
    /// The action (`retry`, `cancel`, `delete`).
    pub action: &'static str,
    /// The jobs it was applied to.
    pub done: Vec<JobId>,
    /// The jobs it was not applied to, and why.
    pub errors: Vec<ItemError>,
}

/// Applies `f` to each id (duplicates once, in order), prints a line per success on
/// stdout and per failure on stderr (or one JSON report), and fails with
/// [`CliError::Partial`] when any item failed.
pub async fn for_each_job<F, Fut>(
    ids: &[JobId],
    action: &'static str,
    ctx: Ctx,
    mut f: F,
) -> Result<(), CliError>
where
    F: FnMut(JobId) -> Fut,
    Fut: Future<Output = Result<String, CliError>>,
{
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<JobId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let mut report = ActionReport {
        action,
        done: Vec::new(),
        errors: Vec::new(),
    };
    let mut text = String::new();
    for id in &ids {
        match f(*id).await {
            Ok(message) => {
                report.done.push(*id);
                text.push_str(&message);
                text.push('\n');
            }
            Err(e) => {
                output::note(&format!("error: {e}"));
                report.errors.push(ItemError {
                    id: *id,
                    kind: match e {
                        CliError::NotFound(_) => "not_found",
                        CliError::Refused(_) => "refused",
                        _ => "failed",
                    },
                    error: e.to_string(),
                });
            }
        }
    }
    if ctx.json {
        output::print_json(&report)?;
    } else {
        output::print(&text);
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Partial {
            failed: report.errors.len(),
            total: ids.len(),
        })
    }
}
