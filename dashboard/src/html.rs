//! Writing HTML by hand, safely: every value from storage or the request goes through
//! [`esc`] (text and attribute values) or [`url`] (query and path components).

use chrono::{DateTime, Utc};
use durable_jobs::JobStatus;
use serde_json::Value;
use std::fmt::{self, Display, Write};

/// Appends formatted text to a `String` (writing to a `String` cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        use ::std::fmt::Write as _;
        let _ = $out.write_fmt(format_args!($($arg)*));
    }};
}
pub(crate) use w;

/// A value HTML-escaped for text and double- or single-quoted attributes.
pub(crate) struct Esc<'a>(&'a str);

/// Escapes `s` for HTML text and quoted attribute values.
pub(crate) fn esc<S: AsRef<str> + ?Sized>(s: &S) -> Esc<'_> {
    Esc(s.as_ref())
}

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A value percent-encoded for a URL query or path component: everything but the
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded. The result still goes
/// through [`esc`] when placed in an attribute (it then contains nothing to escape, but
/// the habit keeps every attribute safe).
pub(crate) struct Url<'a>(&'a str);

/// Percent-encodes `s` for a URL component.
pub(crate) fn url<S: AsRef<str> + ?Sized>(s: &S) -> Url<'_> {
    Url(s.as_ref())
}

impl Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                f.write_char(char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// A query string (with its leading `?`, or empty) from pairs whose value is non-empty.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            out.push(if out.is_empty() { '?' } else { '&' });
            w!(out, "{}={}", url(key), url(v));
        }
    }
    out
}

/// A timestamp as people read it, in UTC to the second.
pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A `<time>` element: the distance from `now` as text ("3 min ago", "in 2 h"), the
/// exact time in its title.
pub(crate) fn time_ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let exact = time(t);
    format!(
        "<time datetime=\"{}\" title=\"{}\">{}</time>",
        esc(&t.to_rfc3339()),
        esc(&exact),
        esc(&relative(t, now))
    )
}

/// [`time_ago`] for an optional time; a dash when there is none.
pub(crate) fn opt_time_ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(
        || "<span class=\"muted\">-</span>".into(),
        |t| time_ago(t, now),
    )
}

/// "just now", "12 s ago", "in 3 min", "5 d ago", or the date when over a year away.
pub(crate) fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let amount = match n {
        0..=1 => return "just now".into(),
        2..=119 => format!("{n} s"),
        120..=7_199 => format!("{} min", n / 60),
        7_200..=172_799 => format!("{} h", n / 3600),
        172_800..=31_535_999 => format!("{} d", n / 86_400),
        _ => return t.format("%Y-%m-%d").to_string(),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A duration between two times, compact ("850 ms", "12.3 s", "4 min 2 s", "3 h 5 min",
/// "2 d 4 h").
pub(crate) fn duration(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let ms = (to - from).num_milliseconds().max(0);
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A status badge: the status name, colored by its CSS class.
pub(crate) fn status(s: JobStatus) -> String {
    format!(
        "<span class=\"badge status-{0}\" data-status=\"{0}\">{0}</span>",
        s.as_str()
    )
}

/// A JSON value pretty-printed and escaped, in a `<pre>` with an optional id.
pub(crate) fn json_block(value: &Value, id: &str) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    format!(
        "<pre class=\"json\" id=\"{}\">{}</pre>",
        esc(id),
        esc(&text)
    )
}

/// A JSON value on one line, cut to about `max` characters, escaped.
pub(crate) fn json_preview(value: &Value, max: usize) -> String {
    let text = value.to_string();
    esc(&truncate(&text, max)).to_string()
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(esc("plain ünïcode").to_string(), "plain ünïcode");
    }

    #[test]
    fn percent_encodes_all_but_unreserved() {
        assert_eq!(
            url("a b&c=d/é~_.-").to_string(),
            "a%20b%26c%3Dd%2F%C3%A9~_.-"
        );
        assert_eq!(
            query(&[
                ("status", Some("failed".into())),
                ("queue", Some(String::new())),
                ("tag", Some("a&b".into())),
                ("task", None)
            ]),
            "?status=failed&tag=a%26b"
        );
        assert_eq!(query(&[("x", None)]), "");
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc.with_ymd_and_hms(2025, 1, 10, 12, 0, 0).single();
        let Some(now) = now else { panic!("valid date") };
        let at = |secs: i64| now - chrono::Duration::seconds(secs);
        assert_eq!(relative(at(0), now), "just now");
        assert_eq!(relative(at(30), now), "30 s ago");
        assert_eq!(relative(at(-600), now), "in 10 min");
        assert_eq!(relative(at(3 * 3600), now), "3 h ago");
        assert_eq!(relative(at(3 * 86_400), now), "3 d ago");
        assert_eq!(relative(at(400 * 86_400), now), "2023-12-07");
    }

    #[test]
    fn durations_are_compact() {
        let t0 = Utc::now();
        let after = |ms: i64| duration(t0, t0 + chrono::Duration::milliseconds(ms));
        assert_eq!(after(850), "850 ms");
        assert_eq!(after(12_345), "12.3 s");
        assert_eq!(after(242_000), "4 min 2 s");
        assert_eq!(after(11_100_000), "3 h 5 min");
        assert_eq!(after(187_200_000), "2 d 4 h");
        assert_eq!(after(-5), "0 ms");
    }

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
