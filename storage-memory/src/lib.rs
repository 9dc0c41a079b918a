//! In-process storage for durable-jobs: complete, fast, and driven by an injectable clock
//! so tests move time (delays, backoff, lease expiry) instead of sleeping.
//!
//! ```
//! use durable_jobs::ManualClock;
//! use durable_jobs_memory::MemoryStorage;
//! let clock = ManualClock::new();
//! let storage = MemoryStorage::with_clock(clock.clone());
//! ```

mod jobs;
mod paged;
mod storage;

pub use storage::MemoryStorage;
