//! Time as the cache rules see it. Production reads the system clock; tests
//! drive a manual clock so lease expiry is exact and instant.

#[cfg(any(test, feature = "testing"))]
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch: the service's one notion of time
/// (leases, claims, operations).
pub type Millis = i64;

/// The system clock's current time in [`Millis`]. Only [`SystemClock`]
/// should call this; everything else asks its injected [`Clock`].
pub fn now_millis() -> Millis {
    millis_of(std::time::SystemTime::now()).unwrap_or(0)
}

/// A point in time as [`Millis`]; `None` before 1970.
pub fn millis_of(t: std::time::SystemTime) -> Option<Millis> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A span as [`Millis`], saturating.
pub fn span_millis(d: std::time::Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        now_millis()
    }
}

/// A clock that moves only when told to.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

#[cfg(any(test, feature = "testing"))]
impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self(AtomicI64::new(start))
    }

    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}
