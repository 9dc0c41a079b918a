//! When a schedule fires: every / daily / weekly / cron, in UTC or a fixed offset.

use crate::error::{Error, Result};
use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, FixedOffset, NaiveTime, TimeZone, Utc, Weekday,
};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::time::Duration;

/// The rule that decides a schedule's ticks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spec {
    /// Every `secs` seconds, on multiples of the period since the Unix epoch, so every
    /// worker computes the same ticks.
    Every {
        /// The period in seconds.
        secs: u64,
    },
    /// Each day at `hour:minute`.
    Daily {
        /// Hour, 0-23.
        hour: u32,
        /// Minute, 0-59.
        minute: u32,
    },
    /// Each week on `weekday` at `hour:minute`.
    Weekly {
        /// Day of the week, 0 = Monday ... 6 = Sunday.
        weekday: u32,
        /// Hour, 0-23.
        hour: u32,
        /// Minute, 0-59.
        minute: u32,
    },
    /// A cron expression: five fields (minute first) or six/seven (seconds first).
    Cron {
        /// The expression as given.
        expr: String,
    },
}

impl Spec {
    /// Checks the spec, so a bad one fails at registration and never in the scheduler.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |message: String| {
            Err(Error::InvalidOption {
                option: "schedule",
                message,
            })
        };
        match self {
            Spec::Every { secs } if *secs == 0 => {
                bad("an `every` period must be at least one second".into())
            }
            Spec::Every { .. } => Ok(()),
            Spec::Daily { hour, minute } | Spec::Weekly { hour, minute, .. }
                if *hour > 23 || *minute > 59 =>
            {
                bad(format!("{hour:02}:{minute:02} is not a time of day"))
            }
            Spec::Weekly { weekday, .. } if *weekday > 6 => {
                bad(format!("weekday {weekday} is not 0 (Monday) to 6 (Sunday)"))
            }
            Spec::Daily { .. } | Spec::Weekly { .. } => Ok(()),
            Spec::Cron { expr } => parse_cron(expr).map(|_| ()),
        }
    }

    /// The first tick strictly after `after`, in the given offset's wall-clock time.
    pub(crate) fn next_after(
        &self,
        after: DateTime<Utc>,
        offset: FixedOffset,
    ) -> Option<DateTime<Utc>> {
        match self {
            Spec::Every { secs } => {
                let period = i64::try_from(*secs).ok()?;
                let t = after.timestamp();
                let next = (t.div_euclid(period) + 1).checked_mul(period)?;
                DateTime::from_timestamp(next, 0)
            }
            Spec::Daily { hour, minute } => {
                let local = after.with_timezone(&offset);
                let time = NaiveTime::from_hms_opt(*hour, *minute, 0)?;
                let mut day = local.date_naive();
                loop {
                    let candidate = offset.from_local_datetime(&day.and_time(time)).single()?;
                    if candidate > local {
                        return Some(candidate.with_timezone(&Utc));
                    }
                    day = day.succ_opt()?;
                }
            }
            Spec::Weekly {
                weekday,
                hour,
                minute,
            } => {
                let want = Weekday::try_from(u8::try_from(*weekday).ok()?).ok()?;
                let local = after.with_timezone(&offset);
                let time = NaiveTime::from_hms_opt(*hour, *minute, 0)?;
                let mut day = local.date_naive();
                for _ in 0..9 {
                    if day.weekday() == want {
                        let candidate = offset.from_local_datetime(&day.and_time(time)).single()?;
                        if candidate > local {
                            return Some(candidate.with_timezone(&Utc));
                        }
                    }
                    day = day.succ_opt()?;
                }
                None
            }
            Spec::Cron { expr } => {
                let schedule = parse_cron(expr).ok()?;
                schedule
                    .after(&after.with_timezone(&offset))
                    .next()
                    .map(|t| t.with_timezone(&Utc))
            }
        }
    }
}

fn parse_cron(expr: &str) -> Result<cron::Schedule> {
    // The cron crate wants seconds first; the common five-field form gets a zero second.
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| Error::InvalidOption {
        option: "schedule",
        message: format!("invalid cron expression `{expr}`: {e}"),
    })
}

/// Converts a period to whole seconds (at least one).
pub(crate) fn period_secs(d: Duration) -> u64 {
    d.as_secs()
}

/// Adds a std duration to a time, saturating.
pub(crate) fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("valid time")
    }

    #[test]
    fn every_is_anchored_to_the_epoch() {
        let s = Spec::Every { secs: 60 };
        assert_eq!(
            s.next_after(
                at("2026-01-01T10:00:30Z"),
                FixedOffset::east_opt(0).expect("utc")
            ),
            Some(at("2026-01-01T10:01:00Z"))
        );
        assert_eq!(
            s.next_after(
                at("2026-01-01T10:01:00Z"),
                FixedOffset::east_opt(0).expect("utc")
            ),
            Some(at("2026-01-01T10:02:00Z"))
        );
    }

    #[test]
    fn daily_weekly_and_cron_in_utc_and_an_offset() {
        let utc = FixedOffset::east_opt(0).expect("utc");
        let plus2 = FixedOffset::east_opt(2 * 3600).expect("offset");
        let d = Spec::Daily {
            hour: 9,
            minute: 30,
        };
        assert_eq!(
            d.next_after(at("2026-01-01T10:00:00Z"), utc),
            Some(at("2026-01-02T09:30:00Z"))
        );
        assert_eq!(
            d.next_after(at("2026-01-01T07:00:00Z"), plus2),
            Some(at("2026-01-01T07:30:00Z"))
        );
        // 2026-01-01 is a Thursday; the next Monday is the 5th.
        let w = Spec::Weekly {
            weekday: 0,
            hour: 8,
            minute: 0,
        };
        assert_eq!(
            w.next_after(at("2026-01-01T10:00:00Z"), utc),
            Some(at("2026-01-05T08:00:00Z"))
        );
        let c = Spec::Cron {
            expr: "*/15 * * * *".into(),
        };
        assert_eq!(
            c.next_after(at("2026-01-01T10:07:00Z"), utc),
            Some(at("2026-01-01T10:15:00Z"))
        );
    }

    #[test]
    fn invalid_specs_are_errors() {
        assert!(Spec::Cron {
            expr: "not cron".into()
        }
        .validate()
        .is_err());
        assert!(Spec::Daily {
            hour: 24,
            minute: 0
        }
        .validate()
        .is_err());
        assert!(Spec::Weekly {
            weekday: 7,
            hour: 1,
            minute: 0
        }
        .validate()
        .is_err());
        assert!(Spec::Every { secs: 0 }.validate().is_err());
        assert!(Spec::Cron {
            expr: "0 0 * * 1-5".into()
        }
        .validate()
        .is_ok());
    }
}
