//! How many warms run at once on this replica. A warm past the limit waits
//! in phase QUEUED (its run lease still renewed, so no other replica takes
//! it over meanwhile, and a cancel or shutdown still reaches it) until a
//! running warm ends. A new warm that would queue behind a full queue is
//! refused with a retry hint instead: waiting in the caller's own retry
//! loop costs the server nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stop::StopSignal;

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    queued: AtomicUsize,
    /// Warms accepted and not ended: running, queued, or being submitted.
    /// Taken before a submission's first await, so a burst of concurrent
    /// submissions cannot all pass one check.
    accepted: AtomicUsize,
    max_accepted: usize,
    /// The same, per authenticated principal.
    per_principal: Mutex<HashMap<String, usize>>,
    /// 0: no limit per principal.
    max_per_principal: usize,
}

/// Why a new warm is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Running and queued slots are all taken.
    Full { running: usize, queued: usize },
    /// The principal has its maximum of warms in progress.
    Principal { in_progress: usize },
}

/// A warm's place among the accepted, given back when dropped (the warm
/// ended, or its submission did not start one).
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    owner: Option<String>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.accepted.fetch_sub(1, Ordering::SeqCst);
        if let Some(owner) = &self.owner {
            let mut map = self
                .admission
                .per_principal
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    map.remove(owner);
                }
            }
        }
    }
}

/// A slot among the running warms, held until dropped.
#[derive(Debug)]
pub struct RunSlot<'a> {
    _permit: OwnedSemaphorePermit,
    running: &'a AtomicUsize,
}

impl<'a> RunSlot<'a> {
    fn new(permit: OwnedSemaphorePermit, running: &'a AtomicUsize) -> Self {
        running.fetch_add(1, Ordering::Relaxed);
        // Increments, not sets: concurrent updates cannot leave a stale
        // value behind.
        metrics::gauge!(crate::metrics::OPERATIONS_RUNNING).increment(1.0);
        Self {
            _permit: permit,
            running,
        }
    }
}

impl Drop for RunSlot<'_> {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::OPERATIONS_RUNNING).decrement(1.0);
    }
}

impl Admission {
    pub fn new(max_running: usize, max_queued: usize, max_per_principal: usize) -> Self {
        let max_running = max_running.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max_running)),
            running: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            max_accepted: max_running.saturating_add(max_queued),
            per_principal: Mutex::default(),
            max_per_principal,
        }
    }

    /// Accepts a new warm of `owner`, or says why not.
    pub fn admit(self: &Arc<Self>, owner: Option<&str>) -> Result<Ticket, Refusal> {
        let taken = self
            .accepted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_accepted).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refusal::Full {
                running: self.running(),
                queued: self.queued(),
            });
        }
        if let Some(owner) = owner.filter(|_| self.max_per_principal > 0) {
            let mut map = self.per_principal.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(owner.to_owned()).or_default();
            if *n >= self.max_per_principal {
                let in_progress = *n;
                drop(map);
                self.accepted.fetch_sub(1, Ordering::SeqCst);
                return Err(Refusal::Principal { in_progress });
            }
            *n += 1;
        }
        Ok(Ticket {
            admission: Arc::clone(self),
            owner: owner
                .filter(|_| self.max_per_principal > 0)
                .map(str::to_owned),
        })
    }

    /// Accepts a warm taken over from a replica that died: it was accepted
    /// there, so it is never refused here (it may wait for a slot).
    pub fn admit_resumed(self: &Arc<Self>, owner: Option<&str>) -> Ticket {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        let owner = owner.filter(|_| self.max_per_principal > 0);
        if let Some(o) = owner {
            *self
                .per_principal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(o.to_owned())
                .or_default() += 1;
        }
        Ticket {
            admission: Arc::clone(self),
            owner: owner.map(str::to_owned),
        }
    }

    /// Warms running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Warms waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A slot if one is free now.
    pub fn try_slot(&self) -> Option<RunSlot<'_>> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .ok()
            .map(|p| RunSlot::new(p, &self.running))
    }

    /// Waits for a slot; `None` if `stop` is set first (the warm was
    /// cancelled or interrupted while queued).
    pub async fn slot(&self, stop: &StopSignal) -> Option<RunSlot<'_>> {
        if let Some(slot) = self.try_slot() {
            return Some(slot);
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
        queued.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::OPERATIONS_QUEUED).increment(1.0);
        Self(queued)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::OPERATIONS_QUEUED).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_submissions_takes_places_before_any_starts() {
        let a = Arc::new(Admission::new(1, 1, 2));
        let t1 = a.admit(Some("team-a")).expect("room");
        let t2 = a.admit(Some("team-b")).expect("room");
        // Two accepted (one to run, one to queue): full, though neither
        // has started yet.
        assert!(matches!(a.admit(Some("team-c")), Err(Refusal::Full { .. })));
        drop(t2);
        let t3 = a.admit(Some("team-a")).expect("room again");
        drop(t1);
        drop(t3);
        // Per principal: two of team-a at most.
        let a = Arc::new(Admission::new(10, 10, 2));
        let held = [
            a.admit(Some("team-a")).unwrap(),
            a.admit(Some("team-a")).unwrap(),
        ];
        assert_eq!(
            a.admit(Some("team-a")).map(|_| ()),
            Err(Refusal::Principal { in_progress: 2 })
        );
        assert!(a.admit(Some("team-b")).is_ok(), "others are not held up");
        assert!(
            a.admit(None).is_ok(),
            "anonymous callers have no per-principal limit"
        );
        drop(held);
        assert!(a.admit(Some("team-a")).is_ok());
    }

    #[tokio::test]
    async fn a_warm_past_the_limit_waits_until_a_slot_frees() {
        let a = Arc::new(Admission::new(1, 1, 0));
        let stop = StopSignal::default();
        let first = a.slot(&stop).await.expect("a free slot");
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.slot(&StopSignal::default()).await.is_some() })
        };
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert!(waiter.await.unwrap(), "the queued warm got the slot");
        assert_eq!(a.queued(), 0);
    }

    #[tokio::test]
    async fn a_warm_stopped_while_queued_leaves_the_queue() {
        let a = Arc::new(Admission::new(1, 4, 0));
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
