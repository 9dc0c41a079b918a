//! Job metadata: a JSON object of key/value pairs set at enqueue (a tenant, a request
//! id), stored with the job, readable on [`crate::Job::metadata`] and matched by key and
//! value in listings and deletes ([`crate::JobFilter::metadata`]).

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// A job's metadata: a JSON object.
pub type Metadata = Map<String, Value>;

/// The largest serialized metadata object accepted, in bytes (64 KiB): metadata is for
/// labels to find jobs by, and every listing returns it.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Checks metadata given as a JSON value: it must be an object of at most
/// [`MAX_METADATA_BYTES`] with non-empty keys.
///
/// # Errors
/// [`Error::InvalidOption`] (option `metadata`) otherwise.
pub fn validate_metadata(value: Value) -> Result<Metadata> {
    let Value::Object(map) = value else {
        return Err(invalid(format!(
            "expected a JSON object, found {}",
            kind(&value)
        )));
    };
    if map.keys().any(String::is_empty) {
        return Err(invalid("keys must not be empty".into()));
    }
    let size = serde_json::to_vec(&map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(invalid(format!(
            "{size} bytes serialized, more than the limit of {MAX_METADATA_BYTES}"
        )));
    }
    Ok(map)
}

/// Checks a filter's metadata term: a non-empty key and a scalar value (string, number,
/// boolean or null). Objects and arrays are refused because backends would disagree on
/// what matching them means (containment or equality).
///
/// # Errors
/// [`Error::InvalidOption`] (option `metadata`) otherwise.
pub fn validate_match(key: &str, value: &Value) -> Result<()> {
    if key.is_empty() {
        return Err(invalid("the filter's key must not be empty".into()));
    }
    if value.is_object() || value.is_array() {
        return Err(invalid(format!(
            "the filter's value must be a string, number, boolean or null, found {}",
            kind(value)
        )));
    }
    Ok(())
}

/// True when `metadata` holds `key` with a value equal to `value`, as every backend
/// compares them: numbers by numeric value (`1` matches `1.0`), everything else exactly.
pub fn matches(metadata: &Metadata, key: &str, value: &Value) -> bool {
    match (metadata.get(key), value) {
        (Some(Value::Number(a)), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => a.as_f64() == b.as_f64(),
        },
        (Some(found), wanted) => found == wanted,
        (None, _) => false,
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidOption {
        option: "metadata",
        message,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_objects_are_metadata() {
        assert!(validate_metadata(json!({"tenant": "acme", "n": 1})).is_ok());
        for bad in [
            json!([1]),
            json!("x"),
            json!(1),
            json!(null),
            json!({"": 1}),
        ] {
            assert!(
                matches!(
                    validate_metadata(bad.clone()),
                    Err(Error::InvalidOption {
                        option: "metadata",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let big = json!({ "k": "x".repeat(MAX_METADATA_BYTES) });
        assert!(validate_metadata(big).is_err());
    }

    #[test]
    fn matching_is_scalar_equality_with_numeric_numbers() {
        let m = validate_metadata(json!({"t": "acme", "n": 1, "f": 1.5, "b": true, "z": null}))
            .expect("valid");
        assert!(matches(&m, "t", &json!("acme")));
        assert!(!matches(&m, "t", &json!("acm")));
        assert!(matches(&m, "n", &json!(1.0)));
        assert!(matches(&m, "f", &json!(1.5)));
        assert!(!matches(&m, "n", &json!("1")));
        assert!(matches(&m, "b", &json!(true)));
        assert!(!matches(&m, "b", &json!(1)));
        assert!(matches(&m, "z", &json!(null)));
        assert!(!matches(&m, "missing", &json!(null)));
        assert!(validate_match("t", &json!({"a": 1})).is_err());
        assert!(validate_match("", &json!(1)).is_err());
    }
}
