//! Cross-site request forgery protection: a double-submit cookie.
//!
//! The first page a browser loads sets a cookie holding 128 random bits (from the
//! operating system), `HttpOnly` and `SameSite=Strict`, scoped to the dashboard's mount
//! path. Every action form carries the same value in a hidden field. A POST is accepted
//! only when the field equals the cookie. Another site can make a browser send a POST,
//! but it cannot read the cookie to put its value in the form, and `SameSite=Strict`
//! keeps the browser from sending the cookie with a cross-site request at all. The token
//! is per browser, not per process, so a restart of the server does not break open pages.

use axum::http::HeaderMap;

/// The cookie's name.
pub(crate) const COOKIE: &str = "durable_jobs_csrf";

/// The hidden form field's name.
pub(crate) const FIELD: &str = "csrf_token";

/// Bytes of randomness in a token (shown as twice as many hex digits).
const TOKEN_BYTES: usize = 16;

/// A page's token and whether the response must set the cookie (the browser had none).
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) is_new: bool,
}

impl Token {
    /// The browser's token from its cookie, or a fresh one when it has none (or one that
    /// is not a token of ours).
    pub(crate) fn for_request(headers: &HeaderMap) -> Token {
        match from_cookie(headers) {
            Some(value) => Token {
                value,
                is_new: false,
            },
            None => Token {
                value: fresh(),
                is_new: true,
            },
        }
    }

    /// The `Set-Cookie` value that stores this token for the dashboard mounted at `prefix`.
    pub(crate) fn set_cookie(&self, prefix: &str) -> String {
        let path = if prefix.is_empty() { "/" } else { prefix };
        format!(
            "{COOKIE}={}; Path={path}; HttpOnly; SameSite=Strict",
            self.value
        )
    }
}

/// A fresh token: 128 bits from the operating system's random source, as hex. If that
/// source fails (it practically never does), the time and process id mixed through the
/// standard library's randomly keyed hasher stand in, which is still unguessable from
/// another site.
fn fresh() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    if getrandom::fill(&mut bytes).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.write_u32(std::process::id());
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_token(s: &str) -> bool {
    s.len() == TOKEN_BYTES * 2 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The token in the request's `Cookie` headers, if one looks like ours.
pub(crate) fn from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && is_token(value))
        .map(|(_, value)| value.to_string())
}

/// True when the submitted form token matches the request's cookie.
pub(crate) fn verify(headers: &HeaderMap, submitted: Option<&str>) -> bool {
    match (from_cookie(headers), submitted) {
        (Some(cookie), Some(form)) => constant_time_eq(cookie.as_bytes(), form.as_bytes()),
        _ => false,
    }
}

/// Byte equality in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(cookie) {
            h.insert(axum::http::header::COOKIE, v);
        }
        h
    }

    #[test]
    fn fresh_tokens_are_hex_and_differ() {
        let a = fresh();
        let b = fresh();
        assert!(is_token(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let t = "0123456789abcdef0123456789abcdef";
        let h = headers(&format!("theme=dark; {COOKIE}={t}; other=1"));
        assert_eq!(from_cookie(&h).as_deref(), Some(t));
        assert!(verify(&h, Some(t)));
        assert!(!verify(&h, Some("0123456789abcdef0123456789abcdee")));
        assert!(!verify(&h, None));
        assert!(!verify(&headers(""), Some(t)));
    }

    #[test]
    fn a_malformed_cookie_is_not_a_token() {
        let h = headers(&format!("{COOKIE}=short"));
        assert_eq!(from_cookie(&h), None);
        assert!(!verify(&h, Some("short")));
    }
}
