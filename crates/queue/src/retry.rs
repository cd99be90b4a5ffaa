use std::time::Duration;

use rand::Rng;

/// How often a failing message is tried and how long it waits between attempts.
///
/// The wait before attempt `k + 1` is `base · 2^(k-1)`, capped at `max`, with up to
/// `jitter` of it (a fraction, 0–1) taken off at random so failing messages spread out
/// instead of coming back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included. After the last, the message is dead.
    pub max_attempts: i32,
    pub base: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Three attempts, as in the services Conveyor replaces; 1 s, then 2 s.
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, base: Duration::from_secs(1), max: Duration::from_secs(300), jitter: 0.25 }
    }
}

impl RetryPolicy {
    /// The longest wait after failed attempt `attempt` (1-based), before jitter.
    pub fn ceiling(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(1, 32) as u32 - 1;
        self.base.saturating_mul(2u32.saturating_pow(exp)).min(self.max)
    }

    /// The wait after failed attempt `attempt`: within `[ceiling·(1-jitter), ceiling]`.
    pub fn delay(&self, attempt: i32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return ceiling;
        }
        ceiling.mul_f64(1.0 - rand::rng().random_range(0.0..=jitter))
    }

    /// Whether failed attempt `attempt` was the last one.
    pub fn exhausted(&self, attempt: i32) -> bool {
        attempt >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_stay_within_jitter_and_cap() {
        let p = RetryPolicy { max_attempts: 10, base: Duration::from_millis(100), max: Duration::from_secs(1), jitter: 0.5 };
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(5), Duration::from_secs(1));
        assert_eq!(p.ceiling(40), Duration::from_secs(1));
        for attempt in 1..8 {
            for _ in 0..100 {
                let d = p.delay(attempt);
                assert!(d <= p.ceiling(attempt) && d >= p.ceiling(attempt).mul_f64(0.5), "{d:?}");
            }
        }
        assert!(!p.exhausted(9));
        assert!(p.exhausted(10));
    }
}
