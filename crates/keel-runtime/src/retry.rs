//! The one retry vocabulary of Keel: an error says whether trying again can help
//! ([`Retryable`]), and [`Backoff`] says how long to wait before the next attempt. Projections
//! (nak or dead-letter), saga steps (retry or compensate) and remote calls (transient or
//! permanent) all decide with these.

use std::time::Duration;

/// Whether the operation that failed with this error may succeed if tried again unchanged.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

/// Exponential backoff with jitter: `base · 2^(attempt-1)`, capped at `max`, times a factor in
/// `[0.8, 1.2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The wait before attempt `attempt + 1`, after `attempt` failures (1-based), with
    /// `jitter` in `[0, 1]` choosing where in the ±20 % band it falls.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let raw = self.base.saturating_mul(2u32.saturating_pow(exp)).min(self.max);
        raw.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay`] with a random jitter.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_caps_and_jitters_within_the_band() {
        let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(400));
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(40, 0.5), Duration::from_secs(30));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(160));
        assert!(b.delay(1, 1.0) <= Duration::from_millis(240));
        for attempt in 1..30 {
            let d = b.delay_random(attempt);
            assert!(
                d >= Duration::from_millis(160) && d <= Duration::from_secs(36),
                "{d:?}"
            );
        }
    }
}
