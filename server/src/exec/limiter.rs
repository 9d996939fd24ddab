//! Adaptive concurrency for one destination bucket: it finds how many
//! requests may be in flight by watching their latency, as Netflix's
//! gradient limiter does, and backs off on throttling as AIMD does.
//!
//! What bounds a copy's rate depends on where the service runs: on a
//! loopback endpoint the CPUs of both ends, on AWS the round trip (tens of
//! milliseconds, so thousands of requests/s need hundreds in flight). A
//! fixed limit is wrong for one or the other; so the limit is measured:
//!
//! - **Windows.** Latencies of successful small requests (up to
//!   [`SAMPLE_MAX_BYTES`]: larger copies measure bandwidth, not queues) are
//!   collected in windows of about one limit's worth (at least
//!   [`MIN_WINDOW`]), roughly one round trip each. Only requests admitted
//!   since the limit last changed count, so a window judges the limit it
//!   ran under. Its latency is the median (a few slow requests do not look
//!   like a queue).
//! - **Baseline.** A moving average of window latencies (each window moves
//!   it [`BASELINE_WEIGHT`] of the way, a lower one half the way): what is
//!   normal lately. A queue that builds slowly as the limit grows is
//!   tolerated; only a jump shows congestion. (A minimum instead, as TCP
//!   Vegas keeps, starves a loopback endpoint, whose latency grows with
//!   every request in flight long before its throughput stops growing.)
//! - **Growth, while throughput rises.** While a window's latency stays
//!   within [`TOLERANCE`] (2x) of the baseline, the limit grows: doubling
//!   per window at first (slow start), then by its square root. Each
//!   growth is a trial: if the next window's throughput did not rise by
//!   at least [`GAIN_SHARE`] (half) of it, the extra requests only queued, so the
//!   growth is undone, slow start ends, and the limit holds for
//!   [`HOLD_WINDOWS`] windows before trying again (below [`TRIAL_FROM`],
//!   growth is not on trial). It grows only when the
//!   window used at least half of it (a limit nobody fills says nothing).
//! - **Back-off.** Two windows in a row slower than the tolerance end slow
//!   start and cut the limit in proportion (`limit * tolerance * baseline
//!   / latency`, at most by half, never below [`LATENCY_FLOOR`] for
//!   latency alone); a throttling answer (503 SlowDown, 429, a
//!   timeout) halves it, at most once per cool-down so one burst of
//!   SlowDowns counts as one signal. For a minute after, the limit grows by
//!   one per window only once it is back at 3/4 of where it was
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

/// Where the limit starts: the old fixed default, which small endpoints
/// take; slow start reaches a thousand from it in four round trips.
pub const INITIAL_LIMIT: usize = 64;
/// Requests moving more than this do not feed the latency windows.
pub const SAMPLE_MAX_BYTES: u64 = 1024 * 1024;
/// How far one window moves the baseline toward its latency.
pub const BASELINE_WEIGHT: f64 = 0.1;
/// Latency alone never cuts the limit below this (throttling may): any
/// endpoint takes this many requests at once, and a loopback endpoint's
/// jittery latency must not talk the limit down to one.
pub const LATENCY_FLOOR: f64 = 16.0;
/// Growth below this is not on trial: throughput measured over a few
/// requests is too noisy to judge it, and it costs nothing.
pub const TRIAL_FROM: f64 = 32.0;
/// A growth of the limit stays only if throughput rose by at least this
/// share of it (doubling must bring 1.5x, +10% must bring +5%).
pub const GAIN_SHARE: f64 = 0.5;
/// Windows held at a limit whose growth brought nothing before trying
/// again (the endpoint may have more room by then).
pub const HOLD_WINDOWS: u32 = 16;
/// Fewest latencies that make a window.
pub const MIN_WINDOW: usize = 16;
/// How much slower than the baseline a window may be before it counts as
/// a queue building up.
pub const TOLERANCE: f64 = 2.0;
/// How long the limit at which the endpoint throttled is remembered.
pub const THROTTLE_MEMORY: Duration = Duration::from_secs(60);

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
    /// Bumped whenever the limit changes: requests admitted before feed
    /// no window.
    generation: u64,
    /// Latencies (seconds) of this window's successes.
    window: Vec<f64>,
    /// Most requests in flight at once during this window.
    window_peak: usize,
    /// Seconds.
    baseline: Option<f64>,
    /// When this window began (the limit's last change, or the previous
    /// window's end): its duration gives its throughput.
    window_started: Instant,
    /// The last growth, on trial: the limit and the throughput before it.
    trial: Option<(f64, f64)>,
    /// Windows since the last growth was undone for bringing nothing;
    /// `None` when not holding.
    held: Option<u32>,
    /// The last window was slower than the tolerance: a second in a row
    /// cuts the limit (one alone may be a hiccup of the endpoint).
    slow_before: bool,
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
pub struct Slot {
    limit: Arc<AdaptiveLimit>,
    /// The limit's generation when the request was admitted.
    generation: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.lock().in_flight -= 1;
        self.limit.freed.notify_one();
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
                generation: 0,
                window: Vec::new(),
                window_peak: 0,
                baseline: None,
                window_started: Instant::now(),
                trial: None,
                held: None,
                slow_before: false,
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
            // Registered before the check, so a slot freed in between
            // wakes this waiter.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.lock();
                if (st.in_flight as f64) < st.limit.floor().max(1.0) {
                    st.in_flight += 1;
                    st.window_peak = st.window_peak.max(st.in_flight);
                    return Slot {
                        limit: Arc::clone(self),
                        generation: st.generation,
                    };
                }
            }
            freed.await;
        }
    }

    /// The request holding `slot` succeeded after `latency`, moving
    /// `bytes`; at the end of a window, moves the limit.
    pub fn on_success(&self, slot: &Slot, latency: Duration, bytes: u64) {
        let grew = {
            let mut st = self.lock();
            if slot.generation != st.generation || bytes > SAMPLE_MAX_BYTES {
                return;
            }
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
        let now = Instant::now();
        let mid = st.window.len() / 2;
        let latency = *st.window.select_nth_unstable_by(mid, f64::total_cmp).1;
        let rate = st.window.len() as f64
            / now
                .duration_since(st.window_started)
                .as_secs_f64()
                .max(1e-6);
        let used = st.window_peak as f64 >= st.limit / 2.0;
        let baseline = st.baseline.unwrap_or(latency);
        // Lower latency is trusted faster than higher: a queue draining is
        // news, one building up is what the baseline must not absorb.
        let weight = if latency < baseline {
            0.5
        } else {
            BASELINE_WEIGHT
        };
        st.baseline = Some(baseline + weight * (latency - baseline));
        let before = st.limit;
        let slow = latency > baseline * TOLERANCE;
        let was_slow = std::mem::replace(&mut st.slow_before, slow);
        if slow {
            st.trial = None;
            if was_slow {
                st.slow_start = false;
                let gradient = (baseline * TOLERANCE / latency).max(0.5);
                let floor = LATENCY_FLOOR.min(st.limit).max(self.min);
                st.limit = (st.limit * gradient).max(floor);
            }
        } else if used {
            match st.trial.take() {
                // The last growth brought too little throughput: a queue,
                // not capacity. Undo it and hold for a while.
                Some((limit, rate_before)) if rate < rate_before * min_gain(limit, st.limit) => {
                    st.limit = limit;
                    st.slow_start = false;
                    st.held = Some(0);
                }
                _ => match st.held {
                    Some(h) if h + 1 < HOLD_WINDOWS => st.held = Some(h + 1),
                    _ => {
                        st.held = None;
                        let (grown, on_trial) = self.grown(st, now);
                        st.trial = on_trial.then_some((st.limit, rate));
                        st.limit = grown.min(st.max);
                    }
                },
            }
        }
        if st.limit == before {
            st.window.clear();
            st.window_peak = st.in_flight;
            st.window_started = now;
        } else {
            Self::new_generation(st);
        }
    }

    /// The next limit to try, and whether it is on trial. For a minute
    /// after the endpoint throttled, growth is not on trial (a rate limit
    /// is found by its SlowDowns, not by throughput): back to 3/4 of the
    /// throttled limit by square roots, then AIMD's one per window.
    fn grown(&self, st: &State, now: Instant) -> (f64, bool) {
        match st.throttled_at {
            Some((at_limit, when)) if now.duration_since(when) < THROTTLE_MEMORY => {
                if st.limit >= at_limit * 0.75 {
                    (st.limit + 1.0, false)
                } else {
                    (st.limit + st.limit.sqrt(), false)
                }
            }
            _ if st.slow_start => (st.limit * 2.0, st.limit >= TRIAL_FROM),
            _ => (st.limit + st.limit.sqrt(), st.limit >= TRIAL_FROM),
        }
    }

    /// The limit changed: requests admitted so far judged the old one.
    fn new_generation(st: &mut State) {
        st.generation += 1;
        st.window.clear();
        st.window_peak = st.in_flight;
        st.window_started = Instant::now();
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
        st.trial = None;
        st.held = None;
        st.limit = (st.limit / 2.0).max(self.min);
        Self::new_generation(&mut st);
        true
    }

    /// Moves the ceiling to `max` (never below the minimum): the limit is
    /// cut to it at once, or may grow up to it again.
    pub fn set_max(&self, max: usize) {
        let mut st = self.lock();
        st.max = (max as f64).max(self.min);
        if st.limit > st.max {
            st.limit = st.max;
            Self::new_generation(&mut st);
        }
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

/// The throughput factor that growing from `from` to `to` must bring.
fn min_gain(from: f64, to: f64) -> f64 {
    1.0 + GAIN_SHARE * (to / from - 1.0).max(0.0)
}

#[cfg(test)]
mod tests;
