//! Job arrays: a warm of the same data as a warm on this replica that has
//! not started listing joins that warm instead of listing again. The joiner
//! writes and keeps its own leases, shows the leader's progress and ends
//! with the leader's outcome for its own prefixes; if the leader ends
//! without finishing its work, the joiner leads a warm of its own. Joiners
//! are ordinary operations in the log, so a takeover runs one as a warm of
//! its own. The rules (rounds, partial cover, failures, cancels) are in
//! doc/CLIENTS.md, "Job arrays", and doc/FLEET.md for joins across replicas.

use std::time::Duration;

use expresscache::WarmSpec;
use tokio::sync::watch;
use tracing::Instrument;

use super::merge::Waited;
use super::round::{covers, does_for, same_data, Attempt, Followed};
use super::Operations;
use crate::core::operation::{OperationState, Outcome, Phase};
use crate::progress::Progress;
use crate::stop::{StopReason, StopSignal};
use crate::warm::{WarmError, WarmOutcome};

/// Whether every prefix of a joiner that does not allow an empty warm was
/// empty in the warm it followed (whose final state is `last`).
fn all_empty_for(joiner: &WarmSpec, last: &OperationState) -> bool {
    !joiner.allow_empty
        && joiner
            .prefixes
            .iter()
            .all(|p| last.empty_prefixes.iter().any(|e| e == p.as_str()))
}

/// The prefixes of `spec` that a warm of `leader` does the work for, and
/// the rest; `None` when it does none of it (other data, forced copies).
fn split_prefixes(leader: &WarmSpec, spec: &WarmSpec) -> Option<(WarmSpec, WarmSpec)> {
    if !same_data(leader, spec) {
        return None;
    }
    let (covered, rest): (Vec<_>, Vec<_>) = spec
        .prefixes
        .iter()
        .cloned()
        .partition(|p| does_for(leader, spec, p));
    if covered.is_empty() {
        return None;
    }
    // Neither part alone decides that the warm found nothing: the whole
    // is judged once both ended (`split`).
    let part = |prefixes| WarmSpec {
        prefixes,
        allow_empty: true,
        ..spec.clone()
    };
    Some((part(covered), part(rest)))
}

/// A warm whose leader ended without finishing: its own work has not
/// begun. Queued again, from zero and following nobody, so that of the
/// warms the leader left, one leads the next round and the rest join it
/// (showing the leader's phase, none would be joinable, and each would
/// lead a round of its own); and one that waits for a round is offered to
/// other replicas like any waiting leader, unless this attempt withdrew an
/// offer before (it merged into another replica's round): the log refuses
/// a second offer of one attempt.
fn queued_again(a: &Attempt<'_>) {
    a.progress.set_joined(None);
    a.progress.set_phase(Phase::Queued);
}

/// How a warm stopped while waiting ends.
fn stopped_outcome(stop: &StopSignal) -> WarmOutcome {
    match stop.reason() {
        Some(StopReason::Interrupted) => WarmOutcome::Interrupted,
        _ => WarmOutcome::Cancelled,
    }
}

/// The outcome of a warm made of two parts that ended so.
fn worse(a: WarmOutcome, b: WarmOutcome) -> WarmOutcome {
    let rank = |o: &WarmOutcome| match o {
        WarmOutcome::Succeeded => 0,
        WarmOutcome::PartiallyFailed => 1,
        WarmOutcome::Cancelled => 2,
        WarmOutcome::Interrupted => 3,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

/// The round under way that a next round waits for: a warm listing here,
/// or one here following a round of another replica (whose leader it
/// followed when chosen).
struct UnderWay {
    id: String,
    rx: watch::Receiver<OperationState>,
    /// Weak: held strongly, a warm that ended here without finishing (its
    /// run lost) would live on for the waiter, whose wait then never ended,
    /// and its own joiners (whose channel closes only when it is dropped)
    /// never saw it gone: a cold herd stalled so.
    progress: std::sync::Weak<Progress>,
    following: Option<String>,
    /// It lists its own round here (follows nobody, no part of it split):
    /// the wait for it ends by itself.
    lists_itself: bool,
}

/// The round under way here that a next round of `spec` waits for, among
/// the warms `running` accepts: a warm listing what `spec` asks, or one
/// following a round (joined on another replica, or merged into an older
/// round there, or joined here), which the next round waits for like for
/// a local one, rather than list beside it (the herd's cold rounds then
/// fought over the same keys' claims). Whatever phase it shows: a remote
/// round's phase reaches its followers late (its checkpoints, then a
/// poll), and a round shown queued may already be listing. One still
/// offered is found and joined directly (the look on other replicas
/// comes first).
///
/// Whom it follows is read once: a warm whose leader ended stops
/// following meanwhile, and a round taken for one listing here that then
/// follows another would be offered (a cycle: "No cycle of waits",
/// doc/FLEET.md). A warm listing its own round is preferred to its
/// joiners (each is a round under way too): the wait for it ends by
/// itself, so the next round is offered and other replicas' next rounds
/// join it.
fn round_under_way(
    live: &std::collections::HashMap<String, super::LiveOp>,
    spec: &WarmSpec,
    running: &dyn Fn(&String, &super::LiveOp) -> bool,
) -> Option<UnderWay> {
    live.iter()
        .filter(|(other, op)| running(other, op))
        .filter_map(|(other, op)| {
            let following = op.progress.joined();
            let covered = match &following {
                None => op.leading.as_ref().is_some_and(|l| covers(l, spec)),
                Some(_) => covers(&op.request, spec),
            };
            let own = following.is_none() && !op.progress.has_part();
            covered.then_some((!own, other, op, following))
        })
        .min_by_key(|(not_own, ..)| *not_own)
        .map(|(not_own, other, op, following)| UnderWay::of(other, op, following, !not_own))
}

impl UnderWay {
    fn of(id: &str, op: &super::LiveOp, following: Option<String>, lists_itself: bool) -> Self {
        Self {
            id: id.to_owned(),
            rx: op.progress.subscribe(),
            progress: std::sync::Arc::downgrade(&op.progress),
            following,
            lists_itself,
        }
    }
}

/// An offer's write, sent in a task of its own ([`Operations::send_offer`]).
pub(super) type OfferWrite = tokio::task::JoinHandle<Result<bool, crate::index::IndexError>>;

/// What a warm does about the warms of the same data on this replica.
enum Role {
    /// Join this one: it covers the warm and has not begun listing, so
    /// what it lists is current for this warm too.
    Join(String, watch::Receiver<OperationState>),
    /// Join this one (which has not begun listing) for the prefixes it
    /// covers, the first spec, and lead a warm of the rest, the second.
    Split(Box<(String, watch::Receiver<OperationState>, WarmSpec, WarmSpec)>),
    /// Lead the next round once this one (already listing, so too early
    /// for this warm) has ended; later arrivals join that round.
    LeadAfter(Box<UnderWay>),
    /// Lead now.
    Lead,
}

impl Operations {
    /// Under the registry's lock, so a burst of identical submissions
    /// finds one leader per round, not many: joins a covering warm that
    /// has not begun listing, or leads (after the covering warm that is
    /// already listing, if any).
    /// With `claim` false, a warm that would lead (now, or after the round
    /// under way) is not marked leading and answers `Lead`, so nothing
    /// joins it before it looked on other replicas (whose offered round it
    /// joins rather than lead another here).
    fn role_for(&self, id: &str, spec: &WarmSpec, claim: bool) -> Role {
        let mut live = self.live();
        // Another warm still at work.
        let running = |other: &String, op: &super::LiveOp| {
            other.as_str() != id && !op.stop.is_set() && !op.progress.is_finished()
        };
        // Warms that list what they list after this one arrived: others
        // whose own warm runs and has not begun listing. Only a warm doing
        // all its own work is joined: one that follows another's for part
        // of it could close a cycle of warms each waiting for the other.
        let queued = |other: &String, op: &super::LiveOp| {
            running(other, op) && !op.progress.has_part() && op.progress.phase() == Phase::Queued
        };
        let leads_for = |op: &super::LiveOp| op.leading.as_ref().is_some_and(|l| covers(l, spec));
        let joinable = live
            .iter()
            .find(|(other, op)| queued(other, op) && leads_for(op))
            .map(|(other, op)| (other.clone(), op.progress.subscribe()));
        if let Some((leader, rx)) = joinable {
            return Role::Join(leader, rx);
        }
        let listing = round_under_way(&live, spec, &running);
        let split = if listing.is_none() {
            live.iter()
                .filter(|(other, op)| queued(other, op))
                .find_map(|(other, op)| {
                    let (covered, rest) = split_prefixes(op.leading.as_ref()?, spec)?;
                    Some((other.clone(), op.progress.subscribe(), covered, rest))
                })
        } else {
            None
        };
        if !claim && split.is_none() {
            // Would lead, now or after the round under way.
            return Role::Lead;
        }
        let lists = split
            .as_ref()
            .map_or_else(|| spec.clone(), |(_, _, _, rest)| rest.clone());
        if let Some(me) = live.get_mut(id) {
            me.leading = Some(lists);
        }
        match (listing, split) {
            (Some(round), _) => Role::LeadAfter(Box::new(round)),
            (None, Some(split)) => Role::Split(Box::new(split)),
            (None, None) => Role::Lead,
        }
    }

    /// The role of a warm that warms on other replicas may follow unseen,
    /// and that therefore never follows or waits for a warm that might
    /// wait in turn: a cycle of warms each waiting for the next would
    /// never end (a cold herd on a saturated index stalled so: a takeover
    /// of a round's leader joined a younger warm offered on another
    /// replica, which waited for the round this replica followed, whose
    /// leader's record was the taken-over operation's).
    ///
    /// Such a warm is a new attempt of an operation (a takeover, or a
    /// resumption at start): the previous attempt may have been offered,
    /// and warms anywhere may follow the operation's record. It joins only
    /// a warm here that is such a warm too and waits queued (it waits for
    /// nothing but a running slot or the one below, so no cycle can pass
    /// through it), leads the round after one such warm listing here, and
    /// otherwise leads now; joinable here either way. It is never offered
    /// (`send_offer`), so no younger warm elsewhere waits on it through an
    /// offer either. A crashed replica's warms, taken over together, so
    /// list at most twice on the replica that takes them over, not once
    /// each.
    fn settled_role(&self, id: &str, spec: &WarmSpec) -> Role {
        let mut live = self.live();
        // Another new attempt here leading its own work of `spec`.
        let new_leader = |other: &String, op: &super::LiveOp| {
            other.as_str() != id
                && op.ticket.attempt > 1
                && !op.stop.is_set()
                && !op.progress.is_finished()
                && !op.progress.has_part()
                && op.progress.joined().is_none()
                && op.leading.as_ref().is_some_and(|l| covers(l, spec))
        };
        let queued = |op: &super::LiveOp| op.progress.phase() == Phase::Queued;
        let sink = live
            .iter()
            .find(|(other, op)| new_leader(other, op) && queued(op))
            .map(|(other, op)| (other.clone(), op.progress.subscribe()));
        if let Some((leader, rx)) = sink {
            return Role::Join(leader, rx);
        }
        // One listing its own work (a new attempt too): the round after
        // it, which the rest of a crashed replica's warms taken over here
        // join, rather than each list beside it.
        let listing = live
            .iter()
            .find(|(other, op)| new_leader(other, op) && !queued(op))
            .map(|(other, op)| UnderWay::of(other, op, None, true));
        if let Some(me) = live.get_mut(id) {
            me.leading = Some(spec.clone());
        }
        match listing {
            Some(round) => Role::LeadAfter(Box::new(round)),
            None => Role::Lead,
        }
    }

    /// The work of warm `id`: joins a covering warm that has not begun
    /// listing, or runs its own (after the round under way, and after a
    /// running slot frees).
    pub(super) async fn work(&self, a: &Attempt<'_>) -> Result<WarmOutcome, WarmError> {
        let Attempt { id, spec, .. } = *a;
        if !spec.max_staleness.is_zero() {
            let fresh = self.answer_fresh(a).await;
            match fresh {
                Ok(true) => {
                    self.arrivals.arrived(id);
                    return Ok(WarmOutcome::Succeeded);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(operation_id = id, error = %e,
                    "looking for a recent warm of the same data failed; listing instead"),
            }
        }
        loop {
            // Stopped while it chose (a leader it followed ended, then a
            // shutdown or cancel): it ends so, rather than look again.
            if a.stop.is_set() {
                return Ok(stopped_outcome(a.stop));
            }
            if a.ticket.attempt > 1 {
                match self.settled_work(a).await {
                    Some(done) => return done,
                    None => continue,
                }
            }
            let mut role = self.role_for(id, spec, false);
            if matches!(role, Role::Lead) {
                // No warm here does its work: one on another replica may.
                role = match self.remote_leader(id, spec).await {
                    Some((leader, rx)) => Role::Join(leader, rx),
                    None => self.role_for(id, spec, true),
                };
            }
            // At a round now: joined, or leading one others can join.
            self.arrivals.arrived(id);
            match role {
                Role::Split(split) => {
                    let (leader, rx, covered, rest) = *split;
                    return self.split(a, &leader, rx, &covered, &rest).await;
                }
                Role::Join(leader, rx) => match self.follow_leader(a, &leader, rx, false).await {
                    Followed::Done(result) => return result,
                    Followed::LeaderGone => {
                        tracing::info!(operation_id = id, joined = %leader,
                            "the warm this one joined ended without finishing; going on without it");
                        queued_again(a);
                    }
                },
                Role::LeadAfter(round) => {
                    tracing::info!(operation_id = id, after = %round.id,
                        "a warm of the same data is already listing; leading the next round");
                    // Queued (and joinable here) until that round ends;
                    // offered to other replicas only if that round lists
                    // here, so ends by itself. Behind a warm that follows
                    // another's round (or is split), the wait ends only
                    // when that round does, and an offer here could make
                    // a cycle: that round's leader, waiting offered and
                    // younger, would merge into this warm and wait for it
                    // (`settled_role`; doc/FLEET.md, "No cycle of waits").
                    // Unoffered, it still joins an older offered round.
                    if round.lists_itself {
                        self.offer(a).await;
                    }
                    let waited = self.wait_offered(a, self.round_then_gather(a, *round)).await?;
                    return self.after_wait(a, waited, false).await;
                }
                Role::Lead if self.first_of_a_burst(a) => {
                    return self.lead_a_burst(a).await;
                }
                Role::Lead => return self.lead(a).await,
            }
        }
    }

    /// A new attempt's work (`settled_role`): its outcome, or `None` when
    /// the warm it joined ended unfinished (queued again, it chooses anew).
    async fn settled_work(&self, a: &Attempt<'_>) -> Option<Result<WarmOutcome, WarmError>> {
        let role = self.settled_role(a.id, a.spec);
        self.arrivals.arrived(a.id);
        match role {
            Role::Join(leader, rx) => match self.follow_leader(a, &leader, rx, false).await {
                Followed::Done(result) => Some(result),
                Followed::LeaderGone => {
                    queued_again(a);
                    None
                }
            },
            // Never offered, nor merging (`may_merge`): it waits only for
            // a warm that lists.
            Role::LeadAfter(round) => Some(
                match self.wait_offered(a, self.round_then_gather(a, *round)).await {
                    Ok(waited) => self.after_wait(a, waited, false).await,
                    Err(e) => Err(e),
                },
            ),
            _ => Some(self.lead(a).await),
        }
    }

    /// The first warm of a burst: other replicas' first warms of it may be
    /// older, and a moment offered lets one round serve the fleet. Its
    /// outcome (its own work if the round it joined ended unfinished).
    async fn lead_a_burst(&self, a: &Attempt<'_>) -> Result<WarmOutcome, WarmError> {
        // The window opens once the offer is written, and the look for an
        // older warm of the burst starts while it is on its way: on an
        // index slowed by the burst the write takes seconds, and a warm
        // that looked only once it landed found the older warm's window
        // closed, its round listing, and listed too (a cold herd's third
        // listing of the data). Joining before its own offer lands is
        // safe: the withdrawal is recorded first, and the log refuses an
        // offer that arrives after it. The write is a task of its own
        // (`send_offer`): left unpolled while the look merges, it could
        // hold a fair lock the merge's own calls queue behind.
        let window = async {
            let offering = tokio::time::Instant::now();
            self.offer(a).await;
            if !a.progress.offered() {
                // Refused, or withdrawn meanwhile: nobody elsewhere can
                // join it; it leads now.
                return true;
            }
            let window = super::merge::window(self.settings.join_window, offering.elapsed());
            tracing::info!(operation_id = a.id, window = ?window,
                "first warm of a burst: waiting a moment for an older one on another replica");
            tokio::select! {
                () = tokio::time::sleep(window) => true,
                () = a.stop.stopped() => false,
            }
        };
        let waited = self.wait_offered(a, window).await?;
        self.after_wait(a, waited, true).await
    }

    /// What an offered leader does once its wait ended: leads (after a
    /// last look for an older round elsewhere, with `last_look`), ends
    /// stopped, or ends as the round it joined did; when that round ended
    /// unfinished, does its own work.
    async fn after_wait(
        &self,
        a: &Attempt<'_>,
        waited: Waited<bool>,
        last_look: bool,
    ) -> Result<WarmOutcome, WarmError> {
        let followed = match waited {
            Waited::Done(false) => return Ok(stopped_outcome(a.stop)),
            Waited::Done(true) if last_look => match self.last_look(a).await {
                None => return self.lead(a).await,
                Some(followed) => followed,
            },
            Waited::Done(true) => return self.lead(a).await,
            Waited::Joined(followed) => followed,
        };
        match followed {
            Followed::Done(result) => result,
            // It was offered and led here, so warms on other replicas and
            // here may follow it: choosing anew, it could join or wait for
            // a warm that waits for one of those (a cycle; see
            // `settled_role`). It does its own work now, joinable here
            // again, as `lead` does after such an end.
            Followed::LeaderGone => {
                queued_again(a);
                if let Some(me) = self.live().get_mut(a.id) {
                    me.leading = Some(a.spec.clone());
                }
                self.lead(a).await
            }
        }
    }

    /// A next round's wait: for the round under way (`rx`) to end, then, at
    /// most `gather_at_most` ([`OpsSettings`](super::OpsSettings)), for the
    /// warms it covers that were submitted here and are still being
    /// created, so they join this round rather than wait for the next.
    /// False if stopped.
    async fn round_then_gather(&self, a: &Attempt<'_>, round: UnderWay) -> bool {
        let UnderWay {
            mut rx,
            progress,
            following,
            ..
        } = round;
        // Ended, gone from this replica (its run lost), or no longer
        // following the round it followed when chosen (that round ended
        // unfinished: it leads or joins anew, perhaps this very warm,
        // which waiting for it would make a cycle). Its live progress is
        // looked at too: a change of leader is not always published.
        const LOOK_EVERY: Duration = Duration::from_millis(200);
        let ended = async {
            let still = |p: &std::sync::Weak<Progress>| {
                p.upgrade().is_some_and(|p| p.joined() == following)
            };
            while !rx.borrow_and_update().is_done() && still(&progress) {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(LOOK_EVERY) => {}
                }
            }
        };
        tokio::select! {
            () = ended => {}
            () = a.stop.stopped() => return false,
        }
        tokio::select! {
            () = self.arrivals.gather(a.spec) => true,
            () = tokio::time::sleep(self.settings.gather_at_most) => true,
            () = a.stop.stopped() => false,
        }
    }

    /// Runs the attempt's own warm once a running slot frees.
    async fn lead(&self, a: &Attempt<'_>) -> Result<WarmOutcome, WarmError> {
        let Attempt {
            id,
            spec,
            progress,
            owner,
            stop,
            ..
        } = *a;
        if progress.joined().is_some() {
            // Leading from zero: the counters become its own.
            progress.set_joined(None);
        }
        let slot = loop {
            if let Some(slot) = self.admission.try_slot() {
                break Some(slot);
            }
            // Queued: joinable from other replicas meanwhile.
            self.offer(a).await;
            match self.wait_offered(a, self.admission.slot(stop)).await? {
                Waited::Done(slot) => break slot,
                Waited::Joined(Followed::Done(result)) => return result,
                Waited::Joined(Followed::LeaderGone) => {
                    // Its own work after all: joinable here again.
                    queued_again(a);
                    if let Some(me) = self.live().get_mut(id) {
                        me.leading = Some(spec.clone());
                    }
                }
            }
        };
        let result = match slot {
            Some(_slot) => {
                if self.withdraw_offer(a).await {
                    self.warmer.run_until(spec, progress, owner, stop).await
                } else {
                    // Stopped, or its run lost (the keeper stops it and
                    // nothing more is written).
                    Ok(stopped_outcome(stop))
                }
            }
            None => Ok(stopped_outcome(stop)),
        };
        // Its listing is over: a warm that arrives now lists anew.
        if let Some(me) = self.live().get_mut(id) {
            me.leading = None;
        }
        result
    }

    /// Offers the attempt to warms of other replicas (they may join it
    /// until it lists): only a warm that lists its whole request itself,
    /// and only when other replicas share the index. A failed write is no
    /// harm: it may have landed, and [`withdraw_offer`](Self::withdraw_offer)
    /// withdraws it either way.
    pub(super) async fn offer(&self, a: &Attempt<'_>) {
        if let Some(write) = self.send_offer(a) {
            self.offer_written(a, write.await);
        }
    }

    /// Marks the attempt offered and sends the offer, in a task of its
    /// own: a warm that looks for an older one meanwhile may await other
    /// index calls while this write waits unpolled, and a write queued on
    /// a fair lock (SQLite's connection, DynamoDB's pacing) would then hold
    /// up every call behind it. `None` if this attempt does not offer.
    pub(super) fn send_offer(&self, a: &Attempt<'_>) -> Option<OfferWrite> {
        let p = a.progress;
        // A new attempt is never offered: warms elsewhere may follow its
        // operation already, and one joining it could close a cycle
        // (`settled_role`).
        if !(a.whole && self.remote.has_peers())
            || a.ticket.attempt > 1
            || p.joined().is_some()
            || p.phase() != Phase::Queued
            || p.set_offered(true)
        {
            return None;
        }
        let index = std::sync::Arc::clone(&self.index);
        let (id, ticket) = (a.id.to_owned(), a.ticket.clone());
        Some(tokio::spawn(
            async move { index.offer_join(&id, &ticket).await }.in_current_span(),
        ))
    }

    /// What the offer's write answered (see [`send_offer`](Self::send_offer)).
    pub(super) fn offer_written(
        &self,
        a: &Attempt<'_>,
        written: Result<Result<bool, crate::index::IndexError>, tokio::task::JoinError>,
    ) {
        let written = written.unwrap_or_else(|e| {
            Err(crate::index::IndexError::Unavailable(format!(
                "the offer's write ended without an answer: {e}"
            )))
        });
        match written {
            Ok(true) => {}
            // Refused: this attempt withdrew an offer before (it merged
            // into a round that then ended unfinished), or lost its run.
            // Not offered, so it neither waits nor looks as if it were.
            Ok(false) => {
                a.progress.set_offered(false);
            }
            // It may have landed: withdrawn before listing all the same.
            Err(e) => tracing::warn!(operation_id = a.id, error = %e,
                "could not offer this warm to other replicas; it may be warmed there too"),
        }
    }

    /// Before listing: withdraws the attempt's offer, if it made one, so
    /// no warm arriving from now on joins it (and no late write of the
    /// offer lands). Until the withdrawal is recorded the warm does not
    /// list (it could answer a warm that joined after the listing began),
    /// nor fail (that would fail the warms that joined it): it retries,
    /// still queued, until it succeeds or the warm is stopped (cancelled,
    /// interrupted, or its run lost because the index stayed out of
    /// reach). True when it may list.
    pub(super) async fn withdraw_offer(&self, a: &Attempt<'_>) -> bool {
        const FIRST_PAUSE: Duration = Duration::from_millis(200);
        const MAX_PAUSE: Duration = Duration::from_secs(2);
        if !a.progress.set_offered(false) {
            return true;
        }
        let backoff = expresscache::Backoff::new(FIRST_PAUSE, MAX_PAUSE);
        let mut tries = 0u32;
        loop {
            tries += 1;
            match self.index().withdraw_join(a.id, a.ticket).await {
                Ok(held) => return held,
                Err(e) => {
                    tracing::warn!(operation_id = a.id, error = %e, tries,
                        "could not withdraw this warm's offer to other replicas; it waits, retrying");
                    let pause = backoff.ceiling(tries);
                    let jitter = crate::jitter::Jitter::below(&crate::jitter::RandomJitter, pause);
                    tokio::select! {
                        () = tokio::time::sleep(pause + jitter) => {}
                        () = a.stop.stopped() => return false,
                    }
                }
            }
        }
    }

    /// Follows `leader`'s warm for the prefixes of `covered` while leading
    /// a warm of `rest`; ends with both parts' outcome. A leader that ends
    /// without finishing leaves its part to be done as any warm's.
    async fn split(
        &self,
        a: &Attempt<'_>,
        leader: &str,
        rx: watch::Receiver<OperationState>,
        covered: &WarmSpec,
        rest: &WarmSpec,
    ) -> Result<WarmOutcome, WarmError> {
        tracing::info!(
            operation_id = a.id,
            joined = leader,
            covered = covered.prefixes.len(),
            rest = rest.prefixes.len(),
            "a running warm covers part of this one's prefixes: joining it for those"
        );
        // Both parts keep their leases in the one progress: their prefixes
        // do not overlap.
        let part = Attempt {
            spec: covered,
            whole: false,
            ..*a
        };
        let own = Attempt {
            spec: rest,
            whole: false,
            ..*a
        };
        // Shown (and recorded) as partly joined from the start.
        a.progress
            .set_part(Some((leader, crate::core::operation::Counters::default())));
        let covered_part = async {
            match self.follow_leader(&part, leader, rx, true).await {
                Followed::Done(result) => result,
                Followed::LeaderGone => {
                    tracing::info!(
                        operation_id = a.id,
                        joined = leader,
                        "the warm this one partly joined ended without finishing; warming its part"
                    );
                    a.progress.set_part(None);
                    // Led here, not joined anew: this warm's progress is
                    // shared by both parts and must not mirror another's.
                    self.lead(&part).await
                }
            }
        };
        let (followed, led) = tokio::join!(covered_part, self.lead(&own));
        let outcome = worse(followed?, led?);
        // Both parts reported their empty prefixes into the one progress.
        let empty = a.progress.empty_prefixes();
        if !a.spec.allow_empty
            && matches!(
                outcome,
                WarmOutcome::Succeeded | WarmOutcome::PartiallyFailed
            )
            && a.spec
                .prefixes
                .iter()
                .all(|p| empty.iter().any(|e| e == p.as_str()))
        {
            return Err(WarmError::Empty {
                bucket: a.spec.source.to_string(),
                prefixes: empty,
            });
        }
        Ok(outcome)
    }

    /// Awaits `fut`, meanwhile renewing the leases the attempt already
    /// wrote (a warm that joined, then waits for a slot or a round), so
    /// they do not lapse under it; an ended lease ends the wait.
    pub(super) async fn renewing<T>(
        &self,
        a: &Attempt<'_>,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, WarmError> {
        if a.progress.lease_epochs().is_empty() {
            return Ok(fut.await);
        }
        let keeper = self.warmer.leases(a.spec, a.progress, a.id);
        keeper.keep_while(|| true, fut).await
    }

    /// Answers `spec` from a warm of the same data that finished SUCCEEDED
    /// within its max_staleness and still stands for the data (every lease
    /// it left live, the very lease it wrote): writes this warm's own
    /// leases and says which warm it relied on. False when there is none
    /// (or its leases ended meanwhile): the warm lists as usual.
    async fn answer_fresh(&self, a: &Attempt<'_>) -> Result<bool, WarmError> {
        let Attempt {
            id, spec, progress, ..
        } = *a;
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
            // Only a warm that listed the source itself answers, and its
            // age counts from when it started (its listing began no
            // earlier): answers never chain into a window that slides on
            // without anything being listed again.
            let listed_itself = op.state.fresh_from_operation_id.is_none()
                && op.state.joined_operation_id.is_none();
            let fits = op.id != id
                && listed_itself
                && op.state.outcome == Some(Outcome::Succeeded)
                && now.saturating_sub(op.state.started_at) <= window
                && covers(&op.request, spec)
                && !all_empty_for(spec, &op.state);
            if !fits {
                continue;
            }
            // This warm's leases first, then the check: an Evict between
            // the two cannot go unseen (it ends the other warm's leases,
            // which the check then finds ended).
            match self.write_leases(a).await {
                Ok(()) => {}
                Err(WarmError::LeaseEnded { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
            if !self.still_backed(&op).await? {
                continue;
            }
            progress.set_fresh_from(&op.id, &op.state);
            metrics::counter!(crate::metrics::WARMS_FRESH).increment(1);
            tracing::info!(operation_id = id, fresh_from = %op.id,
                "answered from a recent warm of the same data (max_staleness)");
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes (or extends) the attempt's own leases at its own TTL.
    async fn write_leases(&self, a: &Attempt<'_>) -> Result<(), WarmError> {
        self.warmer
            .leases(a.spec, a.progress, a.owner)
            .write()
            .await
    }

    /// Follows `leader`'s work to its end, keeping this warm's own leases.
    pub(super) async fn follow_leader(
        &self,
        a: &Attempt<'_>,
        leader: &str,
        mut rx: watch::Receiver<OperationState>,
        part: bool,
    ) -> Followed {
        if !part {
            // Marked before any counter is shown: the metrics never count
            // the leader's work as this warm's.
            a.progress.set_joined(Some(leader));
        }
        show_leader(a.progress, leader, part, &rx.borrow());
        metrics::counter!(crate::metrics::WARMS_JOINED).increment(1);
        tracing::info!(
            operation_id = a.id,
            joined = leader,
            "joined a running warm of the same data"
        );
        // This caller's leases, at its TTL, before anything is reported.
        if let Err(e) = self.write_leases(a).await {
            return Followed::Done(Err(e));
        }
        let last = match self.wait_for_leader(a, leader, &mut rx, part).await {
            Ok(last) => last,
            Err(ended) => return ended,
        };
        show_leader(a.progress, leader, part, &last);
        self.answer_from_leader(a, leader, last, part).await
    }

    /// Waits for the leader's final state, showing its progress, and keeps
    /// this warm's leases alive meanwhile, as a warm of its own would (the
    /// joined warm's leases may be shorter), but only while that warm is
    /// alive: its state is published (with a new elapsed time) by the
    /// keeper that renews its run, here or on another replica, whether or
    /// not its counters move (a long Batch Operations job moves none). A
    /// warm whose keeper stopped must not keep data alive through its
    /// joiners. `Err` is how this warm ends without a final state.
    async fn wait_for_leader(
        &self,
        a: &Attempt<'_>,
        leader: &str,
        rx: &mut watch::Receiver<OperationState>,
        part: bool,
    ) -> Result<OperationState, Followed> {
        let stall_limit = self.warmer.settings.stall_limit;
        let mut seen = (
            Phase::Queued,
            crate::core::operation::Counters::default(),
            Duration::ZERO,
        );
        let moved = std::sync::Mutex::new(tokio::time::Instant::now());
        let moved_at = || *moved.lock().unwrap_or_else(|e| e.into_inner());
        let watching = async {
            loop {
                let state = rx.borrow_and_update().clone();
                show_leader(a.progress, leader, part, &state);
                if state.is_done() {
                    return Ok(state);
                }
                if (state.phase, state.counters, state.elapsed) != seen {
                    seen = (state.phase, state.counters, state.elapsed);
                    *moved.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // Gone: a final state sent just before counts.
                            let state = rx.borrow().clone();
                            if state.is_done() {
                                return Ok(state);
                            }
                            return Err(Followed::LeaderGone);
                        }
                    }
                    () = a.stop.stopped() => return Err(Followed::Done(Ok(stopped_outcome(a.stop)))),
                }
            }
        };
        let keeper = self.warmer.leases(a.spec, a.progress, a.id);
        keeper
            .keep_while(|| moved_at().elapsed() <= stall_limit, watching)
            .await
            .unwrap_or_else(|ended| Err(Followed::Done(Err(ended))))
    }

    /// This warm's answer from the leader's final state `last`: its
    /// outcome judged by this warm's own rules, its leases written from
    /// now, and the failures among its own keys.
    async fn answer_from_leader(
        &self,
        a: &Attempt<'_>,
        leader: &str,
        last: OperationState,
        part: bool,
    ) -> Followed {
        let Attempt { id, spec, .. } = *a;
        if let Some(older) = &last.fresh_from_operation_id {
            // It did not list: it answered from a warm that listed before
            // this one arrived (a takeover of a joinable warm runs its
            // max_staleness check afresh, and its window is not this
            // warm's). Not current for this warm: it does its own.
            tracing::info!(operation_id = id, joined = leader, answered_from = %older,
                "the warm this one joined answered from an earlier listing; listing anew");
            return Followed::LeaderGone;
        }
        match last.outcome {
            Some(Outcome::Succeeded | Outcome::PartiallyFailed) => {}
            // Failed only because every one of its prefixes was empty (it
            // names them, and fails on nothing else once listed): for this
            // warm that is a listing like any other, judged by its own
            // rule below.
            Some(Outcome::Failed) if !last.empty_prefixes.is_empty() => {}
            Some(Outcome::Failed) => {
                return Followed::Done(Err(WarmError::JoinedFailed {
                    operation_id: leader.to_owned(),
                    error: last.error.unwrap_or_default(),
                }))
            }
            Some(Outcome::Cancelled) | None => return Followed::LeaderGone,
        }
        let empty: Vec<String> = spec
            .prefixes
            .iter()
            .filter(|p| last.empty_prefixes.iter().any(|e| e == p.as_str()))
            .map(ToString::to_string)
            .collect();
        if all_empty_for(spec, &last) {
            return Followed::Done(Err(WarmError::Empty {
                bucket: spec.source.to_string(),
                prefixes: empty,
            }));
        }
        a.progress.add_empty_prefixes(empty);
        // Ready now: "at least ttl" counts from here, and a lease an Evict
        // ended meanwhile ends this warm as it would any other.
        if let Err(e) = self.write_leases(a).await {
            return Followed::Done(Err(e));
        }
        let none_failed = take_own_failures(a, leader, &last, part);
        Followed::Done(Ok(if none_failed {
            WarmOutcome::Succeeded
        } else {
            WarmOutcome::PartiallyFailed
        }))
    }
}

/// Shows the leader's `state` as all of this warm's work, or as part of
/// it (next to its own).
fn show_leader(progress: &Progress, leader: &str, part: bool, state: &OperationState) {
    if part {
        progress.set_part(Some((leader, state.counters)));
    } else {
        progress.mirror(state);
    }
}

/// Counts the leader's failures among this warm's prefixes as this
/// warm's (failures outside them are not its own). True when this warm
/// has none: none among its prefixes, and none left out of the list.
fn take_own_failures(a: &Attempt<'_>, leader: &str, last: &OperationState, part: bool) -> bool {
    let mine: Vec<_> = last
        .failures
        .iter()
        .filter(|f| {
            a.spec
                .prefixes
                .iter()
                .any(|p| f.key.starts_with(p.as_str()))
        })
        .cloned()
        .collect();
    let none_mine = last.failures_omitted == 0 && mine.is_empty();
    // Some not listed: they may be this warm's; say so rather than guess.
    let failed = if last.failures_omitted == 0 {
        mine.len() as u64
    } else {
        last.counters.objects_failed
    };
    if part {
        // This warm's failures among its own: the part shows none.
        let mut counters = last.counters;
        counters.objects_failed = 0;
        a.progress.set_part(Some((leader, counters)));
        let known = mine.len() as u64;
        for f in mine {
            a.progress.fail(&f.key, &f.code, f.message);
        }
        Progress::add(&a.progress.failed, failed.saturating_sub(known));
    } else {
        a.progress.set_failures(failed, mine);
    }
    none_mine
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
            batch_operations: false,
            allow_empty: false,
            selection: Default::default(),
        }
    }

    #[test]
    fn a_warm_covers_the_same_or_narrower_prefixes_of_the_same_data_only() {
        let leader = spec(&["a/", "b/"], false);
        assert!(covers(&leader, &spec(&["a/"], false)));
        let narrower = WarmSpec {
            allow_empty: true,
            ..spec(&["a/x/", "b/"], false)
        };
        assert!(covers(&leader, &narrower));
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

    #[test]
    fn a_warm_that_must_not_be_empty_joins_only_a_warm_of_exactly_its_prefixes() {
        let leader = spec(&["a/", "b/"], false);
        // The leader reports a/ and b/ empty or not; it cannot tell about
        // a/x/, which it lists as part of a/.
        assert!(!covers(&leader, &spec(&["a/x/"], false)));
        assert!(covers(&leader, &spec(&["b/", "a/"], false)));
        let mut last = OperationState::queued("leader", 0);
        last.empty_prefixes = vec!["a/".into()];
        assert!(all_empty_for(&spec(&["a/"], false), &last));
        assert!(!all_empty_for(&spec(&["a/", "b/"], false), &last));
        let tolerant = WarmSpec {
            allow_empty: true,
            ..spec(&["a/"], false)
        };
        assert!(!all_empty_for(&tolerant, &last));
        // A strict warm splits only where the leader lists exactly its
        // prefix; its parts are not judged alone (the whole is).
        assert!(split_prefixes(&leader, &spec(&["a/x/", "c/"], false)).is_none());
        let (covered, rest) = split_prefixes(&leader, &spec(&["a/", "c/"], false)).unwrap();
        assert_eq!(covered.prefixes, [Prefix::parse("a/").unwrap()]);
        assert_eq!(rest.prefixes, [Prefix::parse("c/").unwrap()]);
        assert!(covered.allow_empty && rest.allow_empty);
        assert!(split_prefixes(
            &leader,
            &WarmSpec {
                allow_empty: true,
                ..spec(&["a/x/", "c/"], false)
            }
        )
        .is_some());
    }
}
