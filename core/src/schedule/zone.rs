//! Wall-clock time for schedules: a fixed offset from UTC or a named IANA time zone, and
//! the rule that turns a local time that a daylight-saving change skips or repeats into
//! exactly one instant.

use crate::error::{Error, Result};
use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The clock a schedule's daily, weekly and cron times are read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zone {
    /// A fixed offset from UTC: every local time exists exactly once.
    Fixed(FixedOffset),
    /// A named zone with its daylight-saving rules.
    Named(Tz),
}

/// Looks a zone up by its IANA name (`Europe/Berlin`, `America/New_York`, `UTC`).
///
/// The name is case-sensitive, as in the database.
pub(crate) fn named(name: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| Error::InvalidOption {
        option: "time_zone",
        message: format!(
            "unknown time zone `{name}`: expected an IANA zone name such as `Europe/Berlin` \
             or `America/New_York` (names are case-sensitive; tz database {})",
            chrono_tz::IANA_TZDB_VERSION
        ),
    })
}

impl Zone {
    /// The wall-clock time at instant `t`.
    pub(crate) fn local(self, t: DateTime<Utc>) -> NaiveDateTime {
        match self {
            Zone::Fixed(offset) => t.with_timezone(&offset).naive_local(),
            Zone::Named(tz) => t.with_timezone(&tz).naive_local(),
        }
    }

    /// The one instant a schedule runs for wall-clock time `local`.
    ///
    /// - A time that exists once is that instant.
    /// - A time repeated when clocks go back is its first occurrence (the earlier
    ///   instant), so it runs once.
    /// - A time skipped when clocks go forward runs at the first valid local time after
    ///   it: the instant of the change (02:30 on Europe/Berlin's spring-forward day is
    ///   03:00 local).
    ///
    /// The result never decreases as `local` increases, which is what lets a search walk
    /// local candidates in order and stop at the first one past a given instant.
    pub(crate) fn resolve(self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self {
            Zone::Fixed(offset) => offset
                .from_local_datetime(&local)
                .single()
                .map(|t| t.with_timezone(&Utc)),
            Zone::Named(tz) => match tz.from_local_datetime(&local) {
                LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
                LocalResult::None => end_of_gap(tz, local),
            },
        }
    }
}

/// The first instant whose wall-clock time is at or after `local`, which lies in a gap.
///
/// Every offset lies within 15 hours of UTC, so the change that opened the gap happened
/// within a day of `local` read as UTC; local time only moves forward across a gap, so a
/// binary search over that day finds the change to the second.
fn end_of_gap(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let at_or_after = |secs: i64| {
        DateTime::from_timestamp(secs, 0)
            .map(|t| t.with_timezone(&tz).naive_local() >= local)
            .unwrap_or(true)
    };
    let anchor = local.and_utc().timestamp();
    let (mut lo, mut hi) = (anchor - 86_400, anchor + 86_400);
    if at_or_after(lo) || !at_or_after(hi) {
        return None;
    }
    // Invariant: lo is before the change, hi at or after it.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if at_or_after(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// The UTC offset in force at `t`.
#[cfg(test)]
fn offset_at(zone: Zone, t: DateTime<Utc>) -> FixedOffset {
    use chrono::Offset;
    match zone {
        Zone::Fixed(offset) => offset,
        Zone::Named(tz) => tz.offset_from_utc_datetime(&t.naive_utc()).fix(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("valid time")
    }

    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("valid local time")
    }

    fn zone(name: &str) -> Zone {
        Zone::Named(named(name).expect("known zone"))
    }

    #[test]
    fn unknown_zone_names_are_typed_errors_naming_the_zone() {
        let err = named("Europe/Berln").expect_err("unknown");
        assert!(
            matches!(&err, Error::InvalidOption { option: "time_zone", message } if message.contains("`Europe/Berln`")),
            "{err}"
        );
        assert!(named("europe/berlin").is_err(), "names are case-sensitive");
        assert!(named("UTC").is_ok());
    }

    #[test]
    fn a_skipped_local_time_resolves_to_the_change() {
        let berlin = zone("Europe/Berlin");
        // 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
        for skipped in [
            "2026-03-29 02:00:00",
            "2026-03-29 02:30:00",
            "2026-03-29 02:59:59",
        ] {
            assert_eq!(
                berlin.resolve(naive(skipped)),
                Some(at("2026-03-29T01:00:00Z")),
                "{skipped}"
            );
        }
        assert_eq!(
            berlin.resolve(naive("2026-03-29 01:59:59")),
            Some(at("2026-03-29T00:59:59Z"))
        );
        assert_eq!(
            berlin.resolve(naive("2026-03-29 03:00:00")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        let new_york = zone("America/New_York");
        // 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
        assert_eq!(
            new_york.resolve(naive("2026-03-08 02:30:00")),
            Some(at("2026-03-08T07:00:00Z"))
        );
        assert_eq!(
            offset_at(new_york, at("2026-03-08T07:00:00Z")).local_minus_utc(),
            -4 * 3600
        );
    }

    #[test]
    fn a_repeated_local_time_resolves_to_its_first_occurrence() {
        let berlin = zone("Europe/Berlin");
        // 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:00-02:59 repeats.
        assert_eq!(
            berlin.resolve(naive("2026-10-25 02:30:00")),
            Some(at("2026-10-25T00:30:00Z"))
        );
        let new_york = zone("America/New_York");
        // 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:00-01:59 repeats.
        assert_eq!(
            new_york.resolve(naive("2026-11-01 01:30:00")),
            Some(at("2026-11-01T05:30:00Z"))
        );
    }

    #[test]
    fn fixed_offsets_resolve_every_local_time_once() {
        let plus2 = Zone::Fixed(FixedOffset::east_opt(2 * 3600).expect("offset"));
        assert_eq!(
            plus2.resolve(naive("2026-03-29 02:30:00")),
            Some(at("2026-03-29T00:30:00Z"))
        );
        assert_eq!(
            plus2.local(at("2026-03-29T00:30:00Z")),
            naive("2026-03-29 02:30:00")
        );
    }
}
