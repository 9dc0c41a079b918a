//! Five cron fields read as graphile-worker (and Unix cron) reads them: minute, hour, day
//! of month, month, day of week, each a comma list of numbers, `a-b` ranges and `*`,
//! with `/n` steps; day of week 0-7 where both 0 and 7 are Sunday; and when both the day
//! of month and the day of week are restricted, a day matching either fires.

use super::crontab::CrontabErrorKind;
use chrono::{Datelike, Duration as ChronoDuration, NaiveDate, NaiveDateTime, Timelike};

/// A parsed five-field expression: one bit per allowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CronFields {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// Where in the expression a field went wrong (a byte offset), and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) offset: usize,
    pub(crate) kind: CrontabErrorKind,
    pub(crate) expected: String,
    pub(crate) found: String,
}

/// One of the five fields: its name and the values it allows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    min: u32,
    max: u32,
    /// Day of week: 7 is another name for 0 (Sunday).
    wraps: bool,
}

/// The five fields in line order.
pub(crate) const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        wraps: false,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        wraps: false,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        wraps: false,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        wraps: false,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 6,
        wraps: true,
    },
];

/// How far ahead a search looks for a matching day: past the eight years between two
/// 29 Februaries across 2100.
const SEARCH_DAYS: u32 = 366 * 9;

impl Field {
    fn error(
        &self,
        offset: usize,
        kind: CrontabErrorKind,
        expected: String,
        found: &str,
    ) -> FieldError {
        FieldError {
            offset,
            kind,
            expected,
            found: format!("`{found}`"),
        }
    }

    fn range_text(&self) -> String {
        if self.wraps {
            "0 to 7 (0 and 7 are Sunday)".to_string()
        } else {
            format!("{} to {}", self.min, self.max)
        }
    }

    /// Reads one number of this field at `offset`, wrapping 7 to 0 for the day of week.
    fn number(&self, text: &str, offset: usize) -> Result<u32, FieldError> {
        let value = text.parse::<u32>().ok();
        let top = if self.wraps { self.max + 1 } else { self.max };
        match value {
            Some(v) if v >= self.min && v <= top => {
                Ok(if self.wraps && v == top { self.min } else { v })
            }
            Some(_) => Err(self.error(
                offset,
                CrontabErrorKind::OutOfRange,
                format!(
                    "a value from {} in the {} field",
                    self.range_text(),
                    self.name
                ),
                text,
            )),
            None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => Err(self
                .error(
                    offset,
                    CrontabErrorKind::OutOfRange,
                    format!(
                        "a value from {} in the {} field",
                        self.range_text(),
                        self.name
                    ),
                    text,
                )),
            None => Err(self.error(
                offset,
                CrontabErrorKind::InvalidField,
                format!(
                    "a number, an `a-b` range or `*` (optionally with `/step`) in the {} field",
                    self.name
                ),
                text,
            )),
        }
    }

    /// Parses the whole field (a comma list) into a bit set, or says where it is wrong.
    /// `base` is the field's offset in the expression, for error positions.
    pub(crate) fn parse(&self, text: &str, base: usize) -> Result<u64, FieldError> {
        let mut bits = 0u64;
        let mut at = base;
        for part in text.split(',') {
            let has_step = part.contains('/');
            let (body, step) = match part.split_once('/') {
                Some((body, step)) => {
                    let step_at = at + body.len() + 1;
                    let n = step.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        self.error(
                            step_at,
                            CrontabErrorKind::InvalidStep,
                            "a step of 1 or more after `/`".into(),
                            step,
                        )
                    })?;
                    (body, n)
                }
                None => (part, 1),
            };
            let (from, to) = if body == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = body.split_once('-') {
                let lo = self.number_raw(a, at)?;
                let hi = self.number_raw(b, at + a.len() + 1)?;
                if hi <= lo {
                    return Err(self.error(
                        at,
                        CrontabErrorKind::EmptyRange,
                        "a range whose end is larger than its start".into(),
                        body,
                    ));
                }
                (lo, hi)
            } else if has_step {
                // `5/15` has no agreed meaning (graphile rejects it): say what would work.
                return Err(self.error(
                    at,
                    CrontabErrorKind::InvalidStep,
                    "a step after `*` or an `a-b` range".into(),
                    part,
                ));
            } else {
                let v = self.number_raw(body, at)?;
                (v, v)
            };
            let mut v = from;
            while v <= to {
                let value = if self.wraps && v == self.max + 1 {
                    self.min
                } else {
                    v
                };
                bits |= 1u64 << value;
                v += step;
            }
            at += part.len() + 1;
        }
        Ok(bits)
    }

    /// A number as written (7 stays 7 for the day of week, so `5-7` is a valid range).
    fn number_raw(&self, text: &str, offset: usize) -> Result<u32, FieldError> {
        self.number(text, offset)?;
        text.parse::<u32>().map_err(|_| {
            self.error(
                offset,
                CrontabErrorKind::InvalidField,
                "a number".into(),
                text,
            )
        })
    }

    fn count(&self) -> u32 {
        self.max - self.min + 1
    }
}

impl CronFields {
    /// Parses five whitespace-separated fields.
    pub(crate) fn parse(expr: &str) -> Result<CronFields, FieldError> {
        let mut tokens = [("", 0usize); 5];
        let mut fields = 0;
        let mut rest = expr;
        let mut offset = 0;
        loop {
            let trimmed = rest.trim_start();
            offset += rest.len() - trimmed.len();
            if trimmed.is_empty() {
                break;
            }
            let len = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
            if fields == FIELDS.len() {
                return Err(FieldError {
                    offset,
                    kind: CrontabErrorKind::UnexpectedText,
                    expected: "five fields (minute hour day-of-month month day-of-week)".into(),
                    found: format!("a sixth field `{}`", &trimmed[..len]),
                });
            }
            tokens[fields] = (&trimmed[..len], offset);
            fields += 1;
            offset += len;
            rest = &trimmed[len..];
        }
        if fields < 5 {
            return Err(FieldError {
                offset,
                kind: CrontabErrorKind::MissingField,
                expected: format!("the {} field", FIELDS[fields].name),
                found: "the end of the expression".into(),
            });
        }
        Self::from_tokens(&tokens)
    }

    /// Parses five fields, each given with its offset in the text errors point into.
    pub(crate) fn from_tokens(tokens: &[(&str, usize); 5]) -> Result<CronFields, FieldError> {
        let mut masks = [0u64; 5];
        for ((mask, field), (text, offset)) in masks.iter_mut().zip(&FIELDS).zip(tokens) {
            *mask = field.parse(text, *offset)?;
        }
        Self::from_masks(masks).map_err(|(kind, expected, found)| FieldError {
            offset: tokens[2].1,
            kind,
            expected,
            found,
        })
    }

    /// Builds the matcher from five field masks, refusing a day that never comes.
    fn from_masks(masks: [u64; 5]) -> Result<CronFields, (CrontabErrorKind, String, String)> {
        let [minutes, hours, days, months, weekdays] = masks;
        let fields = CronFields {
            minutes,
            hours: u32::try_from(hours).unwrap_or(0),
            days: u32::try_from(days).unwrap_or(0),
            months: u16::try_from(months).unwrap_or(0),
            weekdays: u8::try_from(weekdays).unwrap_or(0),
            days_restricted: days.count_ones() != FIELDS[2].count(),
            weekdays_restricted: weekdays.count_ones() != FIELDS[4].count(),
        };
        let possible = (1..=12u32).any(|m| {
            fields.months & (1 << m) != 0
                && (1..=days_in_month(m)).any(|d| fields.days & (1 << d) != 0)
        });
        if fields.days_restricted && !fields.weekdays_restricted && !possible {
            return Err((
                CrontabErrorKind::NeverFires,
                "a day of month that occurs in one of the chosen months".into(),
                "days that never occur in them (such as 30 February)".into(),
            ));
        }
        Ok(fields)
    }

    /// True if wall-clock `date` is a day this expression fires on.
    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        }
    }

    /// The first whole minute at or after wall-clock `from` that matches.
    pub(crate) fn next_local(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let whole = from.with_second(0)?.with_nanosecond(0)?;
        let start = if whole < from {
            whole.checked_add_signed(ChronoDuration::minutes(1))?
        } else {
            whole
        };
        let mut date = start.date();
        let mut first = start.hour() * 60 + start.minute();
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date) {
                for minute_of_day in first..24 * 60 {
                    let (h, m) = (minute_of_day / 60, minute_of_day % 60);
                    if self.hours & (1 << h) != 0 && self.minutes & (1 << m) != 0 {
                        return date.and_hms_opt(h, m, 0);
                    }
                }
            }
            date = date.succ_opt()?;
            first = 0;
        }
        None
    }
}

/// The most days a month can have (29 for February).
fn days_in_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("valid local time")
    }

    fn next(expr: &str, from: &str) -> Option<NaiveDateTime> {
        CronFields::parse(expr)
            .expect("valid")
            .next_local(naive(from))
    }

    #[test]
    fn numbers_ranges_steps_and_lists() {
        assert_eq!(
            next("0 4 * * *", "2026-01-01 04:00"),
            Some(naive("2026-01-01 04:00"))
        );
        assert_eq!(
            next("0 4 * * *", "2026-01-01 04:01"),
            Some(naive("2026-01-02 04:00"))
        );
        assert_eq!(
            next("*/20 * * * *", "2026-01-01 10:41"),
            Some(naive("2026-01-01 11:00"))
        );
        assert_eq!(
            next("10-40/15 * * * *", "2026-01-01 10:26"),
            Some(naive("2026-01-01 10:40"))
        );
        assert_eq!(
            next("5,50 9-10 * * *", "2026-01-01 10:06"),
            Some(naive("2026-01-01 10:50"))
        );
        assert_eq!(
            next("0 0 1 */3 *", "2026-02-01 00:00"),
            Some(naive("2026-04-01 00:00"))
        );
    }

    #[test]
    fn day_of_week_counts_from_sunday_and_seven_is_sunday() {
        // 2026-01-01 is a Thursday.
        assert_eq!(
            next("0 9 * * 1-5", "2026-01-02 10:00"),
            Some(naive("2026-01-05 09:00"))
        );
        assert_eq!(
            next("0 9 * * 0", "2026-01-01 00:00"),
            Some(naive("2026-01-04 09:00"))
        );
        assert_eq!(
            next("0 9 * * 7", "2026-01-01 00:00"),
            Some(naive("2026-01-04 09:00"))
        );
        assert_eq!(
            next("0 9 * * 5-7", "2026-01-03 10:00"),
            Some(naive("2026-01-04 09:00"))
        );
    }

    #[test]
    fn restricted_day_of_month_and_week_match_either() {
        // The 15th (a Thursday in January 2026) or any Monday.
        assert_eq!(
            next("0 0 15 * 1", "2026-01-06 00:00"),
            Some(naive("2026-01-12 00:00"))
        );
        assert_eq!(
            next("0 0 15 * 1", "2026-01-13 00:00"),
            Some(naive("2026-01-15 00:00"))
        );
        // `1-31` restricts nothing, as in graphile: only Mondays.
        assert_eq!(
            next("0 0 1-31 * 1", "2026-01-06 00:00"),
            Some(naive("2026-01-12 00:00"))
        );
    }

    #[test]
    fn leap_days_are_found_and_impossible_days_refused() {
        assert_eq!(
            next("0 0 29 2 *", "2026-01-01 00:00"),
            Some(naive("2028-02-29 00:00"))
        );
        let never = CronFields::parse("0 0 30 2 *").expect_err("never fires");
        assert_eq!(never.kind, CrontabErrorKind::NeverFires);
        // With a weekday as well, the weekday still fires.
        assert!(CronFields::parse("0 0 30 2 1").is_ok());
    }

    #[test]
    fn errors_point_at_the_offending_part() {
        let e = CronFields::parse("0 24 * * *").expect_err("hour");
        assert_eq!((e.offset, e.kind), (2, CrontabErrorKind::OutOfRange));
        let e = CronFields::parse("0 1 * * 1,8").expect_err("weekday");
        assert_eq!((e.offset, e.kind), (10, CrontabErrorKind::OutOfRange));
        let e = CronFields::parse("*/0 * * * *").expect_err("step");
        assert_eq!((e.offset, e.kind), (2, CrontabErrorKind::InvalidStep));
        let e = CronFields::parse("0 5-5 * * *").expect_err("range");
        assert_eq!((e.offset, e.kind), (2, CrontabErrorKind::EmptyRange));
        let e = CronFields::parse("0 1 * JAN *").expect_err("name");
        assert_eq!((e.offset, e.kind), (6, CrontabErrorKind::InvalidField));
        let e = CronFields::parse("0 1,,2 * * *").expect_err("empty item");
        assert_eq!((e.offset, e.kind), (4, CrontabErrorKind::InvalidField));
        let e = CronFields::parse("0 1 * *").expect_err("four fields");
        assert_eq!((e.offset, e.kind), (7, CrontabErrorKind::MissingField));
        let e = CronFields::parse("0 0 1 * * *").expect_err("six fields");
        assert_eq!((e.offset, e.kind), (10, CrontabErrorKind::UnexpectedText));
    }
}
