//! Warms on their way to a round: submitted on this replica, their
//! creation not yet written to the log, so not yet queued where a round's
//! leader can be joined. A job array's burst of creations waits in the
//! index's queue for seconds; a round that begins listing while they are
//! still on their way leaves them a whole round to wait, and a listing
//! more (the 1,000-launcher herd ran five or six rounds per replica where
//! two do). The next round's leader waits for the warms it covers that
//! were on their way when the round before it ended, a bounded while:
//! only warms already submitted, so a steady stream of arrivals cannot
//! hold a round back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use expresscache::WarmSpec;
use tokio::sync::Notify;

use super::round::covers;

/// How long a round waits at most for the warms on their way to it: an
/// index that takes longer to create a warm is in trouble, and the round
/// goes on without them.
pub(super) const GATHER_AT_MOST: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(super) struct Arrivals {
    on_the_way: Mutex<HashMap<String, WarmSpec>>,
    arrived: Notify,
}

/// A warm on its way; dropped before [`keep`](Self::keep), it never
/// arrives (its submission failed or attached to another warm).
pub(super) struct OnTheWay<'a> {
    arrivals: &'a Arrivals,
    id: String,
    kept: bool,
}

impl OnTheWay<'_> {
    /// The warm was created: it stays on its way until it chose its role
    /// ([`Arrivals::arrived`]).
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for OnTheWay<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.arrivals.arrived(&self.id);
        }
    }
}

impl Arrivals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WarmSpec>> {
        self.on_the_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Warm `id`, of `spec`, is on its way.
    pub(super) fn expect(&self, id: &str, spec: &WarmSpec) -> OnTheWay<'_> {
        self.lock().insert(id.to_owned(), spec.clone());
        OnTheWay {
            arrivals: self,
            id: id.to_owned(),
            kept: false,
        }
    }

    /// Warm `id` chose its role (or ended): no round waits for it.
    pub(super) fn arrived(&self, id: &str) {
        if self.lock().remove(id).is_some() {
            self.arrived.notify_waiters();
        }
    }

    /// Whether a warm other than `id` whose work a warm of `leader` does
    /// is on its way.
    pub(super) fn others_covered(&self, id: &str, leader: &WarmSpec) -> bool {
        self.lock()
            .iter()
            .any(|(other, spec)| other != id && covers(leader, spec))
    }

    /// Waits until every warm on its way now whose work a warm of `leader`
    /// does has arrived.
    pub(super) async fn gather(&self, leader: &WarmSpec) {
        let awaited: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, spec)| covers(leader, spec))
            .map(|(id, _)| id.clone())
            .collect();
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            // Registered before looking: an arrival between the look and
            // the wait is not missed.
            notified.as_mut().enable();
            {
                let on_the_way = self.lock();
                if !awaited.iter().any(|id| on_the_way.contains_key(id)) {
                    return;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefix: &str) -> WarmSpec {
        WarmSpec {
            prefixes: vec![expresscache::Prefix::parse(prefix).unwrap()],
            ..crate::fleet::tests::unfinished("x", 0).request
        }
    }

    #[tokio::test]
    async fn a_round_waits_for_the_warms_it_covers_that_are_on_their_way_then_for_none() {
        let arrivals = Arrivals::default();
        let mine = arrivals.expect("a", &spec("d/"));
        let other_data = arrivals.expect("b", &spec("e/"));
        let failed = arrivals.expect("c", &spec("d/"));
        mine.keep();
        other_data.keep();
        drop(failed);
        let leader = spec("d/");
        let gathered = arrivals.gather(&leader);
        tokio::pin!(gathered);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut gathered)
                .await
                .is_err(),
            "\"a\" is on its way"
        );
        // Submitted after the gathering began: not waited for.
        arrivals.expect("late", &spec("d/")).keep();
        arrivals.arrived("a");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut gathered)
                .await
                .is_ok(),
            "waits neither for other data nor for a later arrival"
        );
    }
}
