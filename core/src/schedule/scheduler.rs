//! One scheduler pass: compute due ticks per schedule and claim them with a
//! compare-and-set on the cursor, in the same transaction as the enqueue.

use super::spec::plus;
use super::{CatchUp, Schedule, DEFAULT_SKIP_GRACE, MAX_BACKFILL_TICKS};
use crate::error::Result;
use crate::queue::Queue;
use crate::storage::AdvanceScheduleParams;
use crate::storage::Storage;
use chrono::{DateTime, Utc};

/// What one scheduler pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerReport {
    /// Jobs enqueued, with the schedule that made each.
    pub enqueued: Vec<(String, crate::JobId)>,
    /// Ticks passed over (missed under the catch-up rule, or overlapping a running job).
    pub skipped: usize,
    /// Schedules another scheduler advanced first.
    pub lost_races: usize,
}

pub(crate) async fn run_due(queue: &Queue, now: DateTime<Utc>) -> Result<SchedulerReport> {
    let storage = queue.storage();
    let mut report = SchedulerReport::default();
    for record in storage.schedules().await? {
        if record.paused {
            continue;
        }
        let schedule: Schedule = match serde_json::from_value(record.definition.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(schedule = %record.name, error = %e, "unreadable schedule definition; skipped");
                continue;
            }
        };
        if let Err(e) = schedule.zone() {
            // Checked when added: only a definition from a build with a newer zone
            // database gets here, and guessing another zone would fire at wrong times.
            tracing::error!(schedule = %record.name, error = %e, "schedule in an unknown time zone; skipped");
            continue;
        }
        let window_start = match schedule.catch_up {
            CatchUp::Backfill { window_secs } => {
                let floor = now
                    - chrono::Duration::seconds(i64::try_from(window_secs).unwrap_or(i64::MAX / 2));
                record.cursor.max(floor)
            }
            _ => record.cursor,
        };
        // Ticks in (cursor, now]; for long gaps only the latest matter except when
        // backfilling, so the walk is bounded.
        let mut ticks = Vec::new();
        let mut t = window_start;
        while let Some(next) = schedule.next_after(t) {
            if next > now {
                break;
            }
            ticks.push(next);
            if ticks.len() > MAX_BACKFILL_TICKS {
                ticks.remove(0);
            }
            t = next;
        }
        // A walk that started at a backfill floor may still have ticks before it that
        // were never handled: the cursor moves to the latest tick either way.
        let Some(&last) = ticks.last() else { continue };
        let mut selected: Vec<DateTime<Utc>> = match schedule.catch_up {
            CatchUp::Skip => ticks
                .iter()
                .copied()
                .filter(|t| plus(*t, DEFAULT_SKIP_GRACE) >= now)
                .collect(),
            CatchUp::One => vec![last],
            CatchUp::Backfill { .. } => ticks.clone(),
        };
        if schedule.no_overlap && !selected.is_empty() {
            if let Some(prev) = record.last_job_id {
                let running = storage
                    .get_job(prev)
                    .await?
                    .is_some_and(|j| !j.status.is_finished());
                if running {
                    selected.clear();
                }
            }
        }
        report.skipped += ticks.len() - selected.len();
        let jobs = selected
            .iter()
            .map(|&tick| {
                let backfilled = plus(tick, DEFAULT_SKIP_GRACE) < now;
                schedule
                    .options
                    .build(&schedule.task, schedule.payload_for(tick, backfilled))
            })
            .collect::<Result<Vec<_>>>()?;
        match storage
            .advance_schedule(AdvanceScheduleParams {
                name: &record.name,
                from: record.cursor,
                to: last,
                jobs,
            })
            .await?
        {
            Some(ids) => {
                if !ids.is_empty() {
                    queue.wake();
                }
                for &job_id in &ids {
                    queue.emit(crate::event::Event::ScheduleFired {
                        schedule: record.name.clone(),
                        job_id,
                    });
                }
                report
                    .enqueued
                    .extend(ids.into_iter().map(|id| (record.name.clone(), id)));
            }
            None => report.lost_races += 1,
        }
    }
    Ok(report)
}
