//! How many warms run at once on this replica. A warm past the limit waits
//! in phase QUEUED (its run lease still renewed, so no other replica takes
//! it over meanwhile, and a cancel or shutdown still reaches it) until a
//! running warm ends. A new warm that would queue behind a full queue is
//! refused with a retry hint instead: waiting in the caller's own retry
//! loop costs the server nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stop::StopSignal;

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    queued: AtomicUsize,
    max_queued: usize,
}

/// A slot among the running warms, held until dropped.
#[derive(Debug)]
pub struct RunSlot {
    _permit: OwnedSemaphorePermit,
    running: Arc<AtomicUsize>,
}

impl RunSlot {
    fn new(permit: OwnedSemaphorePermit, running: &Arc<AtomicUsize>) -> Self {
        let n = running.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::metrics::OPERATIONS_RUNNING).set(n as f64);
        Self {
            _permit: permit,
            running: Arc::clone(running),
        }
    }
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let n = self.running.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(crate::metrics::OPERATIONS_RUNNING).set(n as f64);
    }
}

impl Admission {
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_running.max(1))),
            running: Arc::default(),
            queued: AtomicUsize::new(0),
            max_queued,
        }
    }

    /// Whether a new warm may be accepted now: a slot is free, or the
    /// queue has room.
    pub fn has_room(&self) -> bool {
        self.slots.available_permits() > 0 || self.queued.load(Ordering::Relaxed) < self.max_queued
    }

    /// Warms running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Warms waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Waits for a slot; `None` if `stop` is set first (the warm was
    /// cancelled or interrupted while queued).
    pub async fn slot(&self, stop: &StopSignal) -> Option<RunSlot> {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(RunSlot::new(p, &self.running));
        }
        let _waiting = Waiting::enter(&self.queued);
        tokio::select! {
            permit = Arc::clone(&self.slots).acquire_owned() => {
                permit.ok().map(|p| RunSlot::new(p, &self.running))
            }
            () = stop.stopped() => None,
        }
    }
}

/// Counted among the queued (and in the gauge) until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(queued: &'a AtomicUsize) -> Self {
        let n = queued.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::metrics::OPERATIONS_QUEUED).set(n as f64);
        Self(queued)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(crate::metrics::OPERATIONS_QUEUED).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_warm_past_the_limit_waits_until_a_slot_frees() {
        let a = Arc::new(Admission::new(1, 1));
        let stop = StopSignal::default();
        let first = a.slot(&stop).await.expect("a free slot");
        assert!(a.has_room(), "the queue has room");
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.slot(&StopSignal::default()).await.is_some() })
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!a.has_room(), "one running, one queued: full");
        drop(first);
        assert!(waiter.await.unwrap(), "the queued warm got the slot");
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn a_warm_stopped_while_queued_leaves_the_queue() {
        let a = Arc::new(Admission::new(1, 4));
        let _running = a.slot(&StopSignal::default()).await.expect("a free slot");
        let stop = Arc::new(StopSignal::default());
        let waiter = {
            let (a, stop) = (Arc::clone(&a), Arc::clone(&stop));
            tokio::spawn(async move { a.slot(&stop).await.is_none() })
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        stop.cancel();
        assert!(waiter.await.unwrap(), "no slot for a cancelled warm");
        assert_eq!(a.queued(), 0);
    }
}
