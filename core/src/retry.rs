//! Retry backoff: exponential with jitter, capped.

use std::time::Duration;

/// The first retry's base delay. Defaults to 1 second.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between attempts. Defaults to 1 hour.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(3600);
/// The share of each delay that is randomized. Defaults to 0.25 (±25%).
pub const DEFAULT_JITTER: f64 = 0.25;

/// How long to wait before each retry: `base * 2^(attempt-1)`, capped at `max`, then
/// spread by ±`jitter` so retries of many jobs do not arrive together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt, before jitter.
    pub base: Duration,
    /// The cap on any delay, before jitter.
    pub max: Duration,
    /// Fraction of the delay randomized, from 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: DEFAULT_BASE_DELAY,
            max: DEFAULT_MAX_DELAY,
            jitter: DEFAULT_JITTER,
        }
    }
}

impl RetryPolicy {
    /// A policy with this base and cap and the default jitter.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        RetryPolicy {
            base,
            max,
            ..Self::default()
        }
    }

    /// The same policy with another jitter fraction (clamped to 0.0..=1.0).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay before the attempt after `attempt` (1-based) failed.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(40);
        let raw = self.base.saturating_mul(2u32.saturating_pow(exp.min(31)));
        let capped = raw.min(self.max);
        if self.jitter <= 0.0 {
            return capped;
        }
        // A uniform value in [-1, 1) from the token generator's mixer.
        let r = (crate::job::new_lease_token() as f64 / i64::MAX as f64) * 2.0 - 1.0;
        capped.mul_f64((1.0 + r * self.jitter).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let p = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(10))
            .with_jitter(0.0);
        let d: Vec<u64> = (1..=6).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(p.delay(i32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let p = RetryPolicy::exponential(Duration::from_secs(100), Duration::from_secs(100));
        let ds: Vec<Duration> = (0..200).map(|_| p.delay(1)).collect();
        assert!(ds
            .iter()
            .all(|d| *d >= Duration::from_secs(75) && *d <= Duration::from_secs(125)));
        assert!(ds.iter().any(|d| *d != ds[0]), "jitter should vary delays");
    }
}
