//! Randomness for retry backoff, behind a trait so tests can pin it: a
//! retry schedule under test is then exact, not "somewhere in a range".

use std::fmt::Debug;
use std::time::Duration;

/// Spreads the retries of concurrent tasks so they do not hit a throttled
/// server in lockstep.
pub trait Jitter: Send + Sync + Debug + 'static {
    /// A delay in [0, `base`).
    fn below(&self, base: Duration) -> Duration;
}

/// Uniformly random jitter (full jitter on top of the exponential base).
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn below(&self, base: Duration) -> Duration {
        let ns = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        if ns == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(fastrand::u64(0..ns))
    }
}

/// No jitter: every retry waits exactly its base delay.
#[derive(Debug, Default, Clone, Copy)]
#[cfg(any(test, feature = "testing"))]
pub struct NoJitter;

#[cfg(any(test, feature = "testing"))]
impl Jitter for NoJitter {
    fn below(&self, _base: Duration) -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_jitter_stays_below_its_base() {
        let base = Duration::from_millis(3);
        for _ in 0..1000 {
            assert!(RandomJitter.below(base) < base);
        }
        assert_eq!(RandomJitter.below(Duration::ZERO), Duration::ZERO);
    }
}
