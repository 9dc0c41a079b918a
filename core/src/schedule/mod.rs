//! Schedules: recurring jobs that fire once per tick however many workers run.
//!
//! A schedule's definition and its cursor (the last tick handled) live in storage. A
//! scheduler (every worker runs one unless told not to) computes the ticks between the
//! cursor and now and claims them by moving the cursor with a compare-and-set in the same
//! transaction as the enqueue, so each tick is enqueued exactly once.

mod scheduler;
mod spec;

pub(crate) use scheduler::run_due;
pub use scheduler::SchedulerReport;
pub use spec::Spec;

use crate::storage::Storage;
use crate::error::{Error, Result};
use crate::job::JobId;
use crate::options::JobOptions;
use crate::queue::Queue;
pub use crate::storage::ScheduleRecord;
use chrono::{DateTime, FixedOffset, Offset, Utc, Weekday};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// How long after its time a tick still counts as on time for [`CatchUp::Skip`].
/// Defaults to 60 seconds.
pub const DEFAULT_SKIP_GRACE: Duration = Duration::from_secs(60);
/// The most ticks one scheduler pass enqueues for one schedule when backfilling.
pub const MAX_BACKFILL_TICKS: usize = 1000;

/// What to do with ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run none of the missed ticks; only a tick no older than [`DEFAULT_SKIP_GRACE`] runs.
    Skip,
    /// Run the most recent missed tick once. The default.
    #[default]
    One,
    /// Run every missed tick that lies within `window_secs` of now (at most
    /// [`MAX_BACKFILL_TICKS`] per pass).
    Backfill {
        /// How far back to backfill, in seconds.
        window_secs: u64,
    },
}

/// A recurring job: when it fires, what it enqueues, and how it catches up.
///
/// ```
/// use durable_jobs::{JobOptions, Schedule};
/// let nightly = Schedule::cron("0 3 * * *").task("cleanup", &()).options(JobOptions::new().queue("maintenance"));
/// let often = Schedule::every(std::time::Duration::from_secs(30)).task("poll_feeds", &()).no_overlap(true);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    spec: Spec,
    task: String,
    payload: Value,
    #[serde(default)]
    options: JobOptions,
    #[serde(default)]
    utc_offset_secs: i32,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default)]
    no_overlap: bool,
    #[serde(skip)]
    payload_error: Option<String>,
}

impl Schedule {
    fn with_spec(spec: Spec) -> Self {
        Schedule {
            spec,
            task: String::new(),
            payload: Value::Null,
            options: JobOptions::new(),
            utc_offset_secs: 0,
            catch_up: CatchUp::default(),
            no_overlap: false,
            payload_error: None,
        }
    }

    /// Fires every `period` (whole seconds, at least one), on multiples of the period
    /// since the Unix epoch.
    pub fn every(period: Duration) -> Self {
        Self::with_spec(Spec::Every {
            secs: spec::period_secs(period),
        })
    }

    /// Fires each day at `hour:minute` (UTC unless [`Schedule::utc_offset`] is set).
    pub fn daily(hour: u32, minute: u32) -> Self {
        Self::with_spec(Spec::Daily { hour, minute })
    }

    /// Fires each week on `weekday` at `hour:minute`.
    pub fn weekly(weekday: Weekday, hour: u32, minute: u32) -> Self {
        Self::with_spec(Spec::Weekly {
            weekday: weekday.num_days_from_monday(),
            hour,
            minute,
        })
    }

    /// Fires on a cron expression (five fields, or six/seven with seconds first). An
    /// invalid expression is an error when the schedule is added.
    pub fn cron(expr: &str) -> Self {
        Self::with_spec(Spec::Cron {
            expr: expr.to_string(),
        })
    }

    /// The task each tick enqueues, with its arguments.
    pub fn task<A: Serialize + ?Sized>(mut self, task: &str, args: &A) -> Self {
        self.task = task.to_string();
        match serde_json::to_value(args) {
            Ok(v) => self.payload = v,
            Err(e) => self.payload_error = Some(e.to_string()),
        }
        self
    }

    /// Options for each enqueued job (queue, priority, retries, ...).
    pub fn options(mut self, options: JobOptions) -> Self {
        self.options = options;
        self
    }

    /// Reads daily, weekly and cron times in this fixed offset from UTC.
    pub fn utc_offset(mut self, offset: FixedOffset) -> Self {
        self.utc_offset_secs = offset.local_minus_utc();
        self
    }

    /// What to do with missed ticks. Defaults to [`CatchUp::One`].
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// Skips a tick while the previous tick's job has not finished.
    pub fn no_overlap(mut self, yes: bool) -> Self {
        self.no_overlap = yes;
        self
    }

    /// The firing rule.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    fn offset(&self) -> FixedOffset {
        // Validated at registration; UTC is the safe reading of anything else.
        FixedOffset::east_opt(self.utc_offset_secs).unwrap_or(Utc.fix())
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.spec.next_after(after, self.offset())
    }
}

/// A schedule's name, definition and state, as [`Queue::schedules`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleInfo {
    /// The name.
    pub name: String,
    /// The definition, or why it could not be read.
    pub schedule: std::result::Result<Schedule, String>,
    /// Paused or not.
    pub paused: bool,
    /// The last tick handled.
    pub cursor: DateTime<Utc>,
    /// The next tick after the cursor.
    pub next_tick: Option<DateTime<Utc>>,
    /// The job the last enqueued tick created.
    pub last_job_id: Option<JobId>,
}

impl Queue {
    /// Adds a schedule under `name`, or updates its definition if it exists (its cursor
    /// and paused state stay). Declaring schedules in code at startup is this call.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an invalid cron expression, time or period, or offset;
    /// [`Error::UnknownTask`] / [`Error::InvalidPayload`] as for [`Queue::enqueue`].
    pub async fn add_schedule(&self, name: &str, schedule: Schedule) -> Result<()> {
        crate::options::validate_task_name(name).map_err(|_| Error::InvalidOption {
            option: "schedule",
            message: format!(
                "schedule name `{name}` must be 1 to 128 characters from A-Z a-z 0-9 _ . : -"
            ),
        })?;
        schedule.spec.validate()?;
        if FixedOffset::east_opt(schedule.utc_offset_secs).is_none() {
            return Err(Error::InvalidOption {
                option: "schedule",
                message: format!(
                    "utc offset of {} seconds is out of range",
                    schedule.utc_offset_secs
                ),
            });
        }
        if let Some(e) = &schedule.payload_error {
            return Err(Error::InvalidPayload {
                task: schedule.task.clone(),
                message: e.clone(),
            });
        }
        self.build_job(&schedule.task, schedule.payload.clone(), &schedule.options)?;
        let definition = serde_json::to_value(&schedule)?;
        let now = self.storage().now().await?;
        self.storage().upsert_schedule(name, definition, now).await
    }

    /// Pauses a schedule; returns false if none has this name.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn pause_schedule(&self, name: &str) -> Result<bool> {
        self.storage().set_schedule_paused(name, true).await
    }

    /// Resumes a paused schedule; returns false if none has this name.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn resume_schedule(&self, name: &str) -> Result<bool> {
        self.storage().set_schedule_paused(name, false).await
    }

    /// Removes a schedule; returns false if none has this name.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.storage().delete_schedule(name).await
    }

    /// Every stored schedule with its state.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        Ok(self
            .storage()
            .schedules()
            .await?
            .into_iter()
            .map(|r| {
                let schedule: std::result::Result<Schedule, String> =
                    serde_json::from_value(r.definition).map_err(|e| e.to_string());
                let next_tick = schedule.as_ref().ok().and_then(|s| s.next_after(r.cursor));
                ScheduleInfo {
                    name: r.name,
                    schedule,
                    paused: r.paused,
                    cursor: r.cursor,
                    next_tick,
                    last_job_id: r.last_job_id,
                }
            })
            .collect())
    }

    /// Runs one scheduler pass as of `now`: enqueues every due tick exactly once, however
    /// many callers race. Workers call this on their own; tests call it with a clock.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn run_schedules(&self, now: DateTime<Utc>) -> Result<SchedulerReport> {
        run_due(self, now).await
    }
}
