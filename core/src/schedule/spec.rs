//! When a schedule fires: every / daily / weekly / cron, in UTC, a fixed offset or a
//! named time zone.

use super::fields::CronFields;
use super::zone::Zone;
use crate::error::{Error, Result};
use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Utc, Weekday,
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
    pub(crate) fn validate(&self, dialect: CronDialect) -> Result<()> {
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
            Spec::Cron { expr } => match dialect {
                CronDialect::CronCrate => parse_cron(expr).map(|_| ()),
                CronDialect::Unix => parse_unix(expr).map(|_| ()),
            },
        }
    }

    /// The first tick strictly after `after`, in the zone's wall-clock time.
    ///
    /// Daily, weekly and cron times are wall-clock times: each local candidate, in
    /// order, becomes one instant by [`Zone::resolve`] (a time skipped by a
    /// daylight-saving change runs at the change, a repeated time at its first
    /// occurrence), and the first instant past `after` is the tick. Candidates that land
    /// on the same instant (several times inside one skipped hour) are one tick.
    pub(crate) fn next_after(
        &self,
        after: DateTime<Utc>,
        zone: Zone,
        dialect: CronDialect,
    ) -> Option<DateTime<Utc>> {
        // Local times before `after`'s own local time resolve to instants at or before
        // `after` (resolution never goes backwards), so the search starts there.
        let from = zone.local(after);
        let first_past = |candidates: &mut dyn Iterator<Item = NaiveDateTime>| {
            candidates
                .take(MAX_CANDIDATES)
                .filter_map(|c| zone.resolve(c))
                .find(|t| *t > after)
        };
        match self {
            Spec::Every { secs } => {
                let period = i64::try_from(*secs).ok()?;
                let t = after.timestamp();
                let next = (t.div_euclid(period) + 1).checked_mul(period)?;
                DateTime::from_timestamp(next, 0)
            }
            Spec::Daily { hour, minute } => {
                let time = NaiveTime::from_hms_opt(*hour, *minute, 0)?;
                let days = successive_days(from.date());
                first_past(&mut days.map(|d| d.and_time(time)))
            }
            Spec::Weekly {
                weekday,
                hour,
                minute,
            } => {
                let want = Weekday::try_from(u8::try_from(*weekday).ok()?).ok()?;
                let time = NaiveTime::from_hms_opt(*hour, *minute, 0)?;
                let days = successive_days(from.date()).filter(|d| d.weekday() == want);
                first_past(&mut days.map(|d| d.and_time(time)))
            }
            Spec::Cron { expr } => match dialect {
                CronDialect::CronCrate => {
                    // The cron crate walks wall-clock times when handed them as UTC, where
                    // no time is skipped or repeated; the zone's rule then places each.
                    let schedule = parse_cron(expr).ok()?;
                    let start = Utc.from_utc_datetime(&from) - ChronoDuration::nanoseconds(1);
                    let mut times = schedule.after(&start).map(|t| t.naive_utc());
                    first_past(&mut times)
                }
                CronDialect::Unix => {
                    let fields = parse_unix(expr).ok()?;
                    let mut next = Some(from);
                    let mut times = std::iter::from_fn(|| {
                        let found = fields.next_local(next?)?;
                        next = found.checked_add_signed(ChronoDuration::minutes(1));
                        Some(found)
                    });
                    first_past(&mut times)
                }
            },
        }
    }
}

/// The most wall-clock candidates one search looks at. A repeated hour holds at most
/// 3,600 per-second candidates that resolve at or before the instant searched from; a
/// daily spec looks at most a few days ahead.
const MAX_CANDIDATES: usize = 10_000;

/// `from`, the day after, and so on.
fn successive_days(from: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    std::iter::successors(Some(from), |d| d.succ_opt())
}

/// How a cron expression's fields are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CronDialect {
    /// As the `cron` crate reads them ([`Schedule::cron`](super::Schedule::cron)): five
    /// fields or six/seven with seconds first, names allowed, day of week 1-7 from Sunday,
    /// day of month and day of week both required to match.
    #[default]
    CronCrate,
    /// As graphile-worker and Unix cron read them (crontab entries): five fields, day of
    /// week 0-7 where 0 and 7 are Sunday, and a day matching either the day of month or
    /// the day of week when both are restricted.
    Unix,
}

impl CronDialect {
    /// True for the dialect definitions stored before dialects existed.
    pub(crate) fn is_cron_crate(&self) -> bool {
        *self == CronDialect::CronCrate
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

fn parse_unix(expr: &str) -> Result<CronFields> {
    CronFields::parse(expr).map_err(|e| Error::InvalidOption {
        option: "schedule",
        message: format!(
            "invalid cron expression `{expr}` at character {}: expected {}, found {}",
            expr.get(..e.offset).map_or(0, |s| s.chars().count()) + 1,
            e.expected,
            e.found
        ),
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
    use chrono::FixedOffset;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("valid time")
    }

    fn utc() -> Zone {
        Zone::Fixed(FixedOffset::east_opt(0).expect("utc"))
    }

    fn next(spec: &Spec, after: &str, zone: Zone) -> Option<DateTime<Utc>> {
        spec.next_after(at(after), zone, CronDialect::CronCrate)
    }

    #[test]
    fn every_is_anchored_to_the_epoch() {
        let s = Spec::Every { secs: 60 };
        assert_eq!(
            next(&s, "2026-01-01T10:00:30Z", utc()),
            Some(at("2026-01-01T10:01:00Z"))
        );
        assert_eq!(
            next(&s, "2026-01-01T10:01:00Z", utc()),
            Some(at("2026-01-01T10:02:00Z"))
        );
    }

    #[test]
    fn daily_weekly_and_cron_in_utc_and_an_offset() {
        let plus2 = Zone::Fixed(FixedOffset::east_opt(2 * 3600).expect("offset"));
        let d = Spec::Daily {
            hour: 9,
            minute: 30,
        };
        assert_eq!(
            next(&d, "2026-01-01T10:00:00Z", utc()),
            Some(at("2026-01-02T09:30:00Z"))
        );
        assert_eq!(
            next(&d, "2026-01-01T07:00:00Z", plus2),
            Some(at("2026-01-01T07:30:00Z"))
        );
        // 2026-01-01 is a Thursday; the next Monday is the 5th.
        let w = Spec::Weekly {
            weekday: 0,
            hour: 8,
            minute: 0,
        };
        assert_eq!(
            next(&w, "2026-01-01T10:00:00Z", utc()),
            Some(at("2026-01-05T08:00:00Z"))
        );
        let c = Spec::Cron {
            expr: "*/15 * * * *".into(),
        };
        assert_eq!(
            next(&c, "2026-01-01T10:07:00Z", utc()),
            Some(at("2026-01-01T10:15:00Z"))
        );
        assert_eq!(
            next(&c, "2026-01-01T10:15:00Z", plus2),
            Some(at("2026-01-01T10:30:00Z"))
        );
        let seconds = Spec::Cron {
            expr: "*/10 * * * * *".into(),
        };
        assert_eq!(
            next(&seconds, "2026-01-01T10:00:05.5Z", plus2),
            Some(at("2026-01-01T10:00:10Z"))
        );
    }

    #[test]
    fn the_cron_crate_dialect_counts_weekdays_from_one_for_sunday() {
        // Kept as it was stored: `1` is Sunday in the cron crate's reading, while the
        // Unix dialect (crontab entries) reads `1` as Monday. 2026-01-01 is a Thursday.
        let c = Spec::Cron {
            expr: "0 9 * * 1".into(),
        };
        assert_eq!(
            c.next_after(at("2026-01-01T00:00:00Z"), utc(), CronDialect::CronCrate),
            Some(at("2026-01-04T09:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-01-01T00:00:00Z"), utc(), CronDialect::Unix),
            Some(at("2026-01-05T09:00:00Z"))
        );
    }

    #[test]
    fn invalid_specs_are_errors() {
        let crate_dialect = CronDialect::CronCrate;
        assert!(Spec::Cron {
            expr: "not cron".into()
        }
        .validate(crate_dialect)
        .is_err());
        assert!(Spec::Daily {
            hour: 24,
            minute: 0
        }
        .validate(crate_dialect)
        .is_err());
        assert!(Spec::Weekly {
            weekday: 7,
            hour: 1,
            minute: 0
        }
        .validate(crate_dialect)
        .is_err());
        assert!(Spec::Every { secs: 0 }.validate(crate_dialect).is_err());
        assert!(Spec::Cron {
            expr: "0 0 * * 1-5".into()
        }
        .validate(crate_dialect)
        .is_ok());
        let unix = Spec::Cron {
            expr: "0 0 * * 8".into(),
        }
        .validate(CronDialect::Unix)
        .expect_err("weekday 8");
        assert!(
            unix.to_string()
                .contains("at character 9: expected a value from 0 to 7"),
            "{unix}"
        );
    }
}
