//! Human durations on the command line: `30s`, `90m`, `2h`, `7d`, `1h30m`.

use std::time::Duration;

/// Why a duration did not parse. Each message shows the input and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration: expected a number and a unit, like 30s, 90m, 2h or 7d")]
    Empty,
    /// A number with no unit after it, like `30`.
    #[error("`{input}` has no unit after {number}: add one of ms, s, m, h, d, w (like {number}s)")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number that lacks its unit.
        number: String,
    },
    /// A unit that is not one of ours, like the `x` in `7x`.
    #[error("unknown unit `{unit}` in `{input}`: use ms, s, m, h, d or w")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// A unit with no number before it, or a character that is neither.
    #[error("`{input}` is not a duration: expected a number and a unit, like 30s, 90m, 2h or 7d")]
    Malformed {
        /// The whole input.
        input: String,
    },
    /// Too large to represent.
    #[error("`{input}` is too long a duration")]
    Overflow {
        /// The whole input.
        input: String,
    },
}

/// Parses a duration made of one or more `<number><unit>` parts (`7d`, `1h30m`), with
/// units `ms`, `s`, `m`, `h`, `d` (24 hours) and `w` (7 days). Spaces are not allowed.
///
/// # Errors
/// A [`DurationError`] naming what is wrong with the input.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed {
        input: input.to_string(),
    };
    let overflow = || DurationError::Overflow {
        input: input.to_string(),
    };
    let mut total = Duration::ZERO;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(malformed());
        }
        let (number, tail) = rest.split_at(digits);
        let units = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(units);
        let value: u64 = number.parse().map_err(|_| overflow())?;
        let millis_per_unit: u64 = match unit {
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_string(),
                    number: number.to_string(),
                })
            }
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        let millis = value.checked_mul(millis_per_unit).ok_or_else(overflow)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(overflow)?;
        rest = tail;
    }
    // Every storage keeps times as chrono values; refuse what they cannot add to now.
    if chrono::Duration::from_std(total).is_err() || total.as_secs() > 100 * 365 * 86_400 {
        return Err(overflow());
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_compounds_parse() {
        let cases = [
            ("30s", 30_000),
            ("90m", 5_400_000),
            ("2h", 7_200_000),
            ("7d", 604_800_000),
            ("1w", 604_800_000),
            ("250ms", 250),
            ("1h30m", 5_400_000),
            ("0s", 0),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(ms)),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_durations_are_typed_errors() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("30"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("7x"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration("1h 30m"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration("-5m"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration("999999w"),
            Err(DurationError::Overflow { .. })
        ));
        let message = parse_duration("7x").unwrap_err().to_string();
        assert!(message.contains("7x") && message.contains("ms, s, m, h, d or w"));
    }

    #[test]
    fn formatting_round_trips() {
        for input in ["1h30m", "7d", "250ms", "1d2h3m4s5ms"] {
            let d = parse_duration(input).unwrap();
            assert_eq!(format_duration(d), input);
        }
    }
}
