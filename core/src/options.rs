//! Per-job options and their validation.

use crate::error::{Error, Result};
use crate::job::{KeyMode, NewJob};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

pub use crate::job::{DEFAULT_QUEUE, DEFAULT_RETRIES};
/// The largest serialized payload accepted, in bytes. Defaults to 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// The most retries one job may ask for.
pub const MAX_RETRIES: u32 = 10_000;

/// Options for one enqueued job. Setters never fail; [`JobOptions::build`] validates.
///
/// ```
/// use durable_jobs::JobOptions;
/// use std::time::Duration;
/// let opts = JobOptions::new().priority(10).retries(5).delay(Duration::from_secs(30)).queue("emails");
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct JobOptions {
    priority: Option<i32>,
    retries: Option<u32>,
    delay: Option<Duration>,
    at: Option<DateTime<Utc>>,
    queue: Option<String>,
    dedupe_key: Option<String>,
    key_mode: KeyMode,
    timeout: Option<Duration>,
    serial_key: Option<String>,
    flags: Vec<String>,
    tags: Vec<String>,
    metadata: Option<Value>,
}

impl JobOptions {
    /// Default options: priority 0, 3 retries, run now, queue `default`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Higher runs first. Defaults to 0.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Retries after the first attempt. Defaults to [`DEFAULT_RETRIES`].
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Runs no earlier than this long after enqueue (by the storage clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Runs no earlier than this time.
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = Some(at);
        self
    }

    /// The routing queue. Defaults to [`DEFAULT_QUEUE`].
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// While an unfinished job holds this key, enqueueing another returns its id.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// A job key with a mode: [`KeyMode::Dedupe`] keeps an existing unfinished job,
    /// [`KeyMode::Replace`] debounces (replaces its payload and run_at),
    /// [`KeyMode::PreserveRunAt`] throttles (replaces its payload, keeps its run_at).
    pub fn job_key(mut self, key: impl Into<String>, mode: KeyMode) -> Self {
        self.dedupe_key = Some(key.into());
        self.key_mode = mode;
        self
    }

    /// Runs at most one job with this key at a time, across all workers (graphile's named
    /// queues), or as many as [`crate::Queue::set_key_limit`] allows for the key (a
    /// fleet-wide concurrency cap). Jobs of one key start in claim order.
    pub fn serial_key(mut self, key: impl Into<String>) -> Self {
        self.serial_key = Some(key.into());
        self
    }

    /// Adds a flag; workers started with `forbid_flags` containing it will not claim the job.
    pub fn flag(mut self, flag: impl Into<String>) -> Self {
        self.flags.push(flag.into());
        self
    }

    /// Adds a tag to find the job by in listings.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the job's metadata: a JSON object of key/value pairs to find it by (replacing
    /// pairs set before). Anything but an object is refused by [`JobOptions::build`].
    ///
    /// ```
    /// use durable_jobs::JobOptions;
    /// let opts = JobOptions::new().metadata(serde_json::json!({"tenant": "acme"}));
    /// ```
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Adds one metadata pair (`.meta("tenant", "acme")`), keeping the others.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        match &mut self.metadata {
            Some(Value::Object(map)) => {
                map.insert(key.into(), value.into());
            }
            // A non-object set by `metadata` stays, for `build` to refuse.
            Some(_) => {}
            None => {
                let mut map = serde_json::Map::new();
                map.insert(key.into(), value.into());
                self.metadata = Some(Value::Object(map));
            }
        }
        self
    }

    /// Each attempt fails (and may retry) once it runs this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Validates the options and builds the job to insert.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for `delay` together with `at`, a zero timeout, more than
    /// [`MAX_RETRIES`] retries, an empty dedupe key, or metadata that is not a JSON
    /// object (see [`crate::metadata::validate_metadata`]); [`Error::InvalidQueueName`];
    /// [`Error::PayloadTooLarge`] past [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub fn build(&self, task: &str, payload: Value) -> Result<NewJob> {
        validate_task_name(task)?;
        if self.delay.is_some() && self.at.is_some() {
            return Err(Error::InvalidOption {
                option: "delay",
                message: "set either `delay` or `at`, not both".into(),
            });
        }
        let retries = self.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > MAX_RETRIES {
            return Err(Error::InvalidOption {
                option: "retries",
                message: format!("expected at most {MAX_RETRIES}, found {retries}"),
            });
        }
        let timeout_ms = match self.timeout {
            Some(t) if t.is_zero() => {
                return Err(Error::InvalidOption {
                    option: "timeout",
                    message: "expected a positive duration, found zero".into(),
                })
            }
            Some(t) => Some(i64::try_from(t.as_millis()).unwrap_or(i64::MAX).max(1)),
            None => None,
        };
        if let Some(delay) = self.delay {
            if chrono::Duration::from_std(delay).is_err() {
                return Err(Error::InvalidOption {
                    option: "delay",
                    message: format!("{delay:?} is out of range"),
                });
            }
        }
        if let Some(key) = &self.dedupe_key {
            if key.is_empty() {
                return Err(Error::InvalidOption {
                    option: "dedupe_key",
                    message: "expected a non-empty key".into(),
                });
            }
        }
        if self.serial_key.as_deref() == Some("") {
            return Err(Error::InvalidOption {
                option: "serial_key",
                message: "expected a non-empty key".into(),
            });
        }
        for (option, list) in [("flag", &self.flags), ("tag", &self.tags)] {
            if let Some(bad) = list.iter().find(|f| f.is_empty() || f.len() > 128) {
                return Err(Error::InvalidOption {
                    option,
                    message: format!("`{bad}` must be 1 to 128 characters"),
                });
            }
        }
        let metadata = match &self.metadata {
            Some(m) => crate::metadata::validate_metadata(m.clone())?,
            None => crate::metadata::Metadata::new(),
        };
        let queue = self.queue.clone().unwrap_or_else(|| DEFAULT_QUEUE.into());
        validate_queue_name(&queue)?;
        let size = payload_size(&payload);
        if size > DEFAULT_MAX_PAYLOAD_BYTES {
            return Err(Error::PayloadTooLarge {
                task: task.into(),
                size,
                limit: DEFAULT_MAX_PAYLOAD_BYTES,
            });
        }
        Ok(NewJob {
            task: task.into(),
            payload,
            queue,
            priority: self.priority.unwrap_or(0),
            max_attempts: i32::try_from(retries).unwrap_or(i32::MAX - 1) + 1,
            run_at: self.at,
            delay: self.delay,
            dedupe_key: self.dedupe_key.clone(),
            timeout_ms,
            parent_id: None,
            key_mode: self.key_mode,
            serial_key: self.serial_key.clone(),
            flags: self.flags.clone(),
            tags: self.tags.clone(),
            trace_context: None,
            metadata,
        })
    }
}

fn payload_size(payload: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    // Serializing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, payload);
    c.0
}

/// Checks a queue name: 1 to 128 characters from `[A-Za-z0-9_.:-]`.
///
/// # Errors
/// [`Error::InvalidQueueName`] otherwise.
pub fn validate_queue_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidQueueName(name.into()))
    }
}

/// Checks a task name: 1 to 128 characters from `[A-Za-z0-9_.:-]`.
///
/// # Errors
/// [`Error::InvalidOption`] otherwise.
pub fn validate_task_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            option: "task",
            message: format!(
                "task name `{name}` must be 1 to 128 characters from A-Z a-z 0-9 _ . : -"
            ),
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_give_four_attempts_on_default_queue() {
        let job = JobOptions::new().build("t", json!(1)).expect("valid");
        assert_eq!(job.max_attempts, 4);
        assert_eq!(job.queue, DEFAULT_QUEUE);
    }

    #[test]
    fn invalid_options_are_typed_errors() {
        let both = JobOptions::new()
            .delay(Duration::from_secs(1))
            .at(Utc::now())
            .build("t", json!(null));
        assert!(matches!(
            both,
            Err(Error::InvalidOption {
                option: "delay",
                ..
            })
        ));
        let zero = JobOptions::new()
            .timeout(Duration::ZERO)
            .build("t", json!(null));
        assert!(matches!(
            zero,
            Err(Error::InvalidOption {
                option: "timeout",
                ..
            })
        ));
        let q = JobOptions::new().queue("bad queue").build("t", json!(null));
        assert!(matches!(q, Err(Error::InvalidQueueName(_))));
        let r = JobOptions::new()
            .retries(MAX_RETRIES + 1)
            .build("t", json!(null));
        assert!(matches!(
            r,
            Err(Error::InvalidOption {
                option: "retries",
                ..
            })
        ));
        let big = json!("x".repeat(DEFAULT_MAX_PAYLOAD_BYTES));
        assert!(matches!(
            JobOptions::new().build("t", big),
            Err(Error::PayloadTooLarge { .. })
        ));
        assert!(JobOptions::new().build("", json!(null)).is_err());
        let list = JobOptions::new().metadata(json!(["tenant"]));
        assert!(matches!(
            list.build("t", json!(null)),
            Err(Error::InvalidOption {
                option: "metadata",
                ..
            })
        ));
    }

    #[test]
    fn metadata_pairs_accumulate() {
        let job = JobOptions::new()
            .meta("tenant", "acme")
            .meta("n", 2)
            .build("t", json!(null))
            .expect("valid");
        assert_eq!(
            Value::Object(job.metadata),
            json!({"tenant": "acme", "n": 2})
        );
        let job = JobOptions::new()
            .metadata(json!({"a": 1}))
            .meta("b", true)
            .build("t", json!(null))
            .expect("valid");
        assert_eq!(Value::Object(job.metadata), json!({"a": 1, "b": true}));
    }
}
