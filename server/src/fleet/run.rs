//! Running one operation under its run lease: publish progress to the
//! followers, renew the lease (and see a cancel requested elsewhere),
//! checkpoint the state, and stop writing the moment the lease turns out
//! lost: a replica that was paused or cut off past its deadline has been
//! taken over, and must not overwrite the new runner's record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use expresscache::WarmSpec;
use tracing::Instrument;

use super::Operations;
use crate::core::operation::{OperationState, Outcome, Phase, RunTicket};
use crate::index::lane::{in_lane, Lane};
use crate::index::{span_millis, Millis, Renewal};
use crate::progress::Progress;
use crate::stop::{StopReason, StopSignal};
use crate::warm::WarmError;

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Operations {
    pub(super) async fn drive(
        self: Arc<Self>,
        id: String,
        spec: WarmSpec,
        progress: Arc<Progress>,
        stop: Arc<StopSignal>,
        ticket: RunTicket,
        granted_until: Millis,
    ) {
        // Claims are per attempt: a later attempt takes this one's over.
        let owner = ticket.claim_owner(&id);
        let lost = Arc::new(AtomicBool::new(false));
        let granted_until = self
            .fresh_grant(&id, &ticket, granted_until, &stop, &lost)
            .await;
        // Copies check the run's deadline before each request (the keeper
        // moves it on with each renewal): held from the very first copy.
        stop.hold_until(granted_until, &self.warmer.clock);
        let keeper = self.spawn_keeper(&id, &ticket, granted_until, &progress, &stop, &lost);
        // Queued (phase QUEUED) until a running slot frees; the keeper
        // renews the run meanwhile and turns a cancel into a stop.
        // A running warm of the same data is joined instead.
        let result = self
            .work(&super::round::Attempt {
                id: &id,
                spec: &spec,
                progress: &progress,
                owner: &owner,
                stop: &stop,
                ticket: &ticket,
                whole: true,
            })
            .await;
        drop(keeper);
        // Whatever happens next, what this attempt did happened.
        progress.export_metrics();
        // Past the deadline the copies refused to send: whatever the warm
        // counted, it did not finish its work, and another replica may
        // hold the run. Treated as lost (handed on, nothing recorded),
        // also when the keeper had not yet noticed.
        if lost.load(Ordering::Relaxed) || stop.lapsed() {
            tracing::warn!(operation_id = %id, attempt = ticket.attempt,
                "this replica lost the operation's run (another took it over, or its deadline \
                 passed unrenewed); writing nothing more");
            // Gone from this replica first: a next round waiting for it,
            // and its joiners, go on now, not once the release below is
            // answered by an index that may be the reason the run was lost.
            self.forget(&id);
            drop(progress);
            // If nobody took it over yet (the index was out of reach), hand
            // it on at once, and not as a crash; a no-op once superseded.
            if let Err(e) = self.index().release_run(&id, &ticket).await {
                tracing::debug!(operation_id = %id, error = %e, "could not release the lost run");
            }
            return;
        }
        if stop.reason() == Some(StopReason::Interrupted) {
            // Left unfinished on purpose: any replica (this one after its
            // restart, or another now) takes it over, as no crash.
            self.checkpoint(&id, &ticket, &progress).await;
            if let Err(e) = self.index().release_run(&id, &ticket).await {
                tracing::warn!(operation_id = %id, error = %e, "could not release the run");
            }
            tracing::info!(operation_id = %id, "warm interrupted by shutdown; another start resumes it");
            progress.publish();
            self.forget(&id);
            return;
        }
        // The final state reaches followers only once it is recorded: a
        // runner taken over meanwhile must not tell its callers an outcome
        // the log does not hold (their feed then reads the log instead).
        let last = final_state(&id, result, &progress);
        self.record_final(&id, &ticket, last, &progress, &stop).await;
        self.forget(&id);
    }

    /// Starts the run keeper of attempt `ticket` ([`keep_run`](Self::keep_run)),
    /// in the warm's span: its log lines and index calls belong to the
    /// warm's trace. Aborted when dropped, also by a panic of the task that
    /// holds it: a keeper left behind would renew the run (and hold the
    /// progress) forever.
    fn spawn_keeper(
        self: &Arc<Self>,
        id: &str,
        ticket: &RunTicket,
        granted_until: Millis,
        progress: &Arc<Progress>,
        stop: &Arc<StopSignal>,
        lost: &Arc<AtomicBool>,
    ) -> AbortOnDrop {
        let this = Arc::clone(self);
        let (id, ticket) = (id.to_owned(), ticket.clone());
        let (progress, stop, lost) = (Arc::clone(progress), Arc::clone(stop), Arc::clone(lost));
        AbortOnDrop(tokio::spawn(
            async move {
                this.keep_run(&id, &ticket, granted_until, &progress, &stop, &lost)
                    .await
            }
            .in_current_span(),
        ))
    }

    /// Records the final state (with the lease epochs: once it is visible,
    /// a resubmission of the request id checks them), then tells the
    /// followers. The write keeps its place in the index's queue however
    /// long that is (a job array's burst of final states waits there; cut
    /// off and sent again, each would go to the back), while
    /// [`hold_for_final`](Self::hold_for_final) keeps the run this
    /// attempt's. A busy index is waited out for up to the final-write
    /// budget; then the run is handed on (released: another attempt
    /// finishes it, and it is no crash). A state the index refuses
    /// outright (too large, say) is recorded without its failure list,
    /// then as FAILED with the reason.
    async fn record_final(
        &self,
        id: &str,
        ticket: &RunTicket,
        mut last: OperationState,
        progress: &Progress,
        stop: &StopSignal,
    ) {
        let backoff =
            expresscache::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let budget = tokio::time::Instant::now() + self.settings.final_write_budget;
        let epochs = progress.lease_epochs();
        let following = copies_nothing(progress);
        let taken_over = || {
            tracing::warn!(operation_id = %id,
                "the run was taken over while its final state waited for the index");
        };
        let mut attempt = 0u32;
        let mut fallbacks = 0u32;
        loop {
            let written = self
                .send_final(id, ticket, (&last, &epochs), stop, following, budget)
                .await;
            let err = match written {
                Ok(true) => return progress.publish_final(last),
                Ok(false) => {
                    return tracing::warn!(operation_id = %id,
                        "the final state was not recorded: another replica took the operation over")
                }
                Err(e) => e,
            };
            if !matches!(err, crate::index::IndexError::Unavailable(_)) {
                // Only a state the index finds too large has a smaller
                // form; any other refusal (access denied) is handed on.
                if !matches!(err, crate::index::IndexError::TooLarge(_)) {
                    tracing::error!(operation_id = %id, error = %err,
                        "the index refused the final state; handing the run on");
                    break;
                }
                fallbacks += 1;
                tracing::error!(operation_id = %id, error = %err,
                    "the index refused the final state; recording a smaller one");
                last = match fallbacks {
                    1 => without_failures(last),
                    2 => failed_to_record(last, &err),
                    _ => break,
                };
                continue;
            }
            attempt += 1;
            let pause = backoff.delay_at(attempt, fastrand::f64());
            if tokio::time::Instant::now() + pause > budget {
                tracing::error!(operation_id = %id, error = %err,
                    "could not record the final state in time; handing the run on");
                break;
            }
            tracing::warn!(operation_id = %id, error = %err, "recording the final state failed; trying again");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.hold_for_final(id, ticket, stop, following) => return taken_over(),
            }
        }
        // Handed on as released, not left to lapse: a lapsed run counts as
        // a crash, and enough of those fail a warm whose data is there.
        if let Err(e) = self.index().release_run(id, ticket).await {
            tracing::warn!(operation_id = %id, error = %e, "could not release the run either");
        }
    }

    /// One send of the final state (`state`, with its lease epochs), by
    /// `budget` at the latest, the run held meanwhile. A joiner's final
    /// state is bookkeeping; a leader's is what its joiners wait for
    /// (`index::lane`).
    async fn send_final(
        &self,
        id: &str,
        ticket: &RunTicket,
        (state, epochs): (&OperationState, &[(String, String)]),
        stop: &StopSignal,
        following: bool,
        budget: tokio::time::Instant,
    ) -> Result<bool, crate::index::IndexError> {
        let lane = if following { Lane::Bulk } else { Lane::Work };
        let write = tokio::time::timeout_at(
            budget,
            in_lane(lane, self.index().finish_operation(id, ticket, state, epochs)),
        );
        tokio::pin!(write);
        // A renewal refused meanwhile may mean the write itself landed (its
        // reply late): the write, fenced, says which.
        tokio::select! {
            w = &mut write => w,
            () = self.hold_for_final(id, ticket, stop, following) => (&mut write).await,
        }
        .unwrap_or_else(|_| {
            Err(crate::index::IndexError::Unavailable(
                "recording the final state timed out".into(),
            ))
        })
    }

    /// Keeps `ticket`'s run while its final state waits for the index, so
    /// no other replica takes it over (and counts a crash) meanwhile: once
    /// less than half a run lease is left of the deadline last granted, it
    /// renews (by the warm's cadence: a joiner's long lease rarely needs
    /// it). Returns only when the index says another attempt holds the
    /// run; an unanswered renewal is tried again.
    async fn hold_for_final(
        &self,
        id: &str,
        ticket: &RunTicket,
        stop: &StopSignal,
        following: bool,
    ) {
        let s = &self.settings;
        let cadence = Cadence::of(s, following);
        let clock = &self.warmer.clock;
        loop {
            let left = stop.time_left();
            if left > s.run_ttl / 2 {
                // Looked at again at least every renewal interval: the
                // wall clock may jump.
                tokio::time::sleep((left - s.run_ttl / 2).min(s.renew_every)).await;
                continue;
            }
            let within = left.max(s.renew_every).min(s.run_ttl / 2);
            match self.renew(id, ticket, cadence.run_ttl, within, stop).await {
                Ok(Some(deadline)) => stop.hold_until(deadline, clock),
                Ok(None) => tokio::time::sleep(s.renew_every).await,
                Err(RunLost) => return,
            }
        }
    }

    /// While the warm runs: publishes progress every `publish_interval`,
    /// renews the run every `renew_every` (a requested cancel stops the
    /// warm), checkpoints every `checkpoint_interval` (by the
    /// [`Cadence`] of a warm that follows another's work, if it does).
    /// Once the run is lost (another attempt holds it, or the deadline last
    /// granted passed without a renewal, however long an index call
    /// hangs), sets `lost` and interrupts the warm: from then on it starts
    /// no copy.
    ///
    /// No index call may hold the loop past the deadline: each is cut off
    /// in time for the check at the loop's top to run before it passes. A
    /// renewal may take up to half the run lease (an index under load
    /// answers in seconds, and a renewal cut at one second would lose runs
    /// to latency alone); a checkpoint at most one renewal interval, so a
    /// renewal still fits after it.
    async fn keep_run(
        &self,
        id: &str,
        ticket: &RunTicket,
        granted_until: Millis,
        progress: &Progress,
        stop: &StopSignal,
        lost: &AtomicBool,
    ) {
        let s = &self.settings;
        let (mut tick, tick_every) = ticker(s);
        let (mut since_renewal, mut since_checkpoint) = (Duration::ZERO, Duration::ZERO);
        let clock = &self.warmer.clock;
        let mut held_until = granted_until;
        // A copier's lease (creation, takeover) until a follower's renewal.
        let mut granted_for = s.run_ttl;
        let lose = || {
            lost.store(true, Ordering::Relaxed);
            stop.interrupt();
        };
        // The copies check the deadline themselves before each request: a
        // process woken from a pause past it sends nothing, even if a copy
        // runs before this loop does.
        let hold = |until: Millis| {
            stop.hold_until(until, clock);
        };
        hold(held_until);
        let bounded = |until: Millis, most: Duration| left_until(until, clock.now()).min(most);
        // What the last checkpoint wrote, so a follower writes only news.
        let mut written: Option<Shown> = None;
        loop {
            let now_please = tokio::select! {
                _ = tick.tick() => false,
                () = progress.checkpoint_now.notified() => true,
            };
            let cadence = Cadence::of(s, copies_nothing(progress));
            if now_please {
                since_checkpoint = cadence.checkpoint_every;
            }
            if clock.now() >= held_until {
                tracing::warn!(operation_id = %id, "the run's deadline passed without a renewal");
                return lose();
            }
            progress.publish();
            progress.export_metrics();
            since_renewal += tick_every;
            since_checkpoint += tick_every;
            // At most once a renewal interval, by `Cadence::renew_at`.
            let left = left_until(held_until, clock.now());
            if since_renewal >= s.renew_every && left <= cadence.renew_at(s, granted_for) {
                since_renewal = Duration::ZERO;
                let within = cadence.renewal_within(s, left);
                match self.renew(id, ticket, cadence.run_ttl, within, stop).await {
                    Ok(Some(deadline)) => {
                        held_until = deadline;
                        granted_for = cadence.run_ttl;
                        hold(held_until);
                    }
                    // Past its deadline another replica may hold it: the
                    // check at the top of the loop stops the warm then.
                    Ok(None) => {}
                    Err(RunLost) => return lose(),
                }
            }
            if since_checkpoint >= cadence.checkpoint_every {
                since_checkpoint = Duration::ZERO;
                // Bounded like the renewal: a hung checkpoint must not hold
                // the loop past the deadline, or a takeover could run beside
                // this attempt.
                let within = bounded(held_until, s.renew_every);
                let news_only = cadence.only_news && !now_please;
                let checkpoint =
                    self.write_checkpoint(id, ticket, progress, news_only, &mut written, within);
                if let Err(RunLost) = in_lane(cadence.lane(now_please), checkpoint).await {
                    return lose();
                }
            }
        }
    }

    /// The run's deadline to start with: `granted_until`, unless less than
    /// half a run lease of it is left (the index took that long to create
    /// or take over the operation: a slow or throttled index, a job
    /// array's burst). Then the run is renewed first, or the warm would
    /// start past its deadline and be handed on at once, by every replica
    /// in turn. Nothing of this attempt ran yet, so a renewal granted
    /// after the deadline revives nothing (the renewal is fenced: refused
    /// if another replica took the run over meanwhile; then `lost` is set
    /// and the deadline is one already passed, so nothing is sent).
    async fn fresh_grant(
        &self,
        id: &str,
        ticket: &RunTicket,
        granted_until: Millis,
        stop: &StopSignal,
        lost: &AtomicBool,
    ) -> Millis {
        let ttl = self.settings.run_ttl;
        if left_until(granted_until, self.warmer.clock.now()) >= ttl / 2 {
            return granted_until;
        }
        // Tried again within half a lease: a lost reply or a throttle
        // would otherwise start the warm past its deadline and hand it on
        // (a renewal whose reply was lost is found held by the next one).
        let budget = tokio::time::Instant::now() + ttl / 2;
        let backoff = expresscache::Backoff::new(Duration::from_millis(20), ttl / 8);
        let mut attempt = 0;
        loop {
            let within = budget.saturating_duration_since(tokio::time::Instant::now());
            match self.renew(id, ticket, ttl, within, stop).await {
                Ok(Some(deadline)) => return deadline,
                Ok(None) => {}
                Err(RunLost) => {
                    lost.store(true, Ordering::Relaxed);
                    return 0;
                }
            }
            attempt += 1;
            let pause = backoff.delay_at(attempt, fastrand::f64());
            if tokio::time::Instant::now() + pause >= budget {
                // The index still too slow: as granted (the keeper hands
                // the run on if it lapsed).
                return granted_until;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Renews `ticket`'s run for `run_ttl` from now, waiting at most
    /// `within`, and cancels the warm if a cancel was requested through
    /// the log. The new deadline, or `None` if the index did not answer
    /// in time or failed (logged).
    async fn renew(
        &self,
        id: &str,
        ticket: &RunTicket,
        run_ttl: Duration,
        within: Duration,
        stop: &StopSignal,
    ) -> Result<Option<Millis>, RunLost> {
        let deadline = self.warmer.clock.now().saturating_add(span_millis(run_ttl));
        let renewal = tokio::time::timeout(within, self.index().renew_run(id, ticket, deadline))
            .await
            .unwrap_or_else(|_| {
                Err(crate::index::IndexError::Unavailable(
                    "renewing the run timed out".into(),
                ))
            });
        match renewal {
            Ok(Renewal::Held { cancel_requested }) => {
                if cancel_requested && !stop.is_set() {
                    tracing::info!(operation_id = %id, "cancel requested through the log");
                    stop.cancel();
                }
                Ok(Some(deadline))
            }
            Ok(Renewal::Lost) => Err(RunLost),
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "could not renew the run");
                Ok(None)
            }
        }
    }

    /// Writes the warm's progress as the operation's under `ticket`,
    /// waiting at most `within`; with `news_only`, only if what it shows
    /// moved since `written` (what the last checkpoint wrote). Other
    /// replicas' status and list read it. A failure is logged; the next
    /// checkpoint tries again.
    async fn write_checkpoint(
        &self,
        id: &str,
        ticket: &RunTicket,
        progress: &Progress,
        news_only: bool,
        written: &mut Option<Shown>,
        within: Duration,
    ) -> Result<(), RunLost> {
        let snapshot = progress.snapshot();
        let shown = (
            snapshot.phase,
            snapshot.counters,
            snapshot.lease_epochs.len(),
        );
        if news_only && *written == Some(shown) {
            return Ok(());
        }
        let checkpoint =
            tokio::time::timeout(within, self.index().update_operation(id, ticket, &snapshot))
                .await
                .unwrap_or_else(|_| {
                    Err(crate::index::IndexError::Unavailable(
                        "checkpointing the operation timed out".into(),
                    ))
                });
        match checkpoint {
            Ok(true) => {
                *written = Some(shown);
                Ok(())
            }
            Ok(false) => Err(RunLost),
            // A news-only checkpoint of a warm that copies nothing (it
            // follows another's work, or waits for a round or a slot) shows
            // little the log lacks (its final state is written on its own,
            // and a checkpoint asked for now is not news-only): in a job
            // array's burst hundreds of them time out waiting in this
            // replica's queue, having sent nothing, and warnings would
            // bury the ones that matter (1,000-1,300 a replica per herd).
            Err(e) if news_only => {
                tracing::debug!(operation_id = %id, error = %e,
                    "a progress checkpoint of a warm that copies nothing failed; the next one carries it");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "progress checkpoint failed");
                Ok(())
            }
        }
    }

    async fn checkpoint(&self, id: &str, ticket: &RunTicket, progress: &Progress) {
        if let Err(e) = self
            .index()
            .update_operation(id, ticket, &progress.snapshot())
            .await
        {
            tracing::error!(operation_id = %id, error = %e, "could not checkpoint the interrupted warm");
        }
    }
}

/// The final state of warm `id` that ended with `result`, counted in the
/// metrics, on the warm's span and in the log.
fn final_state(
    id: &str,
    result: Result<crate::warm::WarmOutcome, WarmError>,
    progress: &Progress,
) -> OperationState {
    let last = match result {
        Err(e @ WarmError::LeaseEnded { .. }) => {
            tracing::warn!(operation_id = %id, error = %e, "warm stopped: its lease was evicted");
            progress.final_state(Outcome::Cancelled, Some(e.to_string()))
        }
        Err(e) => {
            tracing::warn!(operation_id = %id, error = %e, "warm failed");
            progress.final_state(Outcome::Failed, Some(e.to_string()))
        }
        Ok(outcome) => progress.final_state(outcome.outcome(), None),
    };
    if let Some(outcome) = last.outcome {
        metrics::counter!(crate::metrics::WARMS_FINISHED, "outcome" => outcome.label())
            .increment(1);
        tracing::Span::current().record("outcome", outcome.label());
    }
    let c = last.counters;
    tracing::info!(operation_id = %id, outcome = ?last.outcome,
        listed = c.objects_listed, hits = c.objects_hit, copied = c.objects_copied,
        shared = c.objects_shared, failed = c.objects_failed, bytes_copied = c.bytes_copied, "warm finished");
    last
}

/// What a checkpoint showed: the phase, the counters and how many lease
/// epochs it carried (a takeover needs the epochs to tell an evicted lease
/// from one to extend), so a follower's checkpoints write only news.
type Shown = (Phase, crate::core::operation::Counters, usize);

/// The run keeper's tick (publishing, and the renewal and checkpoint
/// counts), and its period: the shorter of the publish and renewal
/// intervals, at least 10 ms; a late tick is skipped, not caught up.
fn ticker(s: &super::OpsSettings) -> (tokio::time::Interval, Duration) {
    let every = s
        .publish_interval
        .min(s.renew_every)
        .max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    (tick, every)
}

/// How long from `now` until `deadline` (zero once it passed).
fn left_until(deadline: Millis, now: Millis) -> Duration {
    Duration::from_millis(deadline.saturating_sub(now).max(0).unsigned_abs())
}

/// How often a run is renewed (and for how long) and checkpointed. A warm
/// that follows another's work (a job array's joiner) copies nothing, so
/// nothing needs fencing within seconds: its run is renewed rarely, for
/// long, and checkpointed only when its shown progress moved. A herd of a
/// thousand joiners then costs the index tens of writes a second, not
/// thousands; only their takeover after a crash waits longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cadence {
    pub run_ttl: Duration,
    pub renew_every: Duration,
    pub checkpoint_every: Duration,
    /// Checkpoint only a state whose phase or counters moved.
    pub only_news: bool,
}

/// Whether the warm copies nothing now: it follows another's work (a
/// joiner), or waits for the round under way or for a running slot (a job
/// array's rounds queue so). Its run is renewed at a follower's cadence.
fn copies_nothing(progress: &Progress) -> bool {
    // Still queued: a split warm's other part may lead and copy while
    // this one waits, and then its phase moved on.
    progress.joined().is_some() || (progress.waiting() && progress.phase() == Phase::Queued)
}

/// How much longer a follower's run lasts, and how much less often it is
/// renewed and checkpointed, than a run that copies: still three renewals
/// per run lease.
const FOLLOWER_FACTOR: u32 = 6;

impl Cadence {
    /// The lane of this warm's checkpoints: a follower's are bookkeeping
    /// (`index::lane`), unless one was asked for now (`asked`): that one
    /// carries what a takeover needs (lease epochs, a Batch job).
    fn lane(&self, asked: bool) -> Lane {
        if self.only_news && !asked {
            Lane::Bulk
        } else {
            Lane::Work
        }
    }

    /// How much of the deadline may be left, granted for `granted`, when
    /// the run is renewed: a copier's, once a renewal interval of it is
    /// used; a follower's, once a third of the lease it holds is used,
    /// also while that is still a copier's (its creation's: a job array's
    /// joiner), not at once: a joiner whose round ends within a third of
    /// its first lease writes no renewal at all. Renewed at once instead
    /// (to move on to its long lease), each of a thousand launchers'
    /// joiners wrote one or two in the burst, as many writes as their
    /// creations.
    pub(super) fn renew_at(&self, s: &super::OpsSettings, granted: Duration) -> Duration {
        if self.only_news {
            granted.saturating_sub(granted / 3)
        } else {
            s.run_ttl.saturating_sub(s.renew_every)
        }
    }

    /// How long one renewal may take with `left` of the deadline left:
    /// up to half a run lease, and for a follower at most half of what is
    /// left, so a renewal that hangs (a throttled, saturated index) still
    /// leaves time for another try before the deadline.
    pub(super) fn renewal_within(&self, s: &super::OpsSettings, left: Duration) -> Duration {
        let most = left.min(s.run_ttl / 2);
        if self.only_news {
            most.min(left / 2)
        } else {
            most
        }
    }

    pub(super) fn of(s: &super::OpsSettings, following: bool) -> Self {
        if following {
            let run_ttl = s.run_ttl * FOLLOWER_FACTOR;
            Self {
                run_ttl,
                renew_every: (run_ttl / 3).max(s.renew_every),
                checkpoint_every: s.checkpoint_interval * FOLLOWER_FACTOR,
                only_news: true,
            }
        } else {
            Self {
                run_ttl: s.run_ttl,
                renew_every: s.renew_every,
                checkpoint_every: s.checkpoint_interval,
                only_news: false,
            }
        }
    }
}

/// `state` without its failure list (counted as omitted instead) and its
/// lease epochs (recorded apart with the final state): what is left of a
/// final state too large to record.
fn without_failures(mut state: OperationState) -> OperationState {
    state.failures_omitted += state.failures.len() as u64;
    state.failures.clear();
    state.lease_epochs.clear();
    state
}

/// `state` as FAILED because its outcome could not be recorded.
fn failed_to_record(mut state: OperationState, err: &crate::index::IndexError) -> OperationState {
    state = without_failures(state);
    state.empty_prefixes.clear();
    state.outcome = Some(Outcome::Failed);
    state.error = Some(format!("the outcome could not be recorded: {err}"));
    state
}

/// Another attempt holds the run (or the operation finished under it):
/// this one must stop.
struct RunLost;
