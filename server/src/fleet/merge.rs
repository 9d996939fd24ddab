//! Rounds shared across replicas. A job array spread over a fleet arrives
//! on every replica at once: each replica's first warm would list, and so
//! would each one's next round, one listing of the data per replica per
//! round (the 1,000-launcher herd on three replicas listed 18 times where
//! one warm lists 3). A leader that waits, offered to the fleet (for the
//! round under way, for a running slot, or, as the first of a burst, for
//! [`JOIN_WINDOW`]), looks meanwhile for an older offered warm of the same
//! request on another replica, and joins it: of the offered leaders of one
//! request the oldest (by creation time, then id, as the log records them,
//! so every replica orders them alike whatever its clock) lists, and the
//! rest follow it. Joins go only from younger to older, so no two wait on
//! each other. A leader that waits unoffered (behind a round its replica
//! follows: only a warm whose wait ends by itself is offered) joins the
//! oldest offered warm of its request, older or younger: nothing joins it
//! through the log, so that closes no cycle either.
//!
//! The warms that joined the younger leader (here, or from another replica
//! through its offer) arrived before it joins the older one; the older one
//! lists after that, so what it lists is current for all of them. To keep
//! it so, the younger leader first stops being joinable (here: no longer
//! leading; elsewhere: its offer withdrawn, recorded), and only then
//! confirms with a consistent read that the older one is still offered.

use std::future::Future;
use std::time::Duration;

use expresscache::WarmSpec;

use super::round::{same_request, Attempt, Followed};
use super::remote::{joinable_elsewhere, LOOKUP_REUSE};
use super::Operations;
use crate::core::operation::OperationRecord;
use crate::index::lane::{in_lane, Lane};
use crate::warm::WarmError;

/// How long the first warm of a burst waits, offered, for an older warm
/// of the same request on another replica: two lookups of the offered
/// warms (one a second), after the others' offers are written.
pub(super) const JOIN_WINDOW: Duration = Duration::from_secs(2);

/// How long the first warm of a burst waits offered, its offer having
/// taken `offer_took` to write: at least `at_least` ([`JOIN_WINDOW`]), and
/// long enough, on an index that answers slowly (a job array's burst
/// shares it), for a younger warm to look the offer up once more and
/// then withdraw its own and confirm this one (about as long as two
/// writes: the offer was two).
pub(super) fn window(at_least: Duration, offer_took: Duration) -> Duration {
    at_least.max(LOOKUP_REUSE + offer_took * 2)
}

/// How an offered leader's wait ended.
pub(super) enum Waited<T> {
    /// What it waited for came.
    Done(T),
    /// It joined an older warm of the same request on another replica
    /// instead; how following it ended.
    Joined(Followed),
}

impl Operations {
    /// Whether warm `id` of `spec` is the first of a burst here: other
    /// warms it would do the work of are on their way (submitted, not yet
    /// created). A lone warm never waits for the fleet.
    pub(super) fn first_of_a_burst(&self, a: &Attempt<'_>) -> bool {
        a.whole && self.remote.has_peers() && self.arrivals.others_covered(a.id, a.spec)
    }

    /// Awaits `wait`, shown waiting and renewing the attempt's leases
    /// meanwhile; a leader of its whole request on a fleet looks (at once,
    /// then every [`LOOKUP_REUSE`]) for an older offered warm of the same
    /// request on another replica and, once one is confirmed, follows it
    /// instead (`wait` is then dropped). Offered or not: a warm waits
    /// unoffered behind a round that does not list here (`work`), and
    /// still joins the fleet's oldest offered round.
    pub(super) async fn wait_offered<T>(
        &self,
        a: &Attempt<'_>,
        wait: impl Future<Output = T>,
    ) -> Result<Waited<T>, WarmError> {
        // Boxed, so it can be dropped before following another round: an
        // admission slot's future left pending would be handed the next
        // freed slot (the semaphore is fair) and hold it, idle, for the
        // whole round it follows.
        let mut wait = Box::pin(wait);
        loop {
            let older = async {
                loop {
                    if self.may_merge(a) {
                        if let Some(rec) = self.offer_to_join(a).await {
                            return rec;
                        }
                    }
                    tokio::time::sleep(LOOKUP_REUSE).await;
                }
            };
            // Shown waiting (not working) meanwhile.
            a.progress.set_waiting(true);
            let next = self
                .renewing(a, async {
                    // What it waits for first: it may mark the attempt
                    // offered before its first await (`lead_a_burst`), and
                    // the look then starts at once.
                    tokio::select! {
                        biased;
                        v = &mut wait => Ok(v),
                        rec = older => Err(rec),
                    }
                })
                .await;
            a.progress.set_waiting(false);
            let next = next?;
            match next {
                Ok(v) => return Ok(Waited::Done(v)),
                Err(rec) => {
                    if let Some((id, rx)) = self.merge_into(a, &rec).await {
                        drop(wait);
                        return Ok(Waited::Joined(self.follow_leader(a, &id, rx, false).await));
                    }
                    // Not confirmed: it waits on, no longer offered.
                }
            }
        }
    }

    /// Whether the waiting attempt may join an older offered warm: it
    /// leads its whole request, on a fleet. Never a new attempt
    /// (`settled_role`); an offered warm waits only for what ends by
    /// itself, so joining one closes no cycle.
    fn may_merge(&self, a: &Attempt<'_>) -> bool {
        a.progress.offered() || (a.whole && a.ticket.attempt == 1 && self.remote.has_peers())
    }

    /// A last look before an offered leader whose wait ended lists: a
    /// lookup still under way when its window closed (on a busy index it
    /// takes a second or two) may have been about to find an older warm.
    /// How following it ended, if one was found and joined.
    pub(super) async fn last_look(&self, a: &Attempt<'_>) -> Option<Followed> {
        if !a.progress.offered() {
            return None;
        }
        let older = self.offer_to_join(a).await?;
        let (id, rx) = self.merge_into(a, &older).await?;
        Some(self.follow_leader(a, &id, rx, false).await)
    }

    /// The oldest offered warm of another replica of the same request
    /// (from the shared lookup, unconfirmed) that this one may join: an
    /// older one, while this one is offered (offered warms join only
    /// older ones, so no two join each other); any, while it is not (no
    /// warm can join it through the log then, and an offered warm's wait
    /// ends by itself: joining one closes no cycle). A next round's
    /// leader waiting unoffered, behind a round its replica follows, so
    /// joins the fleet's next round even when it is the oldest.
    async fn offer_to_join(&self, a: &Attempt<'_>) -> Option<OperationRecord> {
        let created_at = self.live().get(a.id).map(|op| op.created_at)?;
        let found = match self.joinable_lookup().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(operation_id = a.id, error = %e,
                    "looking for an older warm of the same request on another replica failed; looking again");
                return None;
            }
        };
        let now = self.warmer.clock.now();
        let me = self.settings.replica.as_str();
        let older = found
            .iter()
            .filter(|r| !a.progress.offered() || (r.created_at, r.id.as_str()) < (created_at, a.id))
            .filter(|r| joinable_elsewhere(r, me, now) && same_request(&r.request, a.spec))
            .min_by(|x, y| (x.created_at, &x.id).cmp(&(y.created_at, &y.id)))
            .cloned();
        tracing::debug!(operation_id = a.id, offered = found.len(), older = ?older.as_ref().map(|r| &r.id),
            "looked for an older offered warm of the same request");
        older
    }

    /// Makes this attempt unjoinable, then confirms that `older` is still
    /// offered: its id and a channel of its states, to follow it; `None`
    /// (joinable here again, not elsewhere) if it is not, or this attempt
    /// was stopped meanwhile.
    pub(super) async fn merge_into(
        &self,
        a: &Attempt<'_>,
        older: &OperationRecord,
    ) -> Option<(String, tokio::sync::watch::Receiver<crate::core::operation::OperationState>)> {
        let leading = self.live().get_mut(a.id).and_then(|me| me.leading.take());
        let restore = |leading: Option<WarmSpec>| {
            if let Some(me) = self.live().get_mut(a.id) {
                me.leading = leading;
            }
        };
        if !self.withdraw_offer(a).await {
            restore(leading);
            return None;
        }
        let me = self.settings.replica.as_str();
        let now = self.warmer.clock.now();
        // One read per merge, and the older warm's wait is short: past
        // this replica's queue, like the offer itself.
        let confirmed = in_lane(Lane::Urgent, self.index().get_operation(&older.id)).await;
        match confirmed {
            Ok(Some(cur)) if joinable_elsewhere(&cur, me, now) && same_request(&cur.request, a.spec) => {
                tracing::info!(operation_id = a.id, joined = %cur.id,
                    "an older warm of the same request waits on another replica: joining its round");
                let id = cur.id.clone();
                Some((id, self.remote_feed(cur)))
            }
            Ok(_) => {
                tracing::info!(operation_id = a.id, candidate = %older.id,
                    "the older warm on another replica is no longer offered; leading this round");
                restore(leading);
                None
            }
            Err(e) => {
                tracing::warn!(operation_id = a.id, candidate = %older.id, error = %e,
                    "could not confirm an older warm on another replica; leading this round");
                restore(leading);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefixes: &[&str]) -> WarmSpec {
        WarmSpec {
            prefixes: prefixes
                .iter()
                .map(|p| expresscache::Prefix::parse(p).unwrap())
                .collect(),
            ..crate::fleet::tests::unfinished("x", 0).request
        }
    }

    #[test]
    fn the_burst_s_window_grows_with_the_index_s_latency() {
        let at_least = Duration::from_secs(2);
        assert_eq!(window(at_least, Duration::from_millis(20)), at_least);
        assert_eq!(
            window(at_least, Duration::from_secs(2)),
            Duration::from_secs(5),
            "a lookup and two writes as slow as the offer's"
        );
    }

    #[test]
    fn only_warms_of_the_same_prefixes_of_the_same_data_merge() {
        assert!(same_request(&spec(&["a/", "b/"]), &spec(&["b/", "a/"])));
        assert!(!same_request(&spec(&["a/"]), &spec(&["a/", "b/"])));
        assert!(!same_request(&spec(&["a/", "b/"]), &spec(&["a/"])));
        let tolerant = |p: &[&str]| WarmSpec {
            allow_empty: true,
            ..spec(p)
        };
        assert!(
            !same_request(&tolerant(&["x/", "x/y/"]), &tolerant(&["x/", "x/z/"])),
            "they cover each other, but answer for different prefixes"
        );
        let forced = WarmSpec {
            force_copy: true,
            ..spec(&["a/"])
        };
        assert!(!same_request(&forced, &spec(&["a/"])));
    }
}
