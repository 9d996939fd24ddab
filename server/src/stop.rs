//! Asking a running warm to stop: cancelled by a user (it ends CANCELLED) or
//! interrupted by a shutdown (it stays unfinished and resumes on restart).
//! Either way no new copy starts and copies in flight finish and are
//! recorded, so the index never claims an object that is not there.

use std::sync::atomic::{AtomicU8, Ordering};

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
    until: std::sync::Mutex<Option<std::time::Instant>>,
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

    /// Lets requests be sent until `until` (the run's deadline).
    pub fn hold_until(&self, until: std::time::Instant) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    /// Whether the deadline set by [`hold_until`](Self::hold_until) passed.
    pub fn lapsed(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| std::time::Instant::now() >= until)
    }
}
