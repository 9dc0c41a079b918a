//! Timing helpers: a countdown the handlers hit, per-job latency probes, percentiles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long the latency scenario waits for stragglers after its last enqueue; a job not
/// run by then counts as infinitely late.
pub const LATENCY_WAIT: Duration = Duration::from_secs(60);

/// Counts handler runs and wakes the waiter when the expected number is reached, so the
/// benchmark stops its clock at the moment the last job's handler ran (no polling delay).
#[derive(Debug)]
pub struct Countdown {
    target: usize,
    done: AtomicUsize,
    reached: Notify,
    finished_at: OnceLock<Instant>,
    first_at: OnceLock<Instant>,
}

impl Countdown {
    pub fn new(target: usize) -> Self {
        Countdown {
            target,
            done: AtomicUsize::new(0),
            reached: Notify::new(),
            finished_at: OnceLock::new(),
            first_at: OnceLock::new(),
        }
    }

    /// Called by a handler each time it runs.
    pub fn hit(&self) {
        let n = self.done.fetch_add(1, Ordering::AcqRel) + 1;
        if n == 1 {
            let _ = self.first_at.set(Instant::now());
        }
        if n == self.target {
            let _ = self.finished_at.set(Instant::now());
            self.reached.notify_one();
        }
    }

    /// When the first handler ran, if one has.
    pub fn first_at(&self) -> Option<Instant> {
        self.first_at.get().copied()
    }

    /// Prints how long after `t0` the first handler ran: the worker's start-up cost, which
    /// is inside every drain figure.
    pub fn report_start(&self, t0: Instant) {
        if let Some(first) = self.first_at() {
            eprint!(
                "[first job after {:.1} ms] ",
                (first - t0).as_secs_f64() * 1e3
            );
        }
    }

    pub fn count(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until `target` hits, up to `timeout`; returns the instant of the last hit.
    pub async fn wait(&self, timeout: Duration) -> Result<Instant, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self.finished_at.get() {
                return Ok(*at);
            }
            // notify_one stores a permit, so a hit between the check and the await is not lost;
            // the short re-check interval only guards the deadline.
            let step = tokio::time::timeout(Duration::from_millis(200), self.reached.notified());
            let _ = step.await;
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "timed out after {:?}: {} of {} jobs ran",
                    timeout,
                    self.count(),
                    self.target
                ));
            }
        }
    }
}

/// Enqueue-to-start latency probe: the enqueuer stamps `start(seq)` just before its enqueue
/// call, the handler stamps `ran(seq)` first thing when it starts.
#[derive(Debug)]
pub struct LatencyProbe {
    starts: Vec<OnceLock<Instant>>,
    runs: Vec<OnceLock<Instant>>,
    pub countdown: Countdown,
}

impl LatencyProbe {
    pub fn new(n: usize) -> Self {
        LatencyProbe {
            starts: (0..n).map(|_| OnceLock::new()).collect(),
            runs: (0..n).map(|_| OnceLock::new()).collect(),
            countdown: Countdown::new(n),
        }
    }

    pub fn start(&self, seq: usize) {
        let _ = self.starts[seq].set(Instant::now());
    }

    /// Records the handler start; a job that runs twice (it should not) counts once.
    pub fn ran(&self, seq: usize) {
        if let Some(slot) = self.runs.get(seq) {
            if slot.set(Instant::now()).is_ok() {
                self.countdown.hit();
            }
        }
    }

    /// Waits (polling every millisecond, up to `timeout`) until job `seq` has run.
    pub async fn wait_ran(&self, seq: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.runs[seq].get().is_none() {
            if Instant::now() > deadline {
                return Err(format!("job {seq} did not run within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Waits up to `timeout` for every job to run. Jobs still not run then are reported
    /// (and count as infinitely late in the percentiles) rather than failing the scenario,
    /// so one stuck job shows up in p99/max instead of hiding every other figure.
    pub async fn finish(&self, timeout: Duration) {
        if let Err(e) = self.countdown.wait(timeout).await {
            eprint!("[{e}; the rest count as infinitely late] ");
        }
    }

    /// Latency in milliseconds of every started job, in sequence order; infinity for a
    /// job that never ran.
    pub fn latencies_ms(&self) -> Vec<f64> {
        self.starts
            .iter()
            .zip(&self.runs)
            .filter_map(|(s, r)| {
                let s = s.get()?;
                Some(match r.get() {
                    Some(r) => r.saturating_duration_since(*s).as_secs_f64() * 1000.0,
                    None => f64::INFINITY,
                })
            })
            .collect()
    }
}

/// The `p`-th percentile (0..=100) by nearest rank; NaN for no samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The median (average of the middle two for an even count); NaN for no samples.
pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Jobs per second for `n` jobs over `elapsed`.
pub fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Machine-wide busy CPU time over a measured span (every process: the database, this
/// one, anything else running), read from `/proc/stat`. CPU per job is steadier than
/// jobs/s on a shared machine: when the CPU is saturated, throughput is cores divided by
/// it, so it compares two systems' costs even when their runs met different load.
pub struct CpuMeter {
    start: Option<u64>,
    own: Option<u64>,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn start() -> Self {
        CpuMeter {
            start: busy_ticks(),
            own: own_ticks(),
        }
    }

    /// Prints busy CPU per job since `start` on stderr (between a scenario's `...` and
    /// its figure), or nothing where `/proc/stat` cannot be read.
    pub fn report(&self, jobs: usize) {
        if let (Some(a), Some(b)) = (self.start, busy_ticks()) {
            // /proc/stat counts in USER_HZ, which Linux fixes at 100 per second.
            let us = b.saturating_sub(a) as f64 * 10_000.0 / jobs.max(1) as f64;
            let own = match (self.own, own_ticks()) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 * 10_000.0 / jobs.max(1) as f64,
                _ => f64::NAN,
            };
            eprint!("[busy CPU {us:.0} us/job, {own:.0} of it in this process] ");
        }
    }
}

/// This process's user + system ticks (the client side of both systems runs here).
fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// user + nice + system + irq + softirq + steal ticks of all CPUs (idle and iowait left
/// out).
fn busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum())
}

/// The payload every benchmark job carries (the same shape graphile_worker's perf test uses).
pub fn payload(i: usize) -> serde_json::Value {
    serde_json::json!({ "id": i, "data": format!("test_{i}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
