//! Job arrays: many launchers asking for the same data at once. A warm
//! whose source, directory bucket and destination prefix match a warm
//! running on this replica, whose prefixes that warm covers, and where
//! neither forces a copy, joins it instead of listing again: it writes its
//! own leases (its own TTL), shows the running warm's progress, and ends
//! with its outcome for its own prefixes.
//!
//! Guarantees kept:
//! - ready means present and current: the joined warm's SUCCEEDED covers
//!   every object under the joiner's prefixes, and the joiner's leases
//!   are written (and kept) before it reports, so nothing it reports is
//!   swept under it; an Evict that ends one of them ends the joiner
//!   CANCELLED with the reason, as for any warm;
//! - a joined warm that fails gives its failure and reason to its joiners;
//! - one that ends without finishing its work (its caller cancelled it,
//!   it was interrupted, its run was lost) only withdraws that caller's
//!   interest: each joiner goes on, leading (or joining) a warm of its own,
//!   which finds what was already copied as hits.
//!
//! Joiners are ordinary operations in the log (request id, run lease,
//! checkpoints): a replica that takes one over runs it as a warm of its
//! own.

use std::time::Duration;

use expresscache::WarmSpec;
use tokio::sync::watch;

use super::Operations;
use crate::index::{CacheIndex, OperationLog};
use crate::operation::{OperationState, Outcome};
use crate::progress::Progress;
use crate::stop::{StopReason, StopSignal};
use crate::store::ObjectStore;
use crate::warm::{WarmError, WarmOutcome};

/// Whether a warm of `leader` does all the work a warm of `joiner` asks
/// for: same source, destination, no forced copies, every prefix covered.
pub(super) fn covers(leader: &WarmSpec, joiner: &WarmSpec) -> bool {
    leader.source == joiner.source
        && leader.directory_bucket == joiner.directory_bucket
        && leader.destination_prefix == joiner.destination_prefix
        && !leader.force_copy
        && !joiner.force_copy
        && joiner
            .prefixes
            .iter()
            .all(|p| leader.prefixes.iter().any(|l| l.covers(p)))
}

/// How following a joined warm ended.
enum Followed {
    /// This warm's outcome.
    Done(Result<WarmOutcome, WarmError>),
    /// The joined warm ended without finishing its work: do it another way.
    LeaderGone,
}

impl<S: ObjectStore, I: CacheIndex + OperationLog> Operations<S, I> {
    /// Under the registry's lock: the progress of a running warm on this
    /// replica that covers `spec`, or none, and then `id` leads (so a burst
    /// of identical submissions finds one leader, not many).
    fn leader_for(
        &self,
        id: &str,
        spec: &WarmSpec,
    ) -> Option<(String, watch::Receiver<OperationState>)> {
        let mut live = self.live();
        let found = live.iter().find(|(other, op)| {
            other.as_str() != id
                && op.leading
                && !op.stop.is_set()
                && !op.progress.is_finished()
                && covers(&op.request, spec)
        });
        if let Some((leader, op)) = found {
            return Some((leader.clone(), op.progress.subscribe()));
        }
        if let Some(me) = live.get_mut(id) {
            me.leading = true;
        }
        None
    }

    /// The work of warm `id`: joins a running warm that covers it, or runs
    /// its own (after a running slot frees).
    pub(super) async fn work(
        &self,
        id: &str,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        stop: &StopSignal,
    ) -> Result<WarmOutcome, WarmError> {
        if !spec.max_staleness.is_zero() {
            match self.answer_fresh(id, spec, progress, owner, stop).await {
                Ok(true) => return Ok(WarmOutcome::Succeeded),
                Ok(false) => {}
                Err(e) => tracing::warn!(operation_id = id, error = %e,
                    "looking for a recent warm of the same data failed; listing instead"),
            }
        }
        loop {
            let Some((leader, rx)) = self.leader_for(id, spec) else {
                if progress.joined().is_some() {
                    // Leading from zero: the counters become its own.
                    progress.set_joined(None);
                }
                let result = match self.admission.slot(stop).await {
                    Some(_slot) => self.warmer.run_until(spec, progress, owner, stop).await,
                    None if stop.reason() == Some(StopReason::Cancelled) => {
                        Ok(WarmOutcome::Cancelled)
                    }
                    None => Ok(WarmOutcome::Interrupted),
                };
                // Its listing is over: a warm that arrives now lists anew
                // (joining only ever shares work still under way).
                if let Some(me) = self.live().get_mut(id) {
                    me.leading = false;
                }
                return result;
            };
            match self
                .follow_leader(id, spec, progress, owner, stop, &leader, rx)
                .await
            {
                Followed::Done(result) => return result,
                Followed::LeaderGone => {
                    tracing::info!(operation_id = id, joined = %leader,
                        "the warm this one joined ended without finishing; going on without it");
                }
            }
        }
    }

    /// Answers `spec` from a warm of the same data that finished SUCCEEDED
    /// within its max_staleness and still stands for the data (every lease
    /// it left live, the very lease it wrote): writes this warm's own
    /// leases and says which warm it relied on. False when there is none
    /// (or its leases ended meanwhile): the warm lists as usual.
    async fn answer_fresh(
        &self,
        id: &str,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        stop: &StopSignal,
    ) -> Result<bool, WarmError> {
        /// Finished operations looked at, newest first: the window is for
        /// warms of a moment ago, not an archive search.
        const RECENT: usize = 200;
        let now = self.warmer.clock.now();
        let window = crate::index::span_millis(spec.max_staleness);
        let recent = self
            .index()
            .list_operations(crate::index::OpFilter::Finished, None, RECENT)
            .await?;
        for op in recent {
            let finished_at = op
                .state
                .started_at
                .saturating_add(crate::index::span_millis(op.state.elapsed));
            let fits = op.id != id
                && op.state.outcome == Some(Outcome::Succeeded)
                && now.saturating_sub(finished_at) <= window
                && covers(&op.request, spec);
            if !fits || !self.still_backed(&op).await? {
                continue;
            }
            match self.warmer.write_leases(spec, progress, owner, stop).await {
                Ok(()) => {}
                // Evicted in between: list after all.
                Err(WarmError::LeaseEnded { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
            progress.set_fresh_from(&op.id, &op.state);
            metrics::counter!(crate::metrics::WARMS_FRESH).increment(1);
            tracing::info!(operation_id = id, fresh_from = %op.id,
                "answered from a recent warm of the same data (max_staleness)");
            return Ok(true);
        }
        Ok(false)
    }

    /// Follows `leader`'s work to its end, keeping this warm's own leases.
    #[allow(clippy::too_many_arguments)]
    async fn follow_leader(
        &self,
        id: &str,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        stop: &StopSignal,
        leader: &str,
        mut rx: watch::Receiver<OperationState>,
    ) -> Followed {
        progress.set_joined(Some(leader));
        metrics::counter!(crate::metrics::WARMS_JOINED).increment(1);
        tracing::info!(
            operation_id = id,
            joined = leader,
            "joined a running warm of the same data"
        );
        // This caller's leases, at its TTL, before anything is reported.
        if let Err(e) = self.warmer.write_leases(spec, progress, owner, stop).await {
            return Followed::Done(Err(e));
        }
        // Kept alive while waiting, as a warm of its own would (the joined
        // warm's leases may be shorter).
        let renew_every = (spec.ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut renew = tokio::time::interval(renew_every);
        renew.tick().await;
        let last = loop {
            let state = rx.borrow_and_update().clone();
            progress.mirror(&state);
            if state.is_done() {
                break state;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // Gone: a final state sent just before counts.
                        let state = rx.borrow().clone();
                        if state.is_done() {
                            break state;
                        }
                        return Followed::LeaderGone;
                    }
                }
                _ = renew.tick() => match self.warmer.write_leases(spec, progress, owner, stop).await {
                    Ok(()) => {}
                    Err(e @ WarmError::LeaseEnded { .. }) => return Followed::Done(Err(e)),
                    Err(e) => tracing::warn!(operation_id = id, error = %e, "lease renewal failed"),
                },
                () = stop.stopped() => {
                    return Followed::Done(Ok(match stop.reason() {
                        Some(StopReason::Interrupted) => WarmOutcome::Interrupted,
                        _ => WarmOutcome::Cancelled,
                    }));
                }
            }
        };
        progress.mirror(&last);
        match last.outcome {
            Some(Outcome::Succeeded | Outcome::PartiallyFailed) => {}
            Some(Outcome::Failed) => {
                return Followed::Done(Err(WarmError::JoinedFailed {
                    operation_id: leader.to_owned(),
                    error: last.error.unwrap_or_default(),
                }))
            }
            Some(Outcome::Cancelled) | None => return Followed::LeaderGone,
        }
        // Ready now: "at least ttl" counts from here, and a lease an Evict
        // ended meanwhile ends this warm as it would any other.
        if let Err(e) = self.warmer.write_leases(spec, progress, owner, stop).await {
            return Followed::Done(Err(e));
        }
        // Failures outside this warm's prefixes are not its own.
        let mine: Vec<_> = last
            .failures
            .iter()
            .filter(|f| spec.prefixes.iter().any(|p| f.key.starts_with(p.as_str())))
            .cloned()
            .collect();
        if last.failures_omitted == 0 && mine.is_empty() {
            progress.set_failures(0, Vec::new());
            return Followed::Done(Ok(WarmOutcome::Succeeded));
        }
        // Some not listed: they may be this warm's; say so rather than guess.
        let failed = if last.failures_omitted == 0 {
            mine.len() as u64
        } else {
            last.counters.objects_failed
        };
        progress.set_failures(failed, mine);
        Followed::Done(Ok(WarmOutcome::PartiallyFailed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expresscache::{BucketName, DirectoryBucketName, Prefix};

    fn spec(prefixes: &[&str], force_copy: bool) -> WarmSpec {
        WarmSpec {
            source: BucketName::parse("src").unwrap_or_else(|e| panic!("{e}")),
            prefixes: prefixes
                .iter()
                .map(|p| Prefix::parse(p).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            directory_bucket: DirectoryBucketName::parse("cache--use1-az4--x-s3")
                .unwrap_or_else(|e| panic!("{e}")),
            ttl: Duration::from_secs(60),
            force_copy,
            request_id: None,
            destination_prefix: Prefix::root(),
            max_staleness: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn a_warm_covers_the_same_or_narrower_prefixes_of_the_same_data_only() {
        let leader = spec(&["a/", "b/"], false);
        assert!(covers(&leader, &spec(&["a/"], false)));
        assert!(covers(&leader, &spec(&["a/x/", "b/"], false)));
        assert!(
            !covers(&leader, &spec(&["a/", "c/"], false)),
            "c/ is not listed"
        );
        assert!(
            !covers(&leader, &spec(&["a/"], true)),
            "force_copy never joins"
        );
        assert!(!covers(&spec(&["a/"], true), &spec(&["a/"], false)));
        let mut elsewhere = spec(&["a/"], false);
        elsewhere.destination_prefix = Prefix::parse("x/").unwrap_or_else(|e| panic!("{e}"));
        assert!(!covers(&leader, &elsewhere), "another destination");
    }
}
