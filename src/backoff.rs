//! The one retry-delay policy of the project: exponential growth to a cap,
//! with full jitter (a uniform draw below the growing ceiling), so that many
//! callers that failed together do not come back together. Pure: the random
//! draw is passed in, so schedules are exact under test.

use std::time::Duration;

/// Delays before attempt 1, 2, ... of a retried call: `first`, doubling to
/// `max` (the ceiling); each actual delay is drawn uniformly below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub first: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// A policy of ceilings from `first` doubling to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The ceiling before retry number `attempt` (from 1; 0 counts as 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.max.max(self.first))
    }

    /// The delay before retry `attempt` for a draw `unit` in [0, 1):
    /// `unit` x the ceiling ("full jitter").
    pub fn delay_at(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The longest `attempts` retries can wait in all: the sum of their
    /// ceilings.
    pub fn worst_case(&self, attempts: u32) -> Duration {
        (1..=attempts).map(|a| self.ceiling(a)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_to_the_cap_and_delays_stay_below_them() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<_> = (1..=6).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(0), b.ceiling(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        assert_eq!(b.delay_at(3, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay_at(3, 0.0), Duration::ZERO);
        assert!(b.delay_at(3, 0.999_999) < b.ceiling(3));
        assert_eq!(b.worst_case(4), Duration::from_millis(1500));
    }
}
