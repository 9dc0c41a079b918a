//! A JSON5 reader for crontab payloads: graphile-worker reads them as JSON5, so
//! `{onboarding:false}` (an unquoted key) is a valid payload there and must be here.
//!
//! JSON5 adds to JSON: unquoted identifier keys, single-quoted strings, trailing commas,
//! `//` and `/* */` comments, hexadecimal numbers, a leading `+` or `.` and a trailing
//! `.` on numbers, and more escapes. `Infinity` and `NaN` parse but are refused, since a
//! JSON payload cannot hold them.

use serde_json::{Map, Number, Value};

/// Where parsing stopped (a byte offset into the input), what it expected and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Json5Error {
    pub(crate) offset: usize,
    pub(crate) expected: String,
    pub(crate) found: String,
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 128;

/// Parses one JSON5 value that fills `text` (surrounding whitespace and comments allowed).
pub(crate) fn parse(text: &str) -> Result<Value, Json5Error> {
    let mut p = Parser { text, pos: 0 };
    p.skip_blank()?;
    let value = p.value(0)?;
    p.skip_blank()?;
    if p.pos < text.len() {
        return Err(p.error("the end of the payload"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn error(&self, expected: &str) -> Json5Error {
        self.error_at(self.pos, expected)
    }

    fn error_at(&self, offset: usize, expected: &str) -> Json5Error {
        let rest = &self.text[offset.min(self.text.len())..];
        let found = if rest.is_empty() {
            "the end of the line".to_string()
        } else {
            let shown: String = rest.chars().take(12).collect();
            format!("`{shown}`")
        };
        Json5Error {
            offset,
            expected: expected.to_string(),
            found,
        }
    }

    /// Skips whitespace and comments.
    fn skip_blank(&mut self) -> Result<(), Json5Error> {
        loop {
            let rest = &self.text[self.pos..];
            if let Some(c) = self
                .peek()
                .filter(|c| c.is_whitespace() || *c == '\u{feff}')
            {
                self.pos += c.len_utf8();
            } else if rest.starts_with("//") {
                self.pos += rest.find(['\n', '\r']).unwrap_or(rest.len());
            } else if let Some(body) = rest.strip_prefix("/*") {
                let close = body
                    .find("*/")
                    .ok_or_else(|| self.error("`*/` closing the comment"))?;
                self.pos += close + 4;
            } else {
                return Ok(());
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Json5Error> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        match self.peek() {
            Some('{') => self.object(depth),
            Some('[') => self.array(depth),
            Some(q @ ('"' | '\'')) => self.string(q).map(Value::String),
            Some(c) if c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'I' | 'N') => {
                self.number()
            }
            Some(c) if c.is_alphabetic() => {
                let start = self.pos;
                let word = self.identifier();
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    "null" => Ok(Value::Null),
                    _ => Err(self.error_at(
                        start,
                        "a value (object, array, string, number, true, false or null)",
                    )),
                }
            }
            _ => Err(self.error("a value (object, array, string, number, true, false or null)")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Json5Error> {
        self.bump();
        let mut map = Map::new();
        loop {
            self.skip_blank()?;
            if self.peek() == Some('}') {
                self.bump();
                return Ok(Value::Object(map));
            }
            let key = match self.peek() {
                Some(q @ ('"' | '\'')) => self.string(q)?,
                Some(c) if c.is_alphabetic() || c == '_' || c == '$' => self.identifier(),
                _ => return Err(self.error("a key (a name or a quoted string) or `}`")),
            };
            self.skip_blank()?;
            if self.peek() != Some(':') {
                return Err(self.error("`:` after the key"));
            }
            self.bump();
            self.skip_blank()?;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            self.skip_blank()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {}
                _ => return Err(self.error("`,` or `}`")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Json5Error> {
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_blank()?;
            if self.peek() == Some(']') {
                self.bump();
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth + 1)?);
            self.skip_blank()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {}
                _ => return Err(self.error("`,` or `]`")),
            }
        }
    }

    fn identifier(&mut self) -> String {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || matches!(c, '_' | '$' | '\u{200c}' | '\u{200d}') {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        self.text[start..self.pos].to_string()
    }

    fn hex(&mut self, digits: usize) -> Result<u32, Json5Error> {
        let start = self.pos;
        let chunk = self.text.get(start..start + digits).unwrap_or("");
        match u32::from_str_radix(chunk, 16) {
            Ok(v) if chunk.bytes().all(|b| b.is_ascii_hexdigit()) => {
                self.pos += digits;
                Ok(v)
            }
            _ => Err(self.error(&format!("{digits} hexadecimal digits"))),
        }
    }

    fn string(&mut self, quote: char) -> Result<String, Json5Error> {
        let open = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(self.error_at(open, &format!("a string closed by {quote}")));
            };
            match c {
                c if c == quote => return Ok(out),
                '\n' | '\r' => {
                    return Err(self.error_at(
                        open,
                        &format!("a string closed by {quote} on the same line"),
                    ))
                }
                '\\' => {
                    let at = self.pos;
                    match self.bump() {
                        Some('b') => out.push('\u{8}'),
                        Some('f') => out.push('\u{c}'),
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('t') => out.push('\t'),
                        Some('v') => out.push('\u{b}'),
                        Some('0') if !self.peek().is_some_and(|c| c.is_ascii_digit()) => {
                            out.push('\0')
                        }
                        Some('x') => {
                            let v = self.hex(2)?;
                            out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                        }
                        Some('u') => {
                            let hi = self.hex(4)?;
                            let code = if (0xd800..0xdc00).contains(&hi)
                                && self.text[self.pos..].starts_with("\\u")
                            {
                                self.pos += 2;
                                let lo = self.hex(4)?;
                                if (0xdc00..0xe000).contains(&lo) {
                                    0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                                } else {
                                    return Err(
                                        self.error_at(at, "a low surrogate after a high one")
                                    );
                                }
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        }
                        Some(d) if d.is_ascii_digit() => {
                            return Err(self.error_at(at, "an escape other than a digit"))
                        }
                        // A line continuation, or any other character standing for itself.
                        Some('\n' | '\u{2028}' | '\u{2029}') => {}
                        Some('\r') => {
                            if self.peek() == Some('\n') {
                                self.bump();
                            }
                        }
                        Some(other) => out.push(other),
                        None => {
                            return Err(self.error_at(open, &format!("a string closed by {quote}")))
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<Value, Json5Error> {
        let start = self.pos;
        let negative = match self.peek() {
            Some('-') => {
                self.bump();
                true
            }
            Some('+') => {
                self.bump();
                false
            }
            _ => false,
        };
        let rest = &self.text[self.pos..];
        if rest.starts_with("Infinity") || rest.starts_with("NaN") {
            return Err(self.error_at(
                start,
                "a finite number (a JSON payload cannot hold Infinity or NaN)",
            ));
        }
        if rest.starts_with("0x") || rest.starts_with("0X") {
            self.pos += 2;
            let digits = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                self.bump();
            }
            let value = i64::from_str_radix(&self.text[digits..self.pos], 16)
                .ok()
                .and_then(|v| if negative { v.checked_neg() } else { Some(v) })
                .ok_or_else(|| self.error_at(start, "a hexadecimal number that fits 64 bits"))?;
            return Ok(Value::Number(value.into()));
        }
        let body = self.pos;
        let mut integral = true;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.bump();
            }
            p.pos - from
        };
        let whole = digits(self);
        if whole > 1 && self.text[body..].starts_with('0') {
            return Err(self.error_at(body, "a number without leading zeros"));
        }
        let mut fraction = 0;
        if self.peek() == Some('.') {
            self.bump();
            integral = false;
            fraction = digits(self);
        }
        if whole == 0 && fraction == 0 {
            return Err(self.error_at(start, "a number"));
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            self.bump();
            integral = false;
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if digits(self) == 0 {
                return Err(self.error("digits in the exponent"));
            }
        }
        let literal = &self.text[body..self.pos];
        let signed = if negative {
            format!("-{literal}")
        } else {
            literal.to_string()
        };
        if integral {
            if let Ok(v) = signed.parse::<i64>() {
                return Ok(Value::Number(v.into()));
            }
            if let Ok(v) = signed.parse::<u64>() {
                return Ok(Value::Number(v.into()));
            }
        }
        signed
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| self.error_at(start, "a number a JSON payload can hold"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_json_reads_as_json() {
        let text = r#"{"a": [1, -2.5, true, null, "x\"y\u00e9"], "b": {}}"#;
        assert_eq!(
            parse(text),
            Ok(serde_json::from_str::<Value>(text).expect("json"))
        );
    }

    #[test]
    fn json5_extensions_read() {
        assert_eq!(
            parse("{onboarding:false}"),
            Ok(json!({"onboarding": false}))
        );
        assert_eq!(
            parse(
                "{ 'a': 'it\\'s', b: [1, 2,], $c_1: 0x1F, d: +.5, e: 5., /* c */ f: 1e3, } // end"
            ),
            Ok(json!({"a": "it's", "b": [1, 2], "$c_1": 31, "d": 0.5, "e": 5.0, "f": 1000.0}))
        );
        assert_eq!(parse(r#"'\x41\u00e9\v\0'"#), Ok(json!("A\u{e9}\u{b}\u{0}")));
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = parse("{a:1,,}").expect_err("double comma");
        assert_eq!(e.offset, 5);
        assert!(e.expected.contains("key"), "{e:?}");
        let e = parse("{a 1}").expect_err("no colon");
        assert_eq!((e.offset, e.expected.as_str()), (3, "`:` after the key"));
        let e = parse("{a:NaN}").expect_err("nan");
        assert_eq!(e.offset, 3);
        let e = parse("{a:'open}").expect_err("unclosed");
        assert_eq!(e.offset, 3);
        let e = parse("{a:1} x").expect_err("trailing");
        assert_eq!((e.offset, e.found.as_str()), (6, "`x`"));
        let e = parse("{a:012}").expect_err("leading zero");
        assert_eq!(e.offset, 3);
        let deep = "[".repeat(200);
        assert!(parse(&deep).is_err());
    }
}
