//! Adaptive concurrency for one endpoint: it finds how many requests may
//! be in flight by watching their latency, as Netflix's gradient limiter
//! does, and backs off on throttling as AIMD does. The copy engine keeps
//! one per destination bucket; a DynamoDB index keeps one for its tables
//! (`index::dynamo`), so a burst queues in the replica, where a caller
//! that gives up costs nothing, rather than in the table.
//!
//! What bounds a copy's rate depends on where the service runs: on a
//! loopback endpoint the CPUs of both ends, on AWS the round trip (tens of
//! milliseconds, so thousands of requests/s need hundreds in flight). A
//! fixed limit is wrong for one or the other; so the limit is measured:
//!
//! - **Windows.** Successful requests are collected in windows of about
//!   one limit's worth (at least [`MIN_WINDOW`]), roughly one round trip
//!   each, one window for small requests (up to [`SAMPLE_MAX_BYTES`]) and
//!   one for large. Only requests admitted since the limit last changed
//!   count, so a window judges the limit it ran under. A small window's
//!   latency is its median (a few slow requests do not look like a queue)
//!   and its throughput is requests per second. A large copy's latency
//!   measures its bytes, not a queue, so a large window is judged by its
//!   throughput alone, in bytes per second: a warm of 10 MB or 1 GB
//!   objects grows its limit while bytes/s rise with it and stops where
//!   they no longer do (the bandwidth S3 gives the bucket), as a warm of
//!   small objects stops where requests/s do.
//! - **Baseline.** A moving average of window latencies (each window moves
//!   it [`BASELINE_WEIGHT`] of the way, a lower one half the way): what is
//!   normal lately. A queue that builds slowly as the limit grows is
//!   tolerated; only a jump shows congestion. (A minimum instead, as TCP
//!   Vegas keeps, starves a loopback endpoint, whose latency grows with
//!   every request in flight long before its throughput stops growing.)
//! - **Growth, while throughput rises.** While a small window's latency
//!   stays within [`TOLERANCE`] (2x) of the baseline (a large window: always), the limit grows: doubling
//!   per window at first (slow start), then by its square root. Each
//!   growth is a trial: if the next window's throughput did not rise by
//!   at least [`GAIN_SHARE`] (half) of it, the extra requests only queued, so the
//!   growth is undone, slow start ends, and the limit holds for
//!   [`HOLD_WINDOWS`] windows before trying again (below [`TRIAL_FROM`],
//!   growth is not on trial). A growth is judged by the next window of
//!   its own size class, and none is tried while one is pending: in a mix,
//!   requests/s and bytes/s are each compared only with themselves. It
//!   grows only when the
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
//! the configured `--max-concurrency`, a hard ceiling. Requests are
//! admitted in the order they asked (a semaphore whose permits follow the
//! limit), so no stream of requests starves another: a large object's
//! parts and a warm's small copies each get their turn.

use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's monotonic clock: immune to wall-clock jumps, and paused with the
// runtime in tests.
use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where the limit starts: the old fixed default, which small endpoints
/// take; slow start reaches a thousand from it in four round trips.
pub const INITIAL_LIMIT: usize = 64;
/// Requests moving more than this feed the large window (throughput in
/// bytes/s), the rest the small one (latency, and requests/s).
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
    /// The slots the semaphore stands for now: the limit, rounded down.
    permits: usize,
    /// Slots to take back as requests end (a cut below what is in flight
    /// cannot take them at once).
    debt: usize,
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
    /// The windows of small and of large requests.
    windows: [Window; 2],
    /// Seconds: the small requests' usual latency lately.
    baseline: Option<f64>,
    /// The last growth, on trial.
    trial: Option<Trial>,
    /// Windows since the last growth was undone for bringing nothing;
    /// `None` when not holding.
    held: Option<u32>,
    /// The last window was slower than the tolerance: a second in a row
    /// cuts the limit (one alone may be a hiccup of the endpoint).
    slow_before: bool,
}

/// The size class of a request: which window it feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Size {
    Small = 0,
    Large = 1,
}

impl Size {
    fn of(bytes: u64) -> Self {
        if bytes > SAMPLE_MAX_BYTES {
            Self::Large
        } else {
            Self::Small
        }
    }
}

/// A growth of the limit that must prove itself.
#[derive(Debug)]
struct Trial {
    /// The limit before it, and the throughput at that limit.
    limit: f64,
    rate: f64,
    /// The class whose next window judges it.
    judge: Size,
    /// Windows of the other class ended meanwhile: if the judging class
    /// has gone quiet (its requests are done), the growth stands unjudged
    /// rather than blocking growth for good.
    waited: u32,
}

/// One window of successes of one size class.
#[derive(Debug)]
struct Window {
    /// Latencies (seconds); kept for small requests only.
    latencies: Vec<f64>,
    /// Successes and their bytes.
    count: usize,
    bytes: u64,
    /// Most requests in flight at once (of any size) during this window.
    peak: usize,
    /// When this window began (the limit's last change, or the previous
    /// window's end): its duration gives its throughput.
    started: Instant,
    /// It began at a change of the limit. For large copies such a window
    /// only fills the pipe: the requests admitted under the new limit start
    /// as the old ones end, so its first limit's worth of answers takes
    /// two copy times, and bytes/s measured over it would show no gain from
    /// any growth. It is let pass; the next one judges.
    filling: bool,
}

impl Window {
    fn new(in_flight: usize, filling: bool) -> Self {
        Self {
            latencies: Vec::new(),
            count: 0,
            bytes: 0,
            peak: in_flight,
            started: Instant::now(),
            filling,
        }
    }
}

#[derive(Debug)]
pub struct AdaptiveLimit {
    state: Mutex<State>,
    /// Admission, one permit per slot of the limit, in arrival order: a
    /// request that arrives while others wait queues behind them, so a
    /// stream of requests that re-admit themselves as they end (a warm's
    /// small copies, a large object's parts) cannot starve the others.
    permits: Arc<Semaphore>,
    min: f64,
    cool_down: Duration,
}

/// One admitted request; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<AdaptiveLimit>,
    permit: Option<OwnedSemaphorePermit>,
    /// The limit's generation when the request was admitted.
    generation: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.limit.lock();
        st.in_flight -= 1;
        if let Some(permit) = self.permit.take() {
            if st.debt > 0 {
                st.debt -= 1;
                permit.forget();
            }
        }
    }
}

impl AdaptiveLimit {
    pub fn new(initial: usize, min: usize, max: usize) -> Arc<Self> {
        // A ceiling below the floor (a small configured budget) wins.
        let max = max.max(1);
        let (min, max) = (min.clamp(1, max) as f64, max as f64);
        let limit = (initial as f64).clamp(min, max);
        let permits = limit.floor() as usize;
        Arc::new(Self {
            state: Mutex::new(State {
                limit,
                max,
                in_flight: 0,
                permits,
                debt: 0,
                last_decrease: None,
                slow_start: true,
                throttled_at: None,
                generation: 0,
                // The first large window only fills the pipe too (and spans the
                // listing before the first copy).
                windows: [Window::new(0, false), Window::new(0, true)],
                baseline: None,
                trial: None,
                held: None,
                slow_before: false,
            }),
            permits: Arc::new(Semaphore::new(permits)),
            min,
            cool_down: Duration::from_millis(200),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until fewer than `limit` requests are in flight, behind every
    /// request that waited before.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the limiter's semaphore is never closed");
        let mut st = self.lock();
        st.in_flight += 1;
        let now = st.in_flight;
        for w in &mut st.windows {
            w.peak = w.peak.max(now);
        }
        Slot {
            limit: Arc::clone(self),
            permit: Some(permit),
            generation: st.generation,
        }
    }

    /// Gives the semaphore as many permits as the limit has slots: adds
    /// them when it grew (first cancelling any debt), takes back those
    /// free when it shrank and owes the rest until requests end.
    fn sync_permits(&self, st: &mut State) {
        let want = st.limit.floor().max(1.0) as usize;
        if want > st.permits {
            let more = want - st.permits;
            let paid = more.min(st.debt);
            st.debt -= paid;
            self.permits.add_permits(more - paid);
        } else if want < st.permits {
            let fewer = st.permits - want;
            let taken = self.permits.forget_permits(fewer);
            st.debt += fewer - taken;
        }
        st.permits = want;
    }

    /// The request holding `slot` succeeded after `latency`, moving
    /// `bytes`; at the end of a window, moves the limit.
    pub fn on_success(&self, slot: &Slot, latency: Duration, bytes: u64) {
        {
            let mut st = self.lock();
            if slot.generation != st.generation {
                return;
            }
            let size = Size::of(bytes);
            let full = MIN_WINDOW.max(st.limit as usize);
            let in_flight = st.in_flight;
            let w = &mut st.windows[size as usize];
            w.count += 1;
            w.bytes += bytes;
            if size == Size::Small {
                w.latencies.push(latency.as_secs_f64());
            }
            if w.count < full {
                return;
            }
            if size == Size::Large && w.filling {
                *w = Window::new(in_flight, false);
                return;
            }
            self.end_window(&mut st, size);
        }
    }

    fn end_window(&self, st: &mut State, size: Size) {
        let now = Instant::now();
        let before = st.limit;
        let w = &mut st.windows[size as usize];
        let seconds = now.duration_since(w.started).as_secs_f64().max(1e-6);
        let used = w.peak as f64 >= st.limit / 2.0;
        let (rate, slow) = match size {
            Size::Small => {
                let rate = w.count as f64 / seconds;
                let mid = w.latencies.len() / 2;
                let latency = *w.latencies.select_nth_unstable_by(mid, f64::total_cmp).1;
                (rate, self.judge_latency(st, latency))
            }
            // A large copy's latency is its bytes over its bandwidth: only
            // the throughput tells whether more in flight brings more.
            Size::Large => (w.bytes as f64 / seconds, false),
        };
        if slow {
            st.trial = None;
        } else if used {
            match &mut st.trial {
                // Judged by the other class's window: wait for it a while.
                Some(t) if t.judge != size && t.waited < 2 => t.waited += 1,
                // That class went quiet: the growth was never judged, so it
                // is undone (standing, it would ratchet the limit up, one
                // unjudged growth per hold), and this class may try its own.
                Some(t) if t.judge != size => {
                    st.limit = t.limit.min(st.max);
                    st.trial = None;
                }
                // The last growth brought too little throughput: a queue,
                // not capacity. Undo it and hold for a while.
                Some(t) if rate < t.rate * min_gain(t.limit, st.limit) => {
                    st.limit = t.limit.min(st.max);
                    st.trial = None;
                    st.slow_start = false;
                    st.held = Some(0);
                }
                _ => match st.held {
                    Some(h) if h + 1 < HOLD_WINDOWS => st.held = Some(h + 1),
                    _ => {
                        st.held = None;
                        let (grown, on_trial) = self.grown(st, now);
                        st.trial = on_trial.then_some(Trial {
                            limit: st.limit,
                            rate,
                            judge: size,
                            waited: 0,
                        });
                        st.limit = grown.min(st.max);
                    }
                },
            }
        }
        if st.limit == before {
            st.windows[size as usize] = Window::new(st.in_flight, false);
        } else {
            self.new_generation(st);
        }
    }

    /// Moves the baseline toward a small window's `latency` and cuts the
    /// limit on the second slow window in a row; returns whether this one
    /// was slow.
    fn judge_latency(&self, st: &mut State, latency: f64) -> bool {
        let baseline = st.baseline.unwrap_or(latency);
        // Lower latency is trusted faster than higher: a queue draining is
        // news, one building up is what the baseline must not absorb.
        let weight = if latency < baseline {
            0.5
        } else {
            BASELINE_WEIGHT
        };
        st.baseline = Some(baseline + weight * (latency - baseline));
        let slow = latency > baseline * TOLERANCE;
        let was_slow = std::mem::replace(&mut st.slow_before, slow);
        if slow && was_slow {
            st.slow_start = false;
            let gradient = (baseline * TOLERANCE / latency).max(0.5);
            let floor = LATENCY_FLOOR.min(st.limit).max(self.min);
            st.limit = (st.limit * gradient).max(floor);
        }
        slow
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

    /// The limit changed: requests admitted so far judged the old one, and
    /// the semaphore follows it.
    fn new_generation(&self, st: &mut State) {
        self.sync_permits(st);
        st.generation += 1;
        st.windows = [
            Window::new(st.in_flight, true),
            Window::new(st.in_flight, true),
        ];
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
        self.new_generation(&mut st);
        true
    }

    /// Moves the ceiling to `max` (never below the minimum): the limit is
    /// cut to it at once, or may grow up to it again.
    pub fn set_max(&self, max: usize) {
        let mut st = self.lock();
        st.max = (max as f64).max(self.min);
        if st.limit > st.max {
            st.limit = st.max;
            // A growth on trial from above the new ceiling must not be
            // undone back over it.
            st.trial = None;
            st.held = None;
            self.new_generation(&mut st);
        }
    }

    /// The current ceiling.
    #[cfg(any(test, feature = "testing"))]
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
