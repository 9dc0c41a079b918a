//! Schedules: recurring jobs that fire once per tick however many workers run.
//!
//! A schedule's definition and its cursor (the last tick handled) live in storage. A
//! scheduler (every worker runs one unless told not to) computes the ticks between the
//! cursor and now and claims them by moving the cursor with a compare-and-set in the same
//! transaction as the enqueue, so each tick is enqueued exactly once.
//!
//! Daily, weekly and cron times are wall-clock times in UTC, a fixed offset
//! ([`Schedule::utc_offset`]) or a named IANA time zone ([`Schedule::in_zone`]). Across
//! a daylight-saving change in a named zone, each wall-clock time runs once: a time the
//! change skips runs at the first valid time after it (02:30 on the spring-forward day in
//! Europe/Berlin runs at 03:00), a time it repeats runs at its first occurrence.
//! [`crontab`] reads graphile-worker's crontab format into schedules.

pub mod crontab;
mod fields;
mod json5;
mod scheduler;
mod spec;
mod zone;

pub(crate) use scheduler::run_due;
pub use scheduler::SchedulerReport;
use spec::CronDialect;
pub use spec::Spec;
use zone::Zone;

use crate::error::{Error, Result};
use crate::job::JobId;
use crate::options::JobOptions;
use crate::queue::Queue;
pub use crate::storage::ScheduleRecord;
use crate::storage::Storage;
use chrono::{DateTime, FixedOffset, Offset, SecondsFormat, Utc, Weekday};
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
/// let berlin = Schedule::daily(2, 30).in_zone("Europe/Berlin").task("backup", &());
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
    /// An IANA zone name; absent in definitions stored before zones existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "CronDialect::is_cron_crate")]
    cron_dialect: CronDialect,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tick_in_payload: bool,
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
            time_zone: None,
            cron_dialect: CronDialect::default(),
            tick_in_payload: false,
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

    /// Fires each day at `hour:minute` (UTC unless [`Schedule::in_zone`] or
    /// [`Schedule::utc_offset`] is set).
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

    /// Fires on a cron expression.
    ///
    /// Five numeric fields (`minute hour day-of-month month day-of-week`) read as Unix
    /// cron and graphile-worker read them: day of week 0-7 where 0 and 7 are Sunday and 1
    /// is Monday, so `0 9 * * 1-5` fires on weekdays; when both the day of month and the
    /// day of week are restricted, a day matching either fires. Expressions with names
    /// (`MON-FRI`, `JAN`) or with six or seven fields (seconds first) read as the `cron`
    /// crate reads them (day of week 1-7 from Sunday; both day fields must match). An
    /// invalid expression is an error when the schedule is added.
    pub fn cron(expr: &str) -> Self {
        let unix =
            expr.split_whitespace().count() == 5 && !expr.chars().any(|c| c.is_ascii_alphabetic());
        let mut schedule = Self::with_spec(Spec::Cron {
            expr: expr.to_string(),
        });
        if unix {
            schedule.cron_dialect = CronDialect::Unix;
        }
        schedule
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

    /// Reads daily, weekly and cron times in this fixed offset from UTC. Set either this
    /// or [`Schedule::in_zone`].
    pub fn utc_offset(mut self, offset: FixedOffset) -> Self {
        self.utc_offset_secs = offset.local_minus_utc();
        self
    }

    /// Reads daily, weekly and cron times in a named IANA time zone (`Europe/Berlin`,
    /// `America/New_York`), following its daylight-saving changes. `every` periods do not
    /// depend on the zone. The name is checked when the schedule is added: an unknown one
    /// is [`Error::InvalidOption`] for option `time_zone`, naming it.
    ///
    /// Across a change each wall-clock time runs once. A time the change skips runs at
    /// the first valid time after it: a daily 02:30 in Europe/Berlin runs at 03:00 CEST on
    /// 29 March 2026 (several skipped times of one cron expression, and a regular tick at
    /// that instant, run as one tick). A time the change repeats runs at its first
    /// occurrence only: 02:30 CEST, not 02:30 CET, on 25 October 2026.
    ///
    /// ```
    /// use durable_jobs::Schedule;
    /// use chrono::{TimeZone, Utc};
    ///
    /// let backup = Schedule::daily(2, 30).in_zone("Europe/Berlin").task("backup", &());
    /// let before = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
    /// // 02:30 does not exist on 29 March 2026 in Berlin: 03:00 CEST is 01:00 UTC.
    /// assert_eq!(backup.next_after(before), Some(Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()));
    /// ```
    pub fn in_zone(mut self, name: &str) -> Self {
        self.time_zone = Some(name.to_string());
        self
    }

    /// The IANA time zone set with [`Schedule::in_zone`], if any.
    pub fn time_zone(&self) -> Option<&str> {
        self.time_zone.as_deref()
    }

    /// Adds the tick to each job's payload as graphile-worker's crontab does: the payload
    /// (an object, or null for an empty one) gets `_cron: {"ts": "<the tick, ISO 8601
    /// UTC>", "backfilled": <true when the tick is enqueued more than
    /// [`DEFAULT_SKIP_GRACE`] after its time>}`. Crontab entries set it.
    pub fn tick_in_payload(mut self, yes: bool) -> Self {
        self.tick_in_payload = yes;
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

    /// The clock the times are read on.
    fn zone(&self) -> Result<Zone> {
        match &self.time_zone {
            Some(name) => zone::named(name).map(Zone::Named),
            // Validated at registration; UTC is the safe reading of anything else.
            None => Ok(Zone::Fixed(
                FixedOffset::east_opt(self.utc_offset_secs).unwrap_or(Utc.fix()),
            )),
        }
    }

    /// The first tick strictly after `after`; `None` when there is none, or when the
    /// time zone is unknown (a schedule is checked when added, so only a definition
    /// stored by a build with a newer zone database gets here).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let zone = self.zone().ok()?;
        self.spec.next_after(after, zone, self.cron_dialect)
    }

    /// Checks everything about the definition that does not need the queue.
    fn validate(&self) -> Result<()> {
        self.spec.validate(self.cron_dialect)?;
        if FixedOffset::east_opt(self.utc_offset_secs).is_none() {
            return Err(Error::InvalidOption {
                option: "schedule",
                message: format!(
                    "utc offset of {} seconds is out of range",
                    self.utc_offset_secs
                ),
            });
        }
        if let Some(name) = &self.time_zone {
            zone::named(name)?;
            if self.utc_offset_secs != 0 {
                return Err(Error::InvalidOption {
                    option: "time_zone",
                    message: format!("set either `in_zone(\"{name}\")` or `utc_offset`, not both"),
                });
            }
        }
        if let Some(e) = &self.payload_error {
            return Err(Error::InvalidPayload {
                task: self.task.clone(),
                message: e.clone(),
            });
        }
        if self.tick_in_payload && !matches!(self.payload, Value::Object(_) | Value::Null) {
            return Err(Error::InvalidPayload {
                task: self.task.clone(),
                message: "a schedule that adds `_cron` to its payload needs an object payload"
                    .into(),
            });
        }
        Ok(())
    }

    /// The payload of the job for `tick`: the schedule's, plus graphile's `_cron` entry
    /// when [`Schedule::tick_in_payload`] is set.
    pub(crate) fn payload_for(&self, tick: DateTime<Utc>, backfilled: bool) -> Value {
        if !self.tick_in_payload {
            return self.payload.clone();
        }
        let mut object = match &self.payload {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        object.insert(
            "_cron".into(),
            serde_json::json!({
                "ts": tick.to_rfc3339_opts(SecondsFormat::Millis, true),
                "backfilled": backfilled,
            }),
        );
        Value::Object(object)
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
    /// [`Error::InvalidOption`] for an invalid cron expression, time or period, or offset,
    /// and (option `time_zone`) for an unknown time zone name, which the message names;
    /// [`Error::UnknownTask`] / [`Error::InvalidPayload`] as for [`Queue::enqueue`].
    pub async fn add_schedule(&self, name: &str, schedule: Schedule) -> Result<()> {
        let definition = self.check_schedule(name, &schedule)?;
        let now = self.storage().now().await?;
        self.storage().upsert_schedule(name, definition, now).await
    }

    /// Adds every schedule of a crontab in graphile-worker's format (see [`crontab`]),
    /// as [`Queue::add_schedule`] would one by one, and returns their names in line
    /// order. Every entry is checked before any is stored, so a mistake on any line adds
    /// nothing. Adding the same crontab again at the next start updates the definitions
    /// and keeps each schedule's cursor; a line removed from the crontab does not remove
    /// its schedule ([`Queue::remove_schedule`] does).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (option `crontab`) with the [`crontab::CrontabError`]'s
    /// message (line, column, what was expected) for text that does not parse (call
    /// [`crontab::parse`] first for the typed error); otherwise as
    /// [`Queue::add_schedule`], for the first entry that fails.
    ///
    /// # Examples
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use durable_jobs::{JobContext, Queue, TaskError};
    /// use durable_jobs_memory::MemoryStorage;
    /// use std::sync::Arc;
    ///
    /// let queue = Queue::new(Arc::new(MemoryStorage::new()));
    /// queue.register("send_weekly_email", |_ctx: JobContext, _: serde_json::Value| async {
    ///     Ok::<_, TaskError>(())
    /// });
    /// // A file works the same: queue.add_crontab(&std::fs::read_to_string("crontab")?).
    /// let names = queue
    ///     .add_crontab(
    ///         "# Mondays at 04:30 Berlin time, backfilling two days, 10 attempts\n\
    ///          30 4 * * 1 send_weekly_email ?fill=2d&max=10&tz=Europe/Berlin {onboarding:false}",
    ///     )
    ///     .await?;
    /// assert_eq!(names, ["send_weekly_email"]);
    /// let bad = queue.add_crontab("30 4 * * 8 send_weekly_email").await.unwrap_err();
    /// assert!(bad.to_string().contains("line 1, column 10"), "{bad}");
    /// # Ok::<(), durable_jobs::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn add_crontab(&self, crontab: &str) -> Result<Vec<String>> {
        let entries = crontab::parse(crontab).map_err(|e| Error::InvalidOption {
            option: "crontab",
            message: e.to_string(),
        })?;
        let definitions = entries
            .iter()
            .map(|e| self.check_schedule(&e.name, &e.schedule))
            .collect::<Result<Vec<_>>>()?;
        let now = self.storage().now().await?;
        let mut names = Vec::with_capacity(entries.len());
        for (entry, definition) in entries.into_iter().zip(definitions) {
            self.storage()
                .upsert_schedule(&entry.name, definition, now)
                .await?;
            names.push(entry.name);
        }
        Ok(names)
    }

    /// Validates a schedule under `name` and returns its stored definition.
    fn check_schedule(&self, name: &str, schedule: &Schedule) -> Result<Value> {
        crate::options::validate_task_name(name).map_err(|_| Error::InvalidOption {
            option: "schedule",
            message: format!(
                "schedule name `{name}` must be 1 to 128 characters from A-Z a-z 0-9 _ . : -"
            ),
        })?;
        schedule.validate()?;
        // The handler sees the payload as a tick will send it.
        let sample = schedule.payload_for(DateTime::<Utc>::UNIX_EPOCH, false);
        self.build_job(&schedule.task, sample, &schedule.options)?;
        Ok(serde_json::to_value(schedule)?)
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
