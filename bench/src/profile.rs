//! `--profile`: a [`StorageLayer`] that tallies every storage call our scenarios make, so
//! a slow scenario shows whether time goes to claims, completions, or waiting between
//! them.
//!
//! It forwards nothing: the library's `InstrumentedStorage` (which every `Queue` and
//! `Worker` call goes through) times each call and hands it to the layers installed with
//! `Queue::with_layers`, so every storage method is covered, including ones added later.

use durable_jobs::{StorageCall, StorageLayer};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default, Clone, Copy)]
struct Stat {
    calls: u64,
    items: u64,
    errors: u64,
    total: Duration,
    max: Duration,
}

/// Calls, items, errors and wall time per storage operation.
pub struct Profiler {
    stats: Mutex<BTreeMap<&'static str, Stat>>,
    created: Instant,
}

impl Profiler {
    pub fn new() -> Self {
        Profiler {
            stats: Mutex::new(BTreeMap::new()),
            created: Instant::now(),
        }
    }

    /// Prints the breakdown, with `label` naming the scenario.
    pub fn print(&self, label: &str) {
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "    profile of {label} ({:.2} s since the storage was made):",
            self.created.elapsed().as_secs_f64()
        );
        eprintln!(
            "      {:<20} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "method", "calls", "items", "items/call", "avg ms", "max ms", "total s"
        );
        for (name, st) in s.iter() {
            let errors = if st.errors > 0 {
                format!("  ({} failed)", st.errors)
            } else {
                String::new()
            };
            eprintln!(
                "      {:<20} {:>8} {:>10} {:>10.1} {:>10.3} {:>10.3} {:>10.3}{errors}",
                name,
                st.calls,
                st.items,
                st.items as f64 / st.calls.max(1) as f64,
                st.total.as_secs_f64() * 1000.0 / st.calls.max(1) as f64,
                st.max.as_secs_f64() * 1000.0,
                st.total.as_secs_f64()
            );
        }
    }
}

impl StorageLayer for Profiler {
    fn on_call(&self, call: &StorageCall<'_>) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let e = s.entry(call.operation).or_default();
        e.calls += 1;
        e.items += call.items as u64;
        e.errors += u64::from(call.error.is_some());
        e.total += call.elapsed;
        e.max = e.max.max(call.elapsed);
    }
}
