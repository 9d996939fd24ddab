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
pub struct StopSignal(AtomicU8);

const NONE: u8 = 0;
const CANCELLED: u8 = 1;
const INTERRUPTED: u8 = 2;

impl StopSignal {
    /// Cancels; wins over a later interruption.
    pub fn cancel(&self) {
        self.0.store(CANCELLED, Ordering::SeqCst);
    }

    /// Interrupts, unless already cancelled.
    pub fn interrupt(&self) {
        let _ = self
            .0
            .compare_exchange(NONE, INTERRUPTED, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            CANCELLED => Some(StopReason::Cancelled),
            INTERRUPTED => Some(StopReason::Interrupted),
            _ => None,
        }
    }

    pub fn is_set(&self) -> bool {
        self.reason().is_some()
    }
}
