//! Adaptive concurrency for one destination bucket: it finds how many
//! requests may be in flight by watching their latency, as TCP Vegas and
//! Netflix's gradient limiters do.
//!
//! What bounds a copy's rate depends on where the service runs: on a
//! loopback endpoint the server's CPU, on AWS the round trip (tens of
//! milliseconds, so thousands of requests/s need hundreds in flight). A
//! fixed limit is wrong for one or the other; so the limit is measured:
//!
//! - **Windows.** Latencies of successful requests are collected in
//!   windows of about one limit's worth of requests (at least
//!   [`MIN_WINDOW`]), roughly one round trip each. The window's median is
//!   its latency (a median, so a few large objects do not look like a
//!   queue).
//! - **Baseline.** The lowest window latency seen: the latency without a
//!   queue. It drifts up by [`BASELINE_DRIFT_PER_SEC`] (1%/s), so a lasting
//!   change (larger objects, a slower route) becomes the new normal within
//!   about a minute instead of throttling the warm forever.
//! - **Growth.** While a window's latency stays within [`TOLERANCE`] (2x)
//!   of the baseline, the limit grows: doubling per window at first (slow
//!   start, so 16 becomes 1,024 in six round trips), then by its square
//!   root per window once any congestion was seen. It grows only when the
//!   window used at least half of it (a limit nobody fills says nothing).
//! - **Back-off.** A window slower than the tolerance ends slow start and
//!   cuts the limit in proportion (`limit * tolerance * baseline /
//!   latency`, at most by half); a throttling answer (503 SlowDown, 429,
//!   a timeout) halves it, at most once per cool-down so one burst of
//!   SlowDowns counts as one signal. For a minute after, the limit grows
//!   by one per window only once it is back at 3/4 of where it was
//!   throttled: a request-rate limit adds no latency to warn of it, so it
//!   is approached as AIMD would, not by doubling into it again.
//!
//! The limit stays within `[min, max]`; `max` is this replica's share of
//! the configured `--max-concurrency`, a hard ceiling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's monotonic clock: immune to wall-clock jumps, and paused with the
// runtime in tests.
use tokio::time::Instant;

use tokio::sync::Notify;

/// Where the limit starts: low enough not to flood a small endpoint before
/// the first measurement, high enough that slow start reaches a thousand in
/// a handful of round trips.
pub const INITIAL_LIMIT: usize = 16;
/// Fewest latencies that make a window.
pub const MIN_WINDOW: usize = 16;
/// How much slower than the baseline a window may be before it counts as
/// a queue building up.
pub const TOLERANCE: f64 = 2.0;
/// How fast the baseline rises toward what is measured, per second.
pub const BASELINE_DRIFT_PER_SEC: f64 = 0.01;
/// How long the limit at which the endpoint throttled is remembered.
pub const THROTTLE_MEMORY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Baseline {
    /// Seconds.
    latency: f64,
    at: Instant,
}

#[derive(Debug)]
struct State {
    limit: f64,
    /// The ceiling: this replica's share of the bucket's budget.
    max: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
    /// Doubling per window until the first sign of congestion.
    slow_start: bool,
    /// The limit at which the endpoint last throttled us, and when: above
    /// most of it the limit grows by one per window only, as AIMD does, so
    /// a rate limit that shows no latency is not hit again at once.
    throttled_at: Option<(f64, Instant)>,
    /// Latencies (seconds) of this window's successes.
    window: Vec<f64>,
    /// Most requests in flight at once during this window.
    window_peak: usize,
    baseline: Option<Baseline>,
}

#[derive(Debug)]
pub struct AdaptiveLimit {
    state: Mutex<State>,
    freed: Notify,
    min: f64,
    cool_down: Duration,
}

/// One admitted request; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<AdaptiveLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.freed.notify_one();
    }
}

impl AdaptiveLimit {
    pub fn new(initial: usize, min: usize, max: usize) -> Arc<Self> {
        let (min, max) = (min.max(1) as f64, max.max(1) as f64);
        Arc::new(Self {
            state: Mutex::new(State {
                limit: (initial as f64).clamp(min, max),
                max,
                in_flight: 0,
                last_decrease: None,
                slow_start: true,
                throttled_at: None,
                window: Vec::new(),
                window_peak: 0,
                baseline: None,
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
                    st.window_peak = st.window_peak.max(st.in_flight);
                    return Slot(Arc::clone(self));
                }
            }
            freed.await;
        }
    }

    /// A request succeeded after `latency`; at the end of a window, moves
    /// the limit.
    pub fn on_success(&self, latency: Duration) {
        let grew = {
            let mut st = self.lock();
            st.window.push(latency.as_secs_f64());
            if st.window.len() < MIN_WINDOW.max(st.limit as usize) {
                return;
            }
            let before = st.limit.floor();
            self.end_window(&mut st);
            st.limit.floor() > before
        };
        if grew {
            self.freed.notify_waiters();
        }
    }

    fn end_window(&self, st: &mut State) {
        let mid = st.window.len() / 2;
        let latency = *st.window.select_nth_unstable_by(mid, f64::total_cmp).1;
        st.window.clear();
        let used = st.window_peak as f64 >= st.limit / 2.0;
        st.window_peak = st.in_flight;
        let now = Instant::now();
        let baseline = match &st.baseline {
            Some(b) => {
                let drift = 1.0 + BASELINE_DRIFT_PER_SEC * now.duration_since(b.at).as_secs_f64();
                (b.latency * drift).min(latency)
            }
            None => latency,
        };
        st.baseline = Some(Baseline {
            latency: baseline,
            at: now,
        });
        if latency > baseline * TOLERANCE {
            st.slow_start = false;
            let gradient = (baseline * TOLERANCE / latency).max(0.5);
            st.limit = (st.limit * gradient).max(self.min);
        } else if used {
            let near_throttling = st.throttled_at.is_some_and(|(at_limit, when)| {
                now.duration_since(when) < THROTTLE_MEMORY && st.limit >= at_limit * 0.75
            });
            let grown = if near_throttling {
                st.limit + 1.0
            } else if st.slow_start {
                st.limit * 2.0
            } else {
                st.limit + st.limit.sqrt()
            };
            st.limit = grown.min(st.max);
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
        st.slow_start = false;
        st.throttled_at = Some((st.limit, now));
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
mod tests;
