//! Output: aligned plain-text tables for people, one JSON document for scripts, and
//! writes that survive a closed pipe (`durable-jobs jobs list | head`).

use crate::error::CliError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::io::Write;

/// Writes `text` to stdout. A reader that went away (a closed pipe) is not an error.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes `text` to stderr as it is (help shown for a usage error).
pub fn print_err(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

/// Writes one line to stderr (notes and per-item errors).
pub fn note(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", one_line(line));
}

/// Prints `value` as one pretty JSON document on stdout.
///
/// # Errors
/// [`CliError::Failed`] if the value does not serialize (it always does for our types).
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Failed(format!("cannot write JSON output: {e}")))?;
    text.push('\n');
    print(&text);
    Ok(())
}

/// `text` on one line: line breaks become spaces.
pub fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A stored value made safe for a terminal: control characters (an escape sequence in a
/// payload could rewrite the screen) are shown escaped, line breaks included.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// As [`clean`], cut to `max` characters with an ellipsis.
pub fn clip(text: &str, max: usize) -> String {
    let cleaned = clean(text);
    if cleaned.chars().count() <= max {
        return cleaned;
    }
    let mut cut: String = cleaned.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A time in UTC to the second, as tables show it.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// An optional time, `-` when absent.
pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), time)
}

/// An optional value, `-` when absent.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| clean(&v.to_string()))
}

/// A list joined with commas, `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        clean(&items.join(","))
    }
}

/// A JSON value pretty-printed and indented by `indent` spaces, for detail views.
pub fn json_block(v: &serde_json::Value, indent: usize) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    indent_block(&clean_keep_lines(&pretty), indent)
}

/// Indents every line of `text` by `indent` spaces.
pub fn indent_block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(&pad);
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(&pad);
        out.push('\n');
    }
    out
}

/// As [`clean`], keeping line breaks (for multi-line blocks such as an error).
pub fn clean_keep_lines(text: &str) -> String {
    text.lines().map(clean).collect::<Vec<_>>().join("\n")
}

/// A plain-text table with a header row; columns padded to their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells already cleaned by the caller).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, each line indented by `indent` spaces.
    pub fn render(&self, indent: usize) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let pad = " ".repeat(indent);
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut text = pad.clone();
            for (i, cell) in cells.iter().enumerate().take(columns) {
                text.push_str(cell);
                if i + 1 < columns {
                    let fill = widths[i].saturating_sub(cell.chars().count()) + 2;
                    text.push_str(&" ".repeat(fill));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&self.headers);
        for row in &self.rows {
            line(row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["ID", "TASK"]);
        t.row(vec!["1".into(), "send".into()]);
        t.row(vec!["1234".into(), "x".into()]);
        assert_eq!(t.render(0), "ID    TASK\n1     send\n1234  x\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(one_line("a\n\n  b\n"), "a b");
    }
}
