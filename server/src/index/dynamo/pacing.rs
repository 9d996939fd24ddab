//! How many requests the index has in flight: an adaptive limit (the copy
//! engine's, [`AdaptiveLimit`]) that a request waits for a slot of, in
//! arrival order, unless it is [`Lane::Urgent`]; and of those slots,
//! bookkeeping ([`Lane::Bulk`]) takes at most half, and never more than
//! [`BULK_IN_FLIGHT`], so the work a job array's burst waits for always
//! finds room beside it, also once throttling cut the limit low.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::limiter::{AdaptiveLimit, Slot};
use crate::index::lane::Lane;

/// Bookkeeping requests in flight at most, whatever the limit. At
/// DynamoDB's latency this is still over a thousand a second.
pub(super) const BULK_IN_FLIGHT: usize = 16;

/// Where the limit starts (slow start doubles it per round trip while
/// the tables keep up).
const INITIAL_IN_FLIGHT: usize = 64;
/// The least it goes down to, throttled again and again.
const MIN_IN_FLIGHT: usize = 8;

#[derive(Debug)]
pub(super) struct Pacing {
    limit: Arc<AdaptiveLimit>,
    bulk_in_flight: AtomicUsize,
    bulk_freed: Notify,
}

/// A request let through; dropping it frees what it held.
pub(super) struct Admitted<'a> {
    slot: Option<Slot>,
    _bulk: Option<BulkTurn<'a>>,
}

/// One of the bookkeeping requests in flight.
struct BulkTurn<'a>(&'a Pacing);

impl Drop for BulkTurn<'_> {
    fn drop(&mut self) {
        self.0.bulk_in_flight.fetch_sub(1, Ordering::SeqCst);
        // Every waiter looks again: one woken alone might have been
        // dropped meanwhile (a caller's timeout), leaving room unused.
        self.0.bulk_freed.notify_waiters();
    }
}

impl Pacing {
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            limit: AdaptiveLimit::new(INITIAL_IN_FLIGHT, MIN_IN_FLIGHT, max_in_flight),
            bulk_in_flight: AtomicUsize::new(0),
            bulk_freed: Notify::new(),
        }
    }

    /// Waits until a request in `lane` may be sent.
    pub(super) async fn admit(&self, lane: Lane) -> Admitted<'_> {
        let bulk = match lane {
            Lane::Bulk => Some(self.bulk_turn().await),
            Lane::Work | Lane::Urgent => None,
        };
        let slot = match lane {
            Lane::Urgent => None,
            Lane::Work | Lane::Bulk => Some(self.limit.acquire().await),
        };
        Admitted { slot, _bulk: bulk }
    }

    /// What the request let through by `admitted` met: its latency moves
    /// the limit, a busy answer (throttled, 5xx, unanswered) halves it.
    pub(super) fn answered(&self, admitted: Admitted<'_>, latency: Duration, busy: bool) {
        if let Some(slot) = &admitted.slot {
            if busy {
                self.limit.on_throttle();
            } else {
                self.limit.on_success(slot, latency, 0);
            }
            metrics::gauge!(crate::metrics::INDEX_CONCURRENCY_LIMIT).set(self.limit.limit() as f64);
        }
    }

    /// Bookkeeping requests may take half the limit, at most
    /// [`BULK_IN_FLIGHT`], at least one.
    pub(super) fn bulk_share(&self) -> usize {
        (self.limit.limit() / 2).clamp(1, BULK_IN_FLIGHT)
    }

    async fn bulk_turn(&self) -> BulkTurn<'_> {
        loop {
            let freed = self.bulk_freed.notified();
            tokio::pin!(freed);
            // Registered before the look, so a turn freed between the
            // look and the wait still wakes this one.
            freed.as_mut().enable();
            let mut n = self.bulk_in_flight.load(Ordering::SeqCst);
            while n < self.bulk_share() {
                match self.bulk_in_flight.compare_exchange(
                    n,
                    n + 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => return BulkTurn(self),
                    Err(now) => n = now,
                }
            }
            freed.await;
        }
    }

    #[cfg(test)]
    fn cut(&self) {
        self.limit.on_throttle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Throttled down to 8, the limit leaves work 4 slots: bookkeeping
    /// takes half, however many of it wait.
    #[tokio::test]
    async fn bookkeeping_takes_at_most_half_of_a_cut_limit() {
        let pacing = Pacing::new(1024);
        for _ in 0..3 {
            pacing.cut();
            tokio::time::sleep(Duration::from_millis(250)).await; // the cool-down
        }
        assert_eq!(pacing.limit.limit(), 8);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pacing.admit(Lane::Bulk).await);
        }
        let more = tokio::time::timeout(Duration::from_millis(50), pacing.admit(Lane::Bulk)).await;
        assert!(more.is_err(), "a fifth bookkeeping request waits");
        for _ in 0..4 {
            let work = tokio::time::timeout(Duration::from_millis(50), pacing.admit(Lane::Work));
            held.push(work.await.expect("work finds room beside it"));
        }
        // A turn freed lets the next bookkeeping request through.
        held.remove(0);
        let next = tokio::time::timeout(Duration::from_millis(50), pacing.admit(Lane::Bulk)).await;
        assert!(next.is_ok(), "the freed turn is taken");
    }
}
