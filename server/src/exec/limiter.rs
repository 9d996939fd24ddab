//! Adaptive concurrency for one destination bucket: additive increase,
//! multiplicative decrease (AIMD), as TCP does for bandwidth. Each success
//! grows the limit by 1/limit (about +1 per window of `limit` requests);
//! a throttling answer (503 SlowDown, 429, timeouts) halves it, at most once
//! per cool-down so one burst of SlowDowns counts as one signal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's monotonic clock: immune to wall-clock jumps, and paused with the
// runtime in tests.
use tokio::time::Instant;

use tokio::sync::Notify;

#[derive(Debug)]
struct State {
    limit: f64,
    /// The ceiling: this replica's share of the bucket's budget.
    max: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
}

#[derive(Debug)]
pub struct Aimd {
    state: Mutex<State>,
    freed: Notify,
    min: f64,
    cool_down: Duration,
}

/// One admitted request; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<Aimd>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.freed.notify_one();
    }
}

impl Aimd {
    pub fn new(initial: usize, min: usize, max: usize) -> Arc<Self> {
        let (min, max) = (min.max(1) as f64, max.max(1) as f64);
        Arc::new(Self {
            state: Mutex::new(State {
                limit: (initial as f64).clamp(min, max),
                max,
                in_flight: 0,
                last_decrease: None,
            }),
            freed: Notify::new(),
            min,
            cool_down: Duration::from_millis(200),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until fewer than `limit` requests are in flight.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            {
                let mut st = self.lock();
                if (st.in_flight as f64) < st.limit.floor().max(1.0) {
                    st.in_flight += 1;
                    return Slot(Arc::clone(self));
                }
            }
            freed.await;
        }
    }

    pub fn on_success(&self) {
        let grew = {
            let mut st = self.lock();
            let before = st.limit.floor();
            st.limit = (st.limit + 1.0 / st.limit).min(st.max);
            st.limit.floor() > before
        };
        if grew {
            self.freed.notify_one();
        }
    }

    /// Halves the limit (once per cool-down); returns whether it did.
    pub fn on_throttle(&self) -> bool {
        let mut st = self.lock();
        let now = Instant::now();
        if st
            .last_decrease
            .is_some_and(|t| now.duration_since(t) < self.cool_down)
        {
            return false;
        }
        st.last_decrease = Some(now);
        st.limit = (st.limit / 2.0).max(self.min);
        true
    }

    /// Moves the ceiling to `max` (never below the minimum): the limit is
    /// cut to it at once, or may grow up to it again.
    pub fn set_max(&self, max: usize) {
        let mut st = self.lock();
        st.max = (max as f64).max(self.min);
        st.limit = st.limit.min(st.max);
    }

    /// The current ceiling.
    pub fn max(&self) -> usize {
        self.lock().max as usize
    }

    /// The current limit, rounded down.
    pub fn limit(&self) -> usize {
        self.lock().limit.floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_limit_and_frees_on_drop() {
        let l = Aimd::new(2, 1, 10);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(20), l.acquire()).await;
        assert!(third.is_err(), "a third request waits");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_millis(200), l.acquire())
            .await
            .expect("a freed slot admits the next");
    }

    #[test]
    fn halves_on_throttle_once_per_cool_down_and_grows_back_additively() {
        let l = Aimd::new(64, 1, 64);
        assert!(l.on_throttle());
        assert_eq!(l.limit(), 32);
        assert!(!l.on_throttle(), "a burst of SlowDowns is one signal");
        assert_eq!(l.limit(), 32);
        for _ in 0..33 {
            l.on_success();
        }
        assert_eq!(l.limit(), 33, "about one window of successes adds one");
        for _ in 0..10_000 {
            l.on_success();
        }
        assert_eq!(l.limit(), 64, "never above the maximum");
    }

    #[test]
    fn a_lower_ceiling_cuts_the_limit_and_a_higher_one_lets_it_grow() {
        let l = Aimd::new(64, 1, 64);
        l.set_max(21);
        assert_eq!((l.limit(), l.max()), (21, 21));
        l.set_max(64);
        assert_eq!(l.limit(), 21, "grows back by successes, not at once");
        for _ in 0..10_000 {
            l.on_success();
        }
        assert_eq!(l.limit(), 64);
        l.set_max(0);
        assert_eq!(l.limit(), 1, "never below the minimum");
    }

    #[test]
    fn never_below_the_minimum() {
        let l = Aimd::new(4, 2, 8);
        l.on_throttle();
        std::thread::sleep(Duration::from_millis(210));
        l.on_throttle();
        assert_eq!(l.limit(), 2);
    }
}
