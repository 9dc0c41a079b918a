//! graphile-worker's crontab format, read into named [`Schedule`]s.
//!
//! A crontab is text with one schedule a line; blank lines and lines starting with `#`
//! are skipped:
//!
//! ```text
//! # minute hour day-of-month month day-of-week task ?options {payload}
//! 0 4 * * *   nightly_cleanup
//! 30 4 * * 1  send_weekly_email ?fill=2d&max=10 {onboarding:false}
//! 0 */4 * * * rollup ?id=rollup_eu&queue=rollups&priority=1&tz=Europe/Berlin {"region":"eu"}
//! ```
//!
//! **Time fields**: minute (0-59), hour (0-23), day of month (1-31), month (1-12), day of
//! week (0-7, 0 and 7 are Sunday). Each is a comma list of numbers, `a-b` ranges (end
//! larger than start) and `*`, where `*` and ranges take a `/n` step (`*/15`, `10-40/10`;
//! graphile itself only has `*/n`). Names (`MON`, `JAN`) are not part of the format. When
//! both the day of month and the day of week are restricted, a day matching either fires,
//! as in Unix cron. A day of month that never occurs in the chosen months (`30 2`) is an
//! error rather than a schedule that never fires.
//!
//! **Task**: the task name, a letter or `_` first, then `A-Z a-z 0-9 _ . : -`.
//!
//! **Options** (`?` then `key=value` pairs joined by `&`, percent-encoding allowed, each
//! key at most once):
//!
//! | option | graphile meaning | here |
//! | --- | --- | --- |
//! | `id=name` | the entry's identifier, default the task | the schedule's name, default the task; two entries may not share one |
//! | `fill=1d2h` | backfill missed ticks within this window (units `s m h d w`) | [`CatchUp::Backfill`] with that window (at most [`MAX_BACKFILL_TICKS`](super::MAX_BACKFILL_TICKS) per pass); without it [`CatchUp::Skip`], since graphile runs no missed tick by default |
//! | `max=n` | max attempts (default 25) | [`JobOptions::retries`]`(n - 1)`; without it 25 attempts, graphile's default |
//! | `queue=name` | a named queue whose jobs run one at a time | [`JobOptions::serial_key`]: jobs stay on the default routing queue and run one at a time per name |
//! | `priority=n` | smaller runs first, -32768 to 32767 | [`JobOptions::priority`]`(-n)`, since here larger runs first |
//! | `jobKey=key` | replace the waiting job with this key | [`JobOptions::job_key`] with [`KeyMode::Replace`] |
//! | `jobKeyMode=m` | `replace` or `preserve_run_at` | [`KeyMode::Replace`] or [`KeyMode::PreserveRunAt`]; refused without `jobKey` |
//! | `tz=Area/City` | (not in graphile, which only has UTC) | [`Schedule::in_zone`]: the time fields are read in that IANA zone |
//!
//! **Payload**: an optional JSON5 object last on the line (`{onboarding:false}` or
//! `{"json":"payload"}`). As in graphile, each job's payload is that object with
//! `_cron: {"ts": "<the tick, ISO 8601>", "backfilled": <bool>}` added (see
//! [`Schedule::tick_in_payload`]).
//!
//! Every mistake is a [`CrontabError`] naming the 1-based line and column and what was
//! expected there; nothing is ignored. [`parse`] only reads text: [`Queue::add_crontab`]
//! reads and adds, and a file is `std::fs::read_to_string` away.
//!
//! [`Queue::add_crontab`]: crate::Queue::add_crontab

use super::fields::{CronFields, FieldError, FIELDS};
use super::{json5, zone, CatchUp, CronDialect, Schedule, Spec};
use crate::job::KeyMode;
use crate::options::{JobOptions, MAX_RETRIES};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;

/// Attempts a crontab job gets without `max=`: graphile-worker's default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// One schedule read from a crontab line.
#[derive(Debug, Clone, PartialEq)]
pub struct CrontabEntry {
    /// The schedule's name: the `id` option, or else the task name.
    pub name: String,
    /// When it fires, what it enqueues, how it catches up.
    pub schedule: Schedule,
    /// The 1-based line it was read from.
    pub line: usize,
}

/// What kind of mistake a crontab line has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrontabErrorKind {
    /// The line ends before its five time fields.
    MissingField,
    /// A time field holds something other than numbers, ranges, `*` and commas.
    InvalidField,
    /// A number lies outside its field's range (minute 0-59, day of week 0-7, ...).
    OutOfRange,
    /// A range whose end is not larger than its start (`5-5`, `9-1`).
    EmptyRange,
    /// A `/` step that is zero, missing, or follows a single number.
    InvalidStep,
    /// The day of month never occurs in the chosen months (`30 2`).
    NeverFires,
    /// The task name is missing or has characters a task name cannot have.
    InvalidTask,
    /// The options are not `key=value` pairs, or hold a bad percent-escape.
    InvalidOptions,
    /// An option this format does not have.
    UnknownOption,
    /// An option given twice on one line.
    DuplicateOption,
    /// An option's value does not fit it (a `fill` that is no time phrase, `max=0`, ...).
    InvalidOptionValue,
    /// The `tz` option names no IANA time zone.
    UnknownTimeZone,
    /// The payload is not a JSON5 object.
    InvalidPayload,
    /// Something after the task that is neither `?options` nor a `{...}` payload.
    UnexpectedText,
    /// Two entries share a schedule name (add `id=` to one of them).
    DuplicateName,
}

impl fmt::Display for CrontabErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrontabErrorKind::MissingField => "missing time field",
            CrontabErrorKind::InvalidField => "invalid time field",
            CrontabErrorKind::OutOfRange => "value out of range",
            CrontabErrorKind::EmptyRange => "empty range",
            CrontabErrorKind::InvalidStep => "invalid step",
            CrontabErrorKind::NeverFires => "schedule never fires",
            CrontabErrorKind::InvalidTask => "invalid task",
            CrontabErrorKind::InvalidOptions => "invalid options",
            CrontabErrorKind::UnknownOption => "unknown option",
            CrontabErrorKind::DuplicateOption => "option given twice",
            CrontabErrorKind::InvalidOptionValue => "invalid option value",
            CrontabErrorKind::UnknownTimeZone => "unknown time zone",
            CrontabErrorKind::InvalidPayload => "invalid payload",
            CrontabErrorKind::UnexpectedText => "unexpected text",
            CrontabErrorKind::DuplicateName => "duplicate schedule name",
        })
    }
}

/// A crontab mistake: where (1-based line and column, counted in characters), what kind,
/// what was expected there and what was found.
///
/// ```
/// use durable_jobs::schedule::crontab::{self, CrontabErrorKind};
///
/// let err = crontab::parse("# nightly\n0 25 * * * cleanup").unwrap_err();
/// assert_eq!((err.line(), err.column(), err.kind()), (2, 3, CrontabErrorKind::OutOfRange));
/// assert_eq!(
///     err.to_string(),
///     "crontab line 2, column 3: value out of range: expected a value from 0 to 23 in the \
///      hour field, found `25`"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("crontab line {line}, column {column}: {kind}: expected {expected}, found {found}")]
pub struct CrontabError {
    line: usize,
    column: usize,
    kind: CrontabErrorKind,
    expected: String,
    found: String,
}

impl CrontabError {
    /// The 1-based line.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 1-based column, in characters.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What kind of mistake it is.
    pub fn kind(&self) -> CrontabErrorKind {
        self.kind
    }

    /// What the format allows at that place.
    pub fn expected(&self) -> &str {
        &self.expected
    }

    /// What the line has there.
    pub fn found(&self) -> &str {
        &self.found
    }
}

/// Reads a crontab into schedules, in line order, or stops at its first mistake.
///
/// # Errors
/// A [`CrontabError`] naming the line, the column and what was expected there.
///
/// # Examples
/// ```
/// use durable_jobs::schedule::crontab;
///
/// let entries = crontab::parse(
///     "# reports\n\
///      0 4 * * * nightly_report ?fill=1d&max=5&tz=Europe/Berlin {\"format\":\"pdf\"}\n\
///      */15 * * * * poll_feeds ?id=feeds",
/// )?;
/// assert_eq!(entries[0].name, "nightly_report");
/// assert_eq!(entries[0].line, 2);
/// assert_eq!(entries[0].schedule.time_zone(), Some("Europe/Berlin"));
/// assert_eq!(entries[1].name, "feeds");
/// # Ok::<(), crontab::CrontabError>(())
/// ```
pub fn parse(crontab: &str) -> Result<Vec<CrontabEntry>, CrontabError> {
    let mut entries = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, raw) in crontab.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let mut line = Line {
            raw,
            number: index + 1,
            pos: 0,
        };
        let Some((entry, name_at)) = line.entry()? else {
            continue;
        };
        if let Some(first) = names.insert(entry.name.clone(), entry.line) {
            return Err(line.error(
                name_at,
                CrontabErrorKind::DuplicateName,
                format!(
                    "a schedule name not already used (line {first} has `{}`; set `?id=` to tell them apart)",
                    entry.name
                ),
                format!("`{}`", entry.name),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// The keys the options accept, in the order the docs list them.
const OPTION_KEYS: [&str; 8] = [
    "id",
    "fill",
    "max",
    "queue",
    "priority",
    "jobKey",
    "jobKeyMode",
    "tz",
];

/// One line being read: the text and a byte position in it.
struct Line<'a> {
    raw: &'a str,
    number: usize,
    pos: usize,
}

/// The options of one line, each with the byte offset of its value.
#[derive(Default)]
struct Options {
    id: Option<(String, usize)>,
    fill: Option<u64>,
    max: Option<u32>,
    queue: Option<String>,
    priority: Option<i32>,
    job_key: Option<String>,
    job_key_mode: Option<(KeyMode, usize)>,
    tz: Option<String>,
}

impl<'a> Line<'a> {
    fn error(
        &self,
        offset: usize,
        kind: CrontabErrorKind,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> CrontabError {
        let before = self.raw.get(..offset).unwrap_or(self.raw);
        CrontabError {
            line: self.number,
            column: before.chars().count() + 1,
            kind,
            expected: expected.into(),
            found: found.into(),
        }
    }

    fn field_error(&self, e: FieldError) -> CrontabError {
        self.error(e.offset, e.kind, e.expected, e.found)
    }

    fn rest(&self) -> &'a str {
        &self.raw[self.pos..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// The next run of non-space characters, and where it starts.
    fn token(&mut self) -> (&'a str, usize) {
        self.skip_space();
        let rest = self.rest();
        let len = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let start = self.pos;
        self.pos += len;
        (&rest[..len], start)
    }

    fn found(&self, text: &str) -> String {
        if text.is_empty() {
            "the end of the line".to_string()
        } else {
            format!("`{text}`")
        }
    }

    /// Reads the line: `None` for a blank or comment line, else the entry and the offset
    /// its name came from.
    fn entry(&mut self) -> Result<Option<(CrontabEntry, usize)>, CrontabError> {
        self.skip_space();
        if self.rest().is_empty() || self.rest().starts_with('#') {
            return Ok(None);
        }
        let mut tokens = [("", 0usize); 5];
        for (slot, field) in tokens.iter_mut().zip(&FIELDS) {
            let (text, at) = self.token();
            if text.is_empty() {
                return Err(self.error(
                    at,
                    CrontabErrorKind::MissingField,
                    format!(
                        "the {} field (a line starts with five time fields)",
                        field.name
                    ),
                    "the end of the line",
                ));
            }
            *slot = (text, at);
        }
        CronFields::from_tokens(&tokens).map_err(|e| self.field_error(e))?;
        let expr = tokens.map(|(text, _)| text).join(" ");

        let (task, task_at) = self.token();
        self.check_task(task, task_at)?;

        let (mut next, mut next_at) = self.token();
        let mut options = Options::default();
        if let Some(body) = next.strip_prefix('?') {
            options = self.options(body, next_at + 1)?;
            self.skip_space();
            next_at = self.pos;
            next = self.rest();
        } else {
            self.pos = next_at;
            next = self.rest();
        }
        let payload = if next.trim_end().is_empty() {
            Value::Object(serde_json::Map::new())
        } else if next.starts_with('{') {
            let value = json5::parse(next).map_err(|e| {
                self.error(
                    next_at + e.offset,
                    CrontabErrorKind::InvalidPayload,
                    format!("{} in the JSON5 payload", e.expected),
                    e.found,
                )
            })?;
            if !value.is_object() {
                return Err(self.error(
                    next_at,
                    CrontabErrorKind::InvalidPayload,
                    "a JSON5 object",
                    self.found(next),
                ));
            }
            value
        } else {
            let shown = next.split_whitespace().next().unwrap_or("");
            let expected = if shown.starts_with('?') {
                "a `{...}` payload (the options come right after the task, once)"
            } else {
                "`?options` or a `{...}` payload after the task"
            };
            return Err(self.error(
                next_at,
                CrontabErrorKind::UnexpectedText,
                expected,
                self.found(shown),
            ));
        };

        let (name, name_at) = options
            .id
            .clone()
            .unwrap_or_else(|| (task.to_string(), task_at));
        let max = options.max.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        let mut job = JobOptions::new().retries(max.saturating_sub(1));
        if let Some(queue) = &options.queue {
            job = job.serial_key(queue.clone());
        }
        if let Some(priority) = options.priority {
            job = job.priority(priority);
        }
        if let Some(key) = &options.job_key {
            let mode = options.job_key_mode.map_or(KeyMode::Replace, |(m, _)| m);
            job = job.job_key(key.clone(), mode);
        } else if let Some((_, at)) = options.job_key_mode {
            return Err(self.error(
                at,
                CrontabErrorKind::InvalidOptionValue,
                "`jobKeyMode` together with a `jobKey`",
                "`jobKeyMode` without `jobKey`",
            ));
        }
        let catch_up = match options.fill {
            Some(secs) if secs > 0 => CatchUp::Backfill { window_secs: secs },
            _ => CatchUp::Skip,
        };
        let mut schedule = Schedule::with_spec(Spec::Cron { expr })
            .task(task, &payload)
            .options(job)
            .catch_up(catch_up)
            .tick_in_payload(true);
        schedule.cron_dialect = CronDialect::Unix;
        if let Some(tz) = options.tz {
            schedule = schedule.in_zone(&tz);
        }
        Ok(Some((
            CrontabEntry {
                name,
                schedule,
                line: self.number,
            },
            name_at,
        )))
    }

    fn check_task(&self, task: &str, at: usize) -> Result<(), CrontabError> {
        let expected = "a task name: a letter or `_` first, then A-Z a-z 0-9 _ . : - \
                        (a line has five time fields before it)";
        let mut chars = task.char_indices();
        match chars.next() {
            None => {
                return Err(self.error(
                    at,
                    CrontabErrorKind::InvalidTask,
                    expected,
                    "the end of the line",
                ))
            }
            Some((_, c)) if !(c.is_ascii_alphabetic() || c == '_') => {
                return Err(self.error(
                    at,
                    CrontabErrorKind::InvalidTask,
                    expected,
                    format!("`{task}`"),
                ))
            }
            Some(_) => {}
        }
        if let Some((i, c)) =
            chars.find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            let expected = if c == '/' {
                "a task name without `/` (graphile's task folders have no equivalent here: register the task under a name of A-Z a-z 0-9 _ . : -)"
            } else {
                expected
            };
            return Err(self.error(
                at + i,
                CrontabErrorKind::InvalidTask,
                expected,
                format!("`{c}` in `{task}`"),
            ));
        }
        if task.len() > 128 {
            return Err(self.error(
                at,
                CrontabErrorKind::InvalidTask,
                "a task name of at most 128 characters",
                format!("{} characters", task.len()),
            ));
        }
        Ok(())
    }

    /// Reads `key=value&...` starting at byte `base` of the line.
    fn options(&self, body: &str, base: usize) -> Result<Options, CrontabError> {
        let mut options = Options::default();
        let mut seen: Vec<&str> = Vec::new();
        if body.is_empty() {
            return Err(self.error(
                base,
                CrontabErrorKind::InvalidOptions,
                "`key=value` options after `?`",
                "nothing",
            ));
        }
        let mut at = base;
        for part in body.split('&') {
            let part_at = at;
            at += part.len() + 1;
            if part.is_empty() {
                continue;
            }
            let Some((raw_key, raw_value)) = part.split_once('=') else {
                return Err(self.error(
                    part_at,
                    CrontabErrorKind::InvalidOptions,
                    "`key=value`",
                    format!("`{part}`"),
                ));
            };
            let key = self.decode(raw_key, part_at)?;
            let value_at = part_at + raw_key.len() + 1;
            let value = self.decode(raw_value, value_at)?;
            let Some(&known) = OPTION_KEYS.iter().find(|k| **k == key) else {
                return Err(self.error(
                    part_at,
                    CrontabErrorKind::UnknownOption,
                    format!(
                        "one of {}",
                        OPTION_KEYS.map(|k| format!("`{k}`")).join(", ")
                    ),
                    format!("`{key}`"),
                ));
            };
            if seen.contains(&known) {
                return Err(self.error(
                    part_at,
                    CrontabErrorKind::DuplicateOption,
                    format!("`{known}` at most once"),
                    format!("a second `{known}`"),
                ));
            }
            seen.push(known);
            let bad = |expected: &str| {
                self.error(
                    value_at,
                    CrontabErrorKind::InvalidOptionValue,
                    format!("{expected} for `{known}`"),
                    if value.is_empty() {
                        "an empty value".to_string()
                    } else {
                        format!("`{value}`")
                    },
                )
            };
            match known {
                "id" => {
                    let ok = value.len() <= 128
                        && value
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && value.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
                        });
                    if !ok {
                        return Err(bad("a name of up to 128 characters: a letter or `_` first, then A-Z a-z 0-9 _ . : -"));
                    }
                    options.id = Some((value, value_at));
                }
                "fill" => {
                    options.fill = Some(time_phrase(&value).ok_or_else(|| {
                        bad("a time phrase such as `1d`, `4h30m` or `2w` (units s m h d w)")
                    })?);
                }
                "max" => {
                    let top = MAX_RETRIES + 1;
                    let max = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| {
                            (1..=top).contains(n) && value.bytes().all(|b| b.is_ascii_digit())
                        })
                        .ok_or_else(|| bad(&format!("a number of attempts from 1 to {top}")))?;
                    options.max = Some(max);
                }
                "queue" => {
                    let ok = !value.is_empty()
                        && value.len() <= 128
                        && value.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
                        });
                    if !ok {
                        return Err(bad(
                            "a queue name of 1 to 128 characters from A-Z a-z 0-9 _ . : -",
                        ));
                    }
                    options.queue = Some(value);
                }
                "priority" => {
                    let n = value
                        .parse::<i16>()
                        .ok()
                        .filter(|_| !value.starts_with('+'))
                        .ok_or_else(|| bad("a whole number from -32768 to 32767"))?;
                    // graphile runs smaller numbers first; here larger ones do.
                    options.priority = Some(-i32::from(n));
                }
                "jobKey" => {
                    if value.is_empty() {
                        return Err(bad("a non-empty key"));
                    }
                    options.job_key = Some(value);
                }
                "jobKeyMode" => {
                    let mode = match value.as_str() {
                        "replace" => KeyMode::Replace,
                        "preserve_run_at" => KeyMode::PreserveRunAt,
                        _ => return Err(bad("`replace` or `preserve_run_at`")),
                    };
                    options.job_key_mode = Some((mode, part_at));
                }
                _ => {
                    if zone::named(&value).is_err() {
                        return Err(self.error(
                            value_at,
                            CrontabErrorKind::UnknownTimeZone,
                            "an IANA time zone name such as `Europe/Berlin` (case-sensitive)",
                            self.found(&value),
                        ));
                    }
                    options.tz = Some(value);
                }
            }
        }
        Ok(options)
    }

    /// Undoes query-string encoding (`%XX` and `+` for a space), as graphile's parser does.
    fn decode(&self, text: &str, at: usize) -> Result<String, CrontabError> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let hex = text.get(i + 1..i + 3).unwrap_or("");
                    let byte = u8::from_str_radix(hex, 16)
                        .ok()
                        .filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                        .ok_or_else(|| {
                            self.error(
                                at + i,
                                CrontabErrorKind::InvalidOptions,
                                "`%` followed by two hexadecimal digits",
                                self.found(text.get(i..(i + 3).min(text.len())).unwrap_or("%")),
                            )
                        })?;
                    out.push(byte);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| {
            self.error(
                at,
                CrontabErrorKind::InvalidOptions,
                "percent-escapes that decode to UTF-8",
                self.found(text),
            )
        })
    }
}

/// Seconds in a graphile time phrase: number-unit pairs such as `4w3d2h1m`, units
/// `s m h d w`.
fn time_phrase(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    // A trailing number without a unit is not a phrase.
    number.is_none().then_some(total)
}

#[cfg(test)]
mod tests;
