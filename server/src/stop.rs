//! Asking a running warm to stop: cancelled by a user (it ends CANCELLED) or
//! interrupted by a shutdown (it stays unfinished and resumes on restart).
//! Either way no new copy starts and copies in flight finish and are
//! recorded, so the index never claims an object that is not there.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::clock::{Clock, Millis};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Interrupted,
}

#[derive(Debug, Default)]
pub struct StopSignal {
    state: AtomicU8,
    /// Wakes whoever waits for a stop (a warm queued for a slot).
    set: tokio::sync::Notify,
    /// Until when the warm may send requests: its run's deadline, as last
    /// granted. Past it another replica may have taken the warm over; a
    /// process that wakes from a pause past it must not send another
    /// request, whichever of its tasks runs first (the run keeper, which
    /// would stop the warm, or a copy).
    until: std::sync::Mutex<Option<Deadline>>,
    /// The deadline was seen lapsed: final, whatever is granted later. A
    /// part of the warm that stopped at the lapse (a copy refused, a
    /// listing cut short) did not do its work, so the attempt must end as
    /// lost (handed on, nothing recorded), even if a renewal answered late
    /// moves the deadline on.
    lapsed_seen: AtomicBool,
}

/// A run's deadline on two clocks. The wall clock is the one other
/// replicas judge the run by: a step forward, or a host that slept (the
/// monotonic clock stops while a machine is suspended), counts there. The
/// monotonic clock keeps a wall clock set back from extending the run.
/// Past either, the deadline lapsed: stopping early only hands the warm on.
#[derive(Debug)]
struct Deadline {
    wall: Millis,
    monotonic: Instant,
    clock: Arc<dyn Clock>,
}

const NONE: u8 = 0;
const CANCELLED: u8 = 1;
const INTERRUPTED: u8 = 2;

impl StopSignal {
    /// Cancels; wins over a later interruption.
    pub fn cancel(&self) {
        self.state.store(CANCELLED, Ordering::SeqCst);
        self.set.notify_waiters();
    }

    /// Interrupts, unless already cancelled.
    pub fn interrupt(&self) {
        let _ = self
            .state
            .compare_exchange(NONE, INTERRUPTED, Ordering::SeqCst, Ordering::SeqCst);
        self.set.notify_waiters();
    }

    /// Resolves once a stop is asked for (at once if it already was).
    pub async fn stopped(&self) {
        loop {
            let notified = self.set.notified();
            tokio::pin!(notified);
            // Registered before the check, so a stop between the check
            // and the await still wakes this.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }

    pub fn reason(&self) -> Option<StopReason> {
        match self.state.load(Ordering::SeqCst) {
            CANCELLED => Some(StopReason::Cancelled),
            INTERRUPTED => Some(StopReason::Interrupted),
            _ => None,
        }
    }

    pub fn is_set(&self) -> bool {
        self.reason().is_some()
    }

    /// Lets requests be sent until `until` (the run's deadline, in
    /// `clock`'s milliseconds).
    pub fn hold_until(&self, until: Millis, clock: &Arc<dyn Clock>) {
        let left = Duration::from_millis(until.saturating_sub(clock.now()).max(0).unsigned_abs());
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Deadline {
            wall: until,
            monotonic: Instant::now() + left,
            clock: Arc::clone(clock),
        });
    }

    /// How long until the deadline last set by
    /// [`hold_until`](Self::hold_until) passes, by the earlier of its two
    /// clocks (a wall clock set back does not make it longer); zero if
    /// none was set or it passed.
    pub fn time_left(&self) -> Duration {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(Duration::ZERO, |d| {
                let wall = d.wall.saturating_sub(d.clock.now()).max(0).unsigned_abs();
                Duration::from_millis(wall).min(d.monotonic.saturating_duration_since(Instant::now()))
            })
    }

    /// Whether the deadline set by [`hold_until`](Self::hold_until) passed,
    /// by either clock.
    /// Once it returned true it stays true (see `lapsed_seen`).
    pub fn lapsed(&self) -> bool {
        if self.lapsed_seen.load(Ordering::SeqCst) {
            return true;
        }
        let lapsed = self
            .until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|d| Instant::now() >= d.monotonic || d.clock.now() >= d.wall);
        if lapsed {
            self.lapsed_seen.store(true, Ordering::SeqCst);
        }
        lapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    fn held(clock: &Arc<ManualClock>, until: Millis) -> StopSignal {
        let stop = StopSignal::default();
        let clock: Arc<dyn Clock> = Arc::clone(clock) as Arc<dyn Clock>;
        stop.hold_until(until, &clock);
        stop
    }

    #[test]
    fn a_deadline_lapses_when_the_wall_clock_jumps_past_it() {
        // A host that slept, or an NTP step: the monotonic clock has not
        // moved, the wall clock other replicas judge the run by has.
        let clock = Arc::new(ManualClock::new(1_000_000));
        let stop = held(&clock, 1_010_000);
        assert!(!stop.lapsed());
        clock.advance(10_000);
        assert!(stop.lapsed(), "lapsed by the wall clock");
    }

    #[test]
    fn a_wall_clock_set_back_does_not_extend_a_deadline() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        // Due at once on the monotonic clock; the wall clock then set back
        // far before the deadline (not asked before: a lapse once seen is
        // final, which would prove nothing here).
        let stop = held(&clock, 1_000_000);
        clock.advance(-1_000_000);
        assert!(stop.lapsed(), "still lapsed by the monotonic clock");
    }

    #[test]
    fn no_deadline_never_lapses() {
        assert!(!StopSignal::default().lapsed());
    }

    #[test]
    fn a_lapse_once_seen_is_final_even_if_a_late_renewal_moves_the_deadline() {
        let clock = Arc::new(ManualClock::new(1_000));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let stop = StopSignal::default();
        stop.hold_until(2_000, &dyn_clock);
        clock.advance(1_500);
        assert!(stop.lapsed(), "past the deadline");
        // A renewal sent before the lapse answers now, granting more time.
        stop.hold_until(10_000, &dyn_clock);
        assert!(
            stop.lapsed(),
            "what stopped at the lapse did not do its work"
        );
    }
}
