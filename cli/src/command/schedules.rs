//! `schedules list|pause|resume|remove`.

use super::Ctx;
use crate::database::Db;
use crate::duration::format_duration;
use crate::error::CliError;
use crate::output::{self, Table};
use chrono::{DateTime, Utc};
use durable_jobs::schedule::Spec;
use durable_jobs::JobId;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// A schedule as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    /// Its unique name.
    pub name: String,
    /// True when it fires no ticks.
    pub paused: bool,
    /// When it fires, in words (`every 30s`, `daily 03:00`, `cron 0 3 * * *`).
    pub when: Option<String>,
    /// The task each tick enqueues.
    pub task: Option<String>,
    /// The last tick handled.
    pub cursor: DateTime<Utc>,
    /// The next tick after the cursor.
    pub next_tick: Option<DateTime<Utc>>,
    /// The job the last enqueued tick created.
    pub last_job_id: Option<JobId>,
    /// The stored definition (spec, task, payload, options, offset, catch-up).
    pub definition: Value,
    /// Why the stored definition cannot be read by this version, if it cannot.
    pub error: Option<String>,
}

/// Every schedule, by name.
///
/// # Errors
/// Storage errors.
pub async fn views(db: &Db) -> Result<Vec<ScheduleView>, CliError> {
    let infos = db.queue.schedules().await?;
    Ok(infos
        .into_iter()
        .map(|info| {
            let (definition, when, error) = match &info.schedule {
                Ok(s) => {
                    let definition = serde_json::to_value(s).unwrap_or(Value::Null);
                    let when = describe(s.spec(), &definition);
                    (definition, Some(when), None)
                }
                Err(e) => (Value::Null, None, Some(e.clone())),
            };
            let task = definition
                .get("task")
                .and_then(Value::as_str)
                .map(str::to_string);
            ScheduleView {
                name: info.name,
                paused: info.paused,
                when,
                task,
                cursor: info.cursor,
                next_tick: info.next_tick,
                last_job_id: info.last_job_id,
                definition,
                error,
            }
        })
        .collect())
}

/// A spec in words, with its time zone or UTC offset when it has one (read from the
/// stored definition, so definitions from older versions read too).
fn describe(spec: &Spec, definition: &Value) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let base = match spec {
        Spec::Every { secs } => format!("every {}", format_duration(Duration::from_secs(*secs))),
        Spec::Daily { hour, minute } => format!("daily {hour:02}:{minute:02}"),
        Spec::Weekly {
            weekday,
            hour,
            minute,
        } => format!(
            "weekly {} {hour:02}:{minute:02}",
            DAYS.get(*weekday as usize).copied().unwrap_or("?")
        ),
        Spec::Cron { expr } => format!("cron {expr}"),
    };
    let zone = definition.get("time_zone").and_then(Value::as_str);
    let offset_secs = definition
        .get("utc_offset_secs")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if matches!(spec, Spec::Every { .. }) {
        base
    } else if let Some(zone) = zone {
        format!("{base} {zone}")
    } else if offset_secs == 0 {
        base
    } else {
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let abs = offset_secs.unsigned_abs();
        format!("{base} UTC{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

/// The schedules as a table.
pub fn table(schedules: &[ScheduleView]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "WHEN",
        "TASK",
        "NEXT TICK",
        "LAST JOB",
        "CURSOR",
    ]);
    for s in schedules {
        t.row(vec![
            output::clean(&s.name),
            if s.paused { "paused" } else { "active" }.to_string(),
            s.when
                .clone()
                .map_or_else(|| "unreadable".into(), |w| output::clean(&w)),
            output::opt(s.task.as_deref()),
            output::opt_time(s.next_tick),
            output::opt(s.last_job_id),
            output::time(s.cursor),
        ]);
    }
    t
}

/// `schedules list`.
pub async fn list(db: &Db, ctx: Ctx) -> Result<(), CliError> {
    let schedules = views(db).await?;
    if ctx.json {
        return output::print_json(&serde_json::json!({ "schedules": schedules }));
    }
    if schedules.is_empty() {
        output::print("no schedules\n");
        return Ok(());
    }
    let mut text = table(&schedules).render(0);
    for s in schedules.iter().filter(|s| s.error.is_some()) {
        text.push_str(&format!(
            "schedule {} cannot be read by this version: {}\n",
            output::clean(&s.name),
            output::opt(s.error.as_deref())
        ));
    }
    output::print(&text);
    Ok(())
}

/// What to do to a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop it firing.
    Pause,
    /// Let it fire again.
    Resume,
    /// Delete it.
    Remove,
}

/// `schedules pause|resume|remove NAME`.
pub async fn act(db: &Db, name: &str, action: Action, ctx: Ctx) -> Result<(), CliError> {
    let found = match action {
        Action::Pause => db.queue.pause_schedule(name).await?,
        Action::Resume => db.queue.resume_schedule(name).await?,
        Action::Remove => db.queue.remove_schedule(name).await?,
    };
    if !found {
        return Err(CliError::NotFound(format!(
            "no schedule named `{}`: see `durable-jobs schedules list`",
            output::clean(name)
        )));
    }
    let verb = match action {
        Action::Pause => "paused",
        Action::Resume => "resumed",
        Action::Remove => "removed",
    };
    if ctx.json {
        return output::print_json(&serde_json::json!({ "schedule": name, "action": verb }));
    }
    output::print(&format!("{verb} schedule {}\n", output::clean(name)));
    Ok(())
}
