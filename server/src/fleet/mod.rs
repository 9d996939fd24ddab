//! The operation registry: starts warms detached from the RPC that asked for
//! them, makes `request_id` submission idempotent, lets any number of
//! callers follow, cancel and list operations, and drains on shutdown.
//!
//! Several replicas may share one operation log. Each running operation has
//! a run lease in the log (replica, attempt, deadline): `run.rs` renews it,
//! checkpoints under it and stops when it is lost (fencing); `adopt.rs`
//! takes over operations whose run lapsed (a crashed, paused or partitioned
//! replica) and resumes them; `feed.rs` follows an operation wherever it
//! runs. Cancel works from any replica through a flag in the record.

mod admission;
mod adopt;
mod arrivals;
mod coalesce;
mod feed;
mod membership;
mod merge;
mod remote;
mod round;
mod run;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use expresscache::{Limits, WarmSpec};
use futures::stream::BoxStream;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::core::judge::Judge;
use crate::core::operation::{OperationRecord, OperationState, Outcome, RunLease, RunTicket};
use crate::index::lane::{in_lane, Lane};
use crate::index::{
    span_millis, CreateOutcome, FleetIndex, IndexError, Millis, OpFilter, RunTerms,
};
use crate::progress::Progress;
use crate::stop::StopSignal;
use crate::warm::Warmer;

use feed::Follow;

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("request_id {request_id:?} is already used by operation {operation_id} with a different request")]
    RequestIdConflict {
        request_id: String,
        operation_id: String,
    },
    #[error("the server is shutting down and accepts no new warms; retry against another replica or after the restart")]
    Draining,
    #[error("this server runs {running} warms and has {queued} queued (its limits: --max-running-warms, --max-queued-warms); retry later or against another replica")]
    Busy { running: usize, queued: usize },
    #[error("principal {principal:?} has {in_progress} warms in progress on this server, its limit (--max-warms-per-principal); retry when one ends")]
    PrincipalBusy {
        principal: String,
        in_progress: usize,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// The index key of a request id: the id itself for an anonymous caller
/// (as stored before principals), else the id and the owner, so one
/// principal's id never attaches another's operation. A space cannot
/// occur in a request id, so keys never collide.
fn request_key(request_id: &str, owner: Option<&str>) -> String {
    match owner {
        None => request_id.to_owned(),
        Some(o) => format!("{request_id} {o}"),
    }
}

/// Follows one operation's progress until its Done state.
pub type Subscription = watch::Receiver<OperationState>;

/// Why an operation's feed ended before its Done state.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the server is shutting down; the warm goes on: reattach with the same request_id or watch the operation after the restart")]
    Draining,
    #[error("operation {0} disappeared from the operation log")]
    Vanished(String),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// An operation's states, oldest first, ending with its Done state (or a
/// [`FeedError`]).
pub type Feed = BoxStream<'static, Result<OperationState, FeedError>>;

/// Timing of the registry's background work.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// How often a running warm publishes progress to its followers.
    pub publish_interval: Duration,
    /// How often a running warm's progress is written to the index.
    pub checkpoint_interval: Duration,
    /// How long finished operations are kept.
    pub retention: Duration,
    /// Times an unfinished warm is resumed by server starts before it is
    /// failed instead (a warm that crashes the server must not do so on
    /// every start).
    pub max_resumptions: u32,
    /// How often a follower of an operation that runs elsewhere (another
    /// replica, or awaiting resumption) reads its state from the log.
    pub follow_poll: Duration,
    /// This replica's name in run leases.
    pub replica: String,
    /// How long a run lease lasts unless renewed: a replica that dies (or
    /// is paused, or cut off) loses its operations this long after its last
    /// renewal, plus the clock skew margin.
    pub run_ttl: Duration,
    /// How often a running warm renews its run lease, which is also how
    /// soon it sees a cancel requested through another replica.
    pub renew_every: Duration,
    /// How often a replica looks for operations whose run lapsed.
    pub adopt_every: Duration,
    /// How far clocks may disagree (a run is taken over only this long past
    /// its deadline).
    pub skew_margin: Duration,
    /// How long a Cancel sent to one replica waits for the replica running
    /// the operation to stop it.
    pub cancel_wait: Duration,
    /// Warms running at once on this replica; more wait in phase QUEUED.
    pub max_running: usize,
    /// Warms waiting for a running slot; past it new warms are refused.
    pub max_queued: usize,
    /// How long the final state of a warm is tried while the index is
    /// busy before the run is handed on (released, not counted a crash).
    pub final_write_budget: Duration,
    /// Warms in progress (running or queued) of one authenticated
    /// principal on this replica; past it its new warms are refused
    /// (0: no limit).
    pub max_per_principal: usize,
    /// How long a round waits at most for the warms on their way to it
    /// (submitted here, still being created: `arrivals`).
    pub gather_at_most: Duration,
    /// How long the first warm of a burst, on a replica with peers, waits
    /// (offered) for an older warm of the same request on another replica
    /// to join, before it lists (`merge.rs`).
    pub join_window: Duration,
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self::from(&crate::config::Config::default())
    }
}

impl From<&crate::config::Config> for OpsSettings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            publish_interval: c.publish_interval,
            checkpoint_interval: c.checkpoint_interval,
            retention: c.operation_retention,
            max_resumptions: c.max_resumptions,
            follow_poll: c.follow_poll,
            replica: c.replica_id.clone(),
            run_ttl: c.run_lease_ttl,
            renew_every: c.run_renew_interval,
            adopt_every: c.adopt_interval,
            skew_margin: c.clock_skew_margin,
            cancel_wait: c.cancel_wait,
            max_running: c.max_running_warms,
            max_queued: c.max_queued_warms,
            max_per_principal: c.max_warms_per_principal,
            final_write_budget: c.index_retry_budget,
            gather_at_most: arrivals::GATHER_AT_MOST,
            join_window: merge::JOIN_WINDOW,
        }
    }
}

#[derive(Debug)]
struct LiveOp {
    request: WarmSpec,
    owner: Option<String>,
    /// Its place among the accepted warms, given back when it ends.
    _place: admission::Ticket,
    /// What it lists itself, while it runs its own warm (others may join
    /// it): its request, or the part of it that no other warm covered;
    /// `None` while it follows another's warm or has not started yet.
    leading: Option<WarmSpec>,
    progress: Arc<Progress>,
    stop: Arc<StopSignal>,
    created_at: i64,
    resumptions: u32,
    ticket: RunTicket,
}

/// Running and recent operations.
#[derive(Debug)]
pub struct Operations {
    warmer: Arc<Warmer>,
    /// The operation log, run leases and replica registry (the same
    /// backend as the warmer's cache index).
    index: Arc<dyn FleetIndex>,
    live: Mutex<HashMap<String, LiveOp>>,
    /// Signalled whenever a live operation ends.
    ended: Notify,
    settings: OpsSettings,
    limits: Limits,
    draining: watch::Sender<bool>,
    admission: Arc<admission::Admission>,
    /// Joinable warms of other replicas, and the readers of those joined.
    remote: remote::Remote,
    /// What the look for lapsed runs last read of other replicas' runs.
    seen: adopt::RunsSeen,
    /// Warms submitted here and not yet at a round (`arrivals`).
    arrivals: arrivals::Arrivals,
}

impl Operations {
    /// This replica's name in run leases and the registry.
    pub fn replica(&self) -> &str {
        &self.settings.replica
    }

    /// How far clocks may disagree.
    pub fn skew_margin(&self) -> Duration {
        self.settings.skew_margin
    }

    pub fn new(
        warmer: Arc<Warmer>,
        index: Arc<dyn FleetIndex>,
        settings: OpsSettings,
        limits: Limits,
    ) -> Self {
        Self {
            index,
            admission: Arc::new(admission::Admission::new(
                settings.max_running,
                settings.max_queued,
                settings.max_per_principal,
            )),
            warmer,
            live: Mutex::default(),
            ended: Notify::new(),
            settings,
            limits,
            draining: watch::channel(false).0,
            remote: remote::Remote::default(),
            seen: adopt::RunsSeen::default(),
            arrivals: arrivals::Arrivals::default(),
        }
    }

    /// The warmer the operations run on.
    pub fn warmer(&self) -> &Arc<Warmer> {
        &self.warmer
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveOp>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> &dyn FleetIndex {
        self.index.as_ref()
    }

    /// "Now" by the clock, and "now" for judging others' run leases (the
    /// clock minus the skew margin).
    fn now(&self) -> (Millis, Millis) {
        let now = self.warmer.clock.now();
        (now, Judge::new(self.settings.skew_margin).settled(now))
    }

    /// The terms on which this replica takes a run now.
    fn run_terms(&self) -> RunTerms<'_> {
        let (now, judged) = self.now();
        RunTerms {
            replica: &self.settings.replica,
            deadline: now.saturating_add(span_millis(self.settings.run_ttl)),
            now: judged,
        }
    }

    /// Becomes true when the server starts shutting down.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Starts a warm for `owner` (`None`: an anonymous caller), or attaches
    /// to the operation that already holds the request's `request_id` for
    /// the same owner: request ids are scoped per principal.
    pub async fn submit(
        self: &Arc<Self>,
        spec: WarmSpec,
        owner: Option<String>,
    ) -> Result<Subscription, SubmitError> {
        if *self.draining.borrow() {
            return Err(SubmitError::Draining);
        }
        // A place among the accepted warms, taken before the first await
        // (a burst of submissions cannot all pass one check); given back
        // if this submission starts nothing. A resubmission of a running
        // request_id attaches even when the server is full.
        let place = match self.admission.admit(owner.as_deref()) {
            Ok(place) => place,
            Err(refusal) => {
                if let Some(attached) = self.attach_live(&spec, owner.as_deref()) {
                    return Ok(attached);
                }
                return Err(match refusal {
                    admission::Refusal::Full { running, queued } => {
                        SubmitError::Busy { running, queued }
                    }
                    admission::Refusal::Principal { in_progress } => SubmitError::PrincipalBusy {
                        principal: owner.unwrap_or_default(),
                        in_progress,
                    },
                });
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        // On its way to a round while its creation waits in the index.
        let on_the_way = self.arrivals.expect(&id, &spec);
        let (progress, rx) = Progress::new(id.clone(), Arc::clone(&self.warmer.clock));
        let ticket = RunTicket {
            replica: self.settings.replica.clone(),
            attempt: 1,
        };
        let granted_until = self.run_terms().deadline;
        let mut record = OperationRecord {
            id: id.clone(),
            request_id: spec
                .request_id
                .as_ref()
                .map(|r| request_key(r.as_str(), owner.as_deref())),
            request: spec.clone(),
            owner,
            state: progress.snapshot(),
            created_at: self.warmer.clock.now(),
            resumptions: 0,
            run: Some(RunLease {
                ticket: ticket.clone(),
                deadline: granted_until,
                cancel_requested: false,
                joinable: false,
            }),
        };
        // The index decides who owns a request id, so two racing submissions
        // end up on one operation.
        loop {
            // Bookkeeping: a job array's burst of creations must not hold
            // up the work of the warm they will join (`index::lane`).
            let create = self.index().create_operation(&record);
            let existing = match in_lane(Lane::Bulk, create).await? {
                CreateOutcome::Created => break,
                CreateOutcome::Exists(existing) => existing,
            };
            if existing.request != spec {
                return Err(SubmitError::RequestIdConflict {
                    request_id: spec
                        .request_id
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    operation_id: existing.id,
                });
            }
            if !existing.is_done() || self.still_backed(&existing).await? {
                tracing::info!(operation_id = %existing.id, "request_id matched; attaching");
                return Ok(self.follow(*existing));
            }
            // The earlier operation finished and no longer stands for data
            // in the cache (its leases expired or were evicted): attaching
            // would report a stale success. Start afresh under the same
            // request id; if a racing resubmission moved it first, attach
            // to that one on the next round.
            progress.set_superseded(&existing.id);
            record.state = progress.snapshot();
            if self
                .index()
                .supersede_operation(&existing.id, &record)
                .await?
            {
                tracing::info!(operation_id = %id, superseded = %existing.id,
                    "request_id reused after its operation's leases ended; starting a new warm");
                break;
            }
        }
        tracing::info!(operation_id = %id, source = %spec.source, directory_bucket = %spec.directory_bucket, prefixes = spec.prefixes.len(), force_copy = spec.force_copy, "warm started");
        on_the_way.keep();
        self.start(record, spec, progress, ticket, granted_until, place);
        Ok(rx)
    }

    /// A subscription to the live operation of this replica that holds
    /// `spec`'s request_id for the same request.
    fn attach_live(&self, spec: &WarmSpec, owner: Option<&str>) -> Option<Subscription> {
        spec.request_id.as_ref()?;
        self.live()
            .values()
            .find(|op| op.request == *spec && op.owner.as_deref() == owner)
            .map(|op| op.progress.subscribe())
    }

    /// Whether a finished operation still stands for data in the cache:
    /// every lease it wrote is live and is the very lease it wrote (same
    /// epoch: not ended by an Evict, not swept, not lapsed and revived by
    /// another warm since). An operation with no recorded epochs (it never
    /// wrote a lease, was failed without running, or comes from an earlier
    /// release) stands for nothing: a resubmission starts afresh, which at
    /// worst re-lists what is cached.
    async fn still_backed(&self, op: &OperationRecord) -> Result<bool, IndexError> {
        let spec = &op.request;
        let epochs: HashMap<String, String> = self
            .index()
            .lease_epochs(&op.id)
            .await?
            .into_iter()
            .collect();
        if epochs.is_empty() {
            return Ok(false);
        }
        let now = self.warmer.clock.now();
        let dir = spec.directory_bucket.as_str();
        for prefix in spec.lease_prefixes() {
            let Some(epoch) = epochs.get(prefix.as_str()) else {
                return Ok(false);
            };
            let live = self
                .index()
                .covering_leases(dir, prefix.as_str(), now)
                .await?
                .into_iter()
                .any(|l| {
                    l.prefix == prefix.as_str()
                        && l.source_bucket == spec.source.as_str()
                        && l.epoch == *epoch
                });
            if !live {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs `record` as `ticket`, whose run the log granted until
    /// `granted_until`.
    fn start(
        self: &Arc<Self>,
        record: OperationRecord,
        spec: WarmSpec,
        progress: Progress,
        ticket: RunTicket,
        granted_until: Millis,
        place: admission::Ticket,
    ) {
        // Started or resumed here: every attempt that ends counts one
        // finished, so started - finished is what runs now.
        metrics::counter!(crate::metrics::WARMS_STARTED).increment(1);
        let progress = Arc::new(progress);
        let stop = Arc::new(StopSignal::default());
        self.live().insert(
            record.id.clone(),
            LiveOp {
                request: record.request,
                owner: record.owner,
                _place: place,
                leading: None,
                progress: Arc::clone(&progress),
                stop: Arc::clone(&stop),
                created_at: record.created_at,
                resumptions: record.resumptions,
                ticket: ticket.clone(),
            },
        );
        // Under the RPC that started it (if any): the caller's trace holds
        // the warm. Every log line of the warm carries its operation id.
        let span = tracing::info_span!("warm",
            otel.name = "warm",
            operation_id = %record.id,
            source_bucket = %spec.source,
            directory_bucket = %spec.directory_bucket,
            prefixes = spec.prefixes.len(),
            attempt = ticket.attempt,
            outcome = tracing::field::Empty);
        let this = Arc::clone(self);
        let id = record.id.clone();
        let run = tokio::spawn(
            async move {
                this.drive(record.id, spec, progress, stop, ticket, granted_until)
                    .await
            }
            .instrument(span),
        );
        // A warm whose task panicked leaves the registry all the same: it
        // must not stay joinable (its joiners then go on without it) nor
        // hold its place; the log still holds its run, which lapses and
        // is taken over.
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = run.await {
                if e.is_panic() {
                    tracing::error!(operation_id = %id, "the warm's task panicked; it is left for a takeover");
                    this.forget(&id);
                }
            }
        });
    }

    /// A subscription to a live operation, or to a recorded one: its final
    /// state, or (if it runs elsewhere or awaits resumption) its recorded
    /// state with a closed channel, which tells the follower to poll.
    fn follow(&self, record: OperationRecord) -> Subscription {
        if let Some(op) = self.live().get(&record.id) {
            return op.progress.subscribe();
        }
        watch::channel(record.state).1
    }

    /// An operation's states from `sub` onwards, wherever it runs: from
    /// the live channel while this server runs it, from the operation log
    /// (read every `follow_poll`) once that channel closes or if it never
    /// was live here; until its Done state. Ends with
    /// [`FeedError::Draining`] when this server starts shutting down, so
    /// the follower reattaches elsewhere.
    pub fn feed(self: &Arc<Self>, sub: Subscription) -> Feed {
        let follow = Follow {
            ops: Arc::clone(self),
            draining: self.draining(),
            sub,
            live: true,
            last: None,
            ended: false,
        };
        Box::pin(futures::stream::unfold(follow, |mut f| async move {
            f.next().await.map(|item| (item, f))
        }))
    }

    /// Follows an operation by id.
    pub async fn watch(&self, id: &str) -> Result<Option<Subscription>, IndexError> {
        if let Some(op) = self.live().get(id) {
            return Ok(Some(op.progress.subscribe()));
        }
        Ok(self
            .index()
            .get_operation(id)
            .await?
            .map(|r| self.follow(r)))
    }

    fn forget(&self, id: &str) {
        self.arrivals.arrived(id);
        self.live().remove(id);
        self.ended.notify_waiters();
    }

    /// The request and latest state of an operation, live or recorded.
    pub async fn status(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        if let Some(op) = self.live().get(id) {
            return Ok(Some(OperationRecord {
                id: id.to_owned(),
                request_id: op
                    .request
                    .request_id
                    .as_ref()
                    .map(|r| request_key(r.as_str(), op.owner.as_deref())),
                request: op.request.clone(),
                owner: op.owner.clone(),
                state: op.progress.current(),
                created_at: op.created_at,
                resumptions: op.resumptions,
                run: Some(RunLease {
                    ticket: op.ticket.clone(),
                    deadline: self.run_terms().deadline,
                    cancel_requested: op.stop.is_set(),
                    joinable: false,
                }),
            }));
        }
        self.index().get_operation(id).await
    }

    /// Cancels an operation, wherever it runs, and waits until it has
    /// stopped (at most `cancel_wait` for another replica's run); returns
    /// its state then. A finished operation is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        // The flag first: the run here may have been taken over by another
        // replica (this one only winding down), and that one must stop too.
        let flagged = self.index().request_cancel(id).await?;
        let stop = self.live().get(id).map(|op| Arc::clone(&op.stop));
        if let Some(stop) = stop {
            tracing::info!(operation_id = %id, "cancelling");
            stop.cancel();
            self.wait_ended(id).await;
            return self.status(id).await;
        }
        let Some(rec) = self.index().get_operation(id).await? else {
            return Ok(None);
        };
        if rec.is_done() || !flagged {
            return self.status(id).await;
        }
        // Nobody runs it (it awaits a takeover): end it here and now.
        if let Some(t) = self.index().take_over(id, &self.run_terms()).await? {
            tracing::info!(operation_id = %id, "cancelled while no replica ran it");
            let last = rec.state.ended(Outcome::Cancelled, None);
            self.index().update_operation(id, &t.ticket, &last).await?;
            return self.status(id).await;
        }
        // Another replica runs it: it sees the flag when it next renews.
        tracing::info!(operation_id = %id, "cancel requested from the replica running it");
        let waited = tokio::time::timeout(self.settings.cancel_wait, async {
            loop {
                tokio::time::sleep(self.settings.follow_poll).await;
                match self.index().get_operation(id).await {
                    Ok(Some(r)) if !r.is_done() => {}
                    other => return other,
                }
            }
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(_) => self.status(id).await,
        }
    }

    async fn wait_ended(&self, id: &str) {
        loop {
            let ended = self.ended.notified();
            if !self.live().contains_key(id) {
                return;
            }
            ended.await;
        }
    }

    /// A page of operations, newest first; live ones with fresh progress.
    pub async fn list(
        &self,
        filter: OpFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<(Vec<OperationRecord>, Option<(i64, String)>), IndexError> {
        let mut records = self.index().list_operations(filter, after, limit).await?;
        let next = (records.len() == limit)
            .then(|| records.last().map(|r| (r.created_at, r.id.clone())))
            .flatten();
        let live = self.live();
        for r in &mut records {
            if let Some(op) = live.get(&r.id) {
                r.state = op.progress.current();
            }
        }
        Ok((records, next))
    }

    /// Deletes finished operations older than the retention; returns how
    /// many.
    pub async fn purge(&self) -> Result<u64, IndexError> {
        let keep_ms = crate::index::span_millis(self.settings.retention);
        let before = self.warmer.clock.now().saturating_sub(keep_ms);
        self.index().purge_operations(before).await
    }

    /// Shutdown: refuse new warms and end every follower's stream (they
    /// reattach elsewhere or after the restart), give running warms `grace`
    /// to finish, then interrupt the rest (copies in flight finish and are
    /// recorded; the warm is checkpointed and resumes on restart).
    pub async fn drain(&self, grace: Duration) {
        self.draining.send_replace(true);
        let running = self.live().len();
        if running == 0 {
            return;
        }
        tracing::info!(running, grace = ?grace, "draining: waiting for running warms");
        let all_ended = async {
            loop {
                let ended = self.ended.notified();
                if self.live().is_empty() {
                    return;
                }
                ended.await;
            }
        };
        if tokio::time::timeout(grace, all_ended).await.is_ok() {
            return;
        }
        let stops: Vec<Arc<StopSignal>> = self
            .live()
            .values()
            .map(|op| Arc::clone(&op.stop))
            .collect();
        tracing::info!(
            interrupted = stops.len(),
            "grace period over: interrupting warms"
        );
        for s in &stops {
            s.interrupt();
        }
        loop {
            let ended = self.ended.notified();
            if self.live().is_empty() {
                return;
            }
            ended.await;
        }
    }
}
