//! Determinism of call arguments: the hash stored with a call's checkpoint, and what a
//! replay does when the arguments it is called with hash differently.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a replay does when a call's arguments differ from the ones its checkpoint
/// recorded (set per task with [`crate::Queue::set_determinism`]). A different task name
/// at a checkpoint is always an error; this only chooses for changed arguments.
/// Checkpoints written before arguments were hashed have no hash and are never checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Determinism {
    /// Fail the job with [`crate::Error::ArgumentsChanged`], without retries: a stored
    /// result computed from other inputs is never returned silently.
    #[default]
    Strict,
    /// Log a warning, send [`crate::Event::NonDeterminism`], and return the stored
    /// result: for workflows whose arguments may legitimately drift (a timestamp, a
    /// re-fetched value) where the first run's result must stand.
    Warn,
}

/// The hash of a call's arguments as stored with its checkpoint: FNV-1a (64 bits) of
/// the arguments' compact JSON, prefixed with the algorithm's name so another one can
/// be told apart later. serde_json writes object keys in sorted order, so equal values
/// hash equal however they were built; the hash is the same in every process and
/// version.
pub(crate) fn args_hash(args: &Value) -> String {
    format!("fnv1a64:{:016x}", fnv1a64(args.to_string().as_bytes()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_is_fnv1a_64() {
        // The published FNV-1a test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            args_hash(&json!("a")),
            format!("fnv1a64:{:016x}", fnv1a64(b"\"a\""))
        );
    }

    #[test]
    fn equal_arguments_hash_equal_and_others_differ() {
        let a = json!({"b": 1, "a": [1, 2, {"z": null, "y": "x"}]});
        let mut map = serde_json::Map::new();
        map.insert("a".into(), json!([1, 2, {"y": "x", "z": null}]));
        map.insert("b".into(), json!(1));
        assert_eq!(args_hash(&a), args_hash(&Value::Object(map)));
        assert_ne!(args_hash(&json!(1299)), args_hash(&json!(1300)));
    }
}
