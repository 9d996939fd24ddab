//! The operation registry: starts warms detached from the RPC that asked for
//! them, makes `request_id` submission idempotent, lets any number of
//! callers follow, cancel and list operations, checkpoints progress in the
//! index, resumes unfinished warms after a restart, and drains on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use expresscache::{Limits, WarmSpec};
use futures::stream::BoxStream;
use tokio::sync::{watch, Notify};

use crate::index::{CacheIndex, CreateOutcome, IndexError, OpFilter, OperationLog};
use crate::operation::{OperationRecord, OperationState, Outcome};
use crate::progress::Progress;
use crate::stop::{StopReason, StopSignal};
use crate::store::ObjectStore;
use crate::warm::{WarmOutcome, Warmer};

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
    #[error(transparent)]
    Index(#[from] IndexError),
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
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self::from(&crate::config::Config::default())
    }
}

impl From<&crate::config::Config> for OpsSettings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            publish_interval: Duration::from_millis(500),
            checkpoint_interval: Duration::from_secs(5),
            retention: c.operation_retention,
            max_resumptions: c.max_resumptions,
            follow_poll: Duration::from_millis(500),
        }
    }
}

#[derive(Debug)]
struct LiveOp {
    request: WarmSpec,
    progress: Arc<Progress>,
    stop: Arc<StopSignal>,
    created_at: i64,
    resumptions: u32,
}

/// Running and recent operations.
#[derive(Debug)]
pub struct Operations<S, I> {
    warmer: Arc<Warmer<S, I>>,
    live: Mutex<HashMap<String, LiveOp>>,
    /// Signalled whenever a live operation ends.
    ended: Notify,
    settings: OpsSettings,
    limits: Limits,
    draining: watch::Sender<bool>,
}

impl<S: ObjectStore, I: CacheIndex + OperationLog> Operations<S, I> {
    pub fn new(warmer: Arc<Warmer<S, I>>, settings: OpsSettings, limits: Limits) -> Self {
        Self {
            warmer,
            live: Mutex::default(),
            ended: Notify::new(),
            settings,
            limits,
            draining: watch::channel(false).0,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveOp>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> &I {
        &self.warmer.index
    }

    /// Becomes true when the server starts shutting down.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Starts a warm, or attaches to the operation that already holds the
    /// request's `request_id`.
    pub async fn submit(self: &Arc<Self>, spec: WarmSpec) -> Result<Subscription, SubmitError> {
        if *self.draining.borrow() {
            return Err(SubmitError::Draining);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let (progress, rx) = Progress::new(id.clone(), Arc::clone(&self.warmer.clock));
        let mut record = OperationRecord {
            id: id.clone(),
            request_id: spec.request_id.as_ref().map(|r| r.to_string()),
            request: spec.clone(),
            state: progress.snapshot(),
            created_at: self.warmer.clock.now(),
            resumptions: 0,
        };
        // The index decides who owns a request id, so two racing submissions
        // end up on one operation.
        loop {
            let existing = match self.index().create_operation(&record).await? {
                CreateOutcome::Created => break,
                CreateOutcome::Exists(existing) => existing,
            };
            if existing.request != spec {
                return Err(SubmitError::RequestIdConflict {
                    request_id: existing.request_id.unwrap_or_default(),
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
        self.start(record, spec, progress);
        Ok(rx)
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

    fn start(self: &Arc<Self>, record: OperationRecord, spec: WarmSpec, progress: Progress) {
        let progress = Arc::new(progress);
        let stop = Arc::new(StopSignal::default());
        self.live().insert(
            record.id.clone(),
            LiveOp {
                request: record.request,
                progress: Arc::clone(&progress),
                stop: Arc::clone(&stop),
                created_at: record.created_at,
                resumptions: record.resumptions,
            },
        );
        let this = Arc::clone(self);
        tokio::spawn(async move { this.drive(record.id, spec, progress, stop).await });
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

    async fn drive(
        self: Arc<Self>,
        id: String,
        spec: WarmSpec,
        progress: Arc<Progress>,
        stop: Arc<StopSignal>,
    ) {
        let ticker = {
            let (progress, this, id) = (Arc::clone(&progress), Arc::clone(&self), id.clone());
            tokio::spawn(async move {
                let every = this.settings.publish_interval;
                let checkpoint_every = this.settings.checkpoint_interval;
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut since_checkpoint = Duration::ZERO;
                loop {
                    tick.tick().await;
                    progress.publish();
                    since_checkpoint += every;
                    if since_checkpoint >= checkpoint_every {
                        since_checkpoint = Duration::ZERO;
                        // Other replicas' status and list read this.
                        if let Err(e) = this
                            .index()
                            .update_operation(&id, &progress.snapshot())
                            .await
                        {
                            tracing::warn!(operation_id = %id, error = %e, "progress checkpoint failed");
                        }
                    }
                }
            })
        };
        let result = self.warmer.run_until(&spec, &progress, &id, &stop).await;
        ticker.abort();
        if stop.reason() == Some(StopReason::Interrupted) {
            // Left unfinished on purpose: the next server start resumes it.
            let snapshot = progress.snapshot();
            if let Err(e) = self.index().update_operation(&id, &snapshot).await {
                tracing::error!(operation_id = %id, error = %e, "could not checkpoint the interrupted warm");
            }
            if let Err(e) = self.index().note_clean_stop(&id).await {
                tracing::warn!(operation_id = %id, error = %e, "could not note the clean stop");
            }
            tracing::info!(operation_id = %id, "warm interrupted by shutdown; it resumes on restart");
            progress.publish();
            self.forget(&id);
            return;
        }
        let last = match result {
            Err(e @ crate::warm::WarmError::LeaseEnded { .. }) => {
                tracing::warn!(operation_id = %id, error = %e, "warm stopped: its lease was evicted");
                progress.finish(Outcome::Cancelled, Some(e.to_string()))
            }
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "warm failed");
                progress.finish(Outcome::Failed, Some(e.to_string()))
            }
            Ok(WarmOutcome::Cancelled | WarmOutcome::Interrupted) => {
                progress.finish(Outcome::Cancelled, None)
            }
            Ok(WarmOutcome::PartiallyFailed) => progress.finish(Outcome::PartiallyFailed, None),
            Ok(WarmOutcome::Succeeded) => progress.finish(Outcome::Succeeded, None),
        };
        let c = last.counters;
        tracing::info!(operation_id = %id, outcome = ?last.outcome,
            listed = c.objects_listed, hits = c.objects_hit, copied = c.objects_copied,
            shared = c.objects_shared, failed = c.objects_failed, bytes_copied = c.bytes_copied, "warm finished");
        // Before the final state: once that is visible, a resubmission of
        // the request id checks these.
        if let Err(e) = self
            .index()
            .set_lease_epochs(&id, &progress.lease_epochs())
            .await
        {
            tracing::warn!(operation_id = %id, error = %e, "could not record the lease epochs");
        }
        if let Err(e) = self.index().update_operation(&id, &last).await {
            tracing::error!(operation_id = %id, error = %e, "could not record the final state");
        }
        self.forget(&id);
    }

    fn forget(&self, id: &str) {
        self.live().remove(id);
        self.ended.notify_waiters();
    }

    /// The request and latest state of an operation, live or recorded.
    pub async fn status(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        if let Some(op) = self.live().get(id) {
            return Ok(Some(OperationRecord {
                id: id.to_owned(),
                request_id: op.request.request_id.as_ref().map(ToString::to_string),
                request: op.request.clone(),
                state: op.progress.snapshot(),
                created_at: op.created_at,
                resumptions: op.resumptions,
            }));
        }
        self.index().get_operation(id).await
    }

    /// Cancels an operation and waits until it has stopped; returns its
    /// final state. A finished operation is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        let stop = self.live().get(id).map(|op| Arc::clone(&op.stop));
        match stop {
            Some(stop) => {
                tracing::info!(operation_id = %id, "cancelling");
                stop.cancel();
                self.wait_ended(id).await;
            }
            None => {
                // Recorded but not running here (interrupted, awaiting
                // resumption): end it as cancelled in the index.
                if let Some(rec) = self.index().get_operation(id).await? {
                    if !rec.is_done() {
                        let last = rec.state.ended(Outcome::Cancelled, None);
                        self.index().update_operation(id, &last).await?;
                    }
                }
            }
        }
        self.status(id).await
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
                r.state = op.progress.snapshot();
            }
        }
        Ok((records, next))
    }

    /// Restarts every unfinished operation recorded in the index (after a
    /// crash or shutdown). Already-copied objects are hits, so the work
    /// left is what was not done. Returns how many it resumed.
    pub async fn resume_unfinished(self: &Arc<Self>) -> Result<usize, IndexError> {
        const PAGE: usize = 100;
        let mut resumed = 0;
        let mut after = None;
        loop {
            let page = self
                .index()
                .list_operations(OpFilter::Running, after.clone(), PAGE)
                .await?;
            after = page.last().map(|r| (r.created_at, r.id.clone()));
            let full = page.len() == PAGE;
            for mut rec in page {
                if self.live().contains_key(&rec.id) {
                    continue;
                }
                let (progress, _rx) = Progress::new(rec.id.clone(), Arc::clone(&self.warmer.clock));
                // Only crashes count: rolling restarts interrupt long warms
                // cleanly, and those must go on however often it happens.
                let crashes = self.index().count_crash(&rec.id).await?;
                if crashes > self.settings.max_resumptions {
                    let reason = format!(
                        "not resumed: the server stopped without a clean shutdown {crashes} \
                         times while running it (the limit is {}); it may be what crashes \
                         the server, see its log",
                        self.settings.max_resumptions
                    );
                    tracing::error!(operation_id = %rec.id, crashes, "{reason}");
                    let last = rec.state.clone().ended(Outcome::Failed, Some(reason));
                    self.index().update_operation(&rec.id, &last).await?;
                    continue;
                }
                match rec.request.within(&self.limits) {
                    Ok(()) => {
                        rec.resumptions = self.index().mark_resumed(&rec.id).await?;
                        tracing::info!(operation_id = %rec.id, resumptions = rec.resumptions, "resuming unfinished warm");
                        let spec = rec.request.clone();
                        self.start(rec, spec, progress);
                        resumed += 1;
                    }
                    Err(e) => {
                        let last = progress.finish(
                            Outcome::Failed,
                            Some(format!("cannot resume under this server's limits: {e}")),
                        );
                        self.index().update_operation(&rec.id, &last).await?;
                    }
                }
            }
            if !full {
                return Ok(resumed);
            }
        }
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

/// The state of one [`Operations::feed`].
struct Follow<S, I> {
    ops: Arc<Operations<S, I>>,
    sub: Subscription,
    draining: watch::Receiver<bool>,
    /// Whether `sub` may still bring news.
    live: bool,
    /// The state last handed out.
    last: Option<OperationState>,
    ended: bool,
}

impl<S: ObjectStore, I: CacheIndex + OperationLog> Follow<S, I> {
    async fn next(&mut self) -> Option<Result<OperationState, FeedError>> {
        if self.ended {
            return None;
        }
        let Some(last) = &self.last else {
            let first = self.sub.borrow_and_update().clone();
            return Some(Ok(self.hand_out(first)));
        };
        if last.is_done() {
            return None;
        }
        let id = last.operation_id.clone();
        loop {
            if *self.draining.borrow() {
                return self.end(FeedError::Draining);
            }
            if self.live {
                tokio::select! {
                    changed = self.sub.changed() => {
                        if changed.is_ok() {
                            let state = self.sub.borrow_and_update().clone();
                            return Some(Ok(self.hand_out(state)));
                        }
                        // Closed without a Done state seen here: the run
                        // moved on (interrupted, or elsewhere); the final
                        // state may still arrive in the log.
                        self.live = false;
                    }
                    _ = self.draining.changed() => {}
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(self.ops.settings.follow_poll) => {}
                _ = self.draining.changed() => continue,
            }
            match self.ops.status(&id).await {
                Ok(Some(rec)) if self.last.as_ref() != Some(&rec.state) => {
                    return Some(Ok(self.hand_out(rec.state)));
                }
                Ok(Some(_)) => {}
                Ok(None) => return self.end(FeedError::Vanished(id)),
                Err(e) => return self.end(e.into()),
            }
        }
    }

    fn hand_out(&mut self, state: OperationState) -> OperationState {
        self.last = Some(state.clone());
        state
    }

    fn end(&mut self, e: FeedError) -> Option<Result<OperationState, FeedError>> {
        self.ended = true;
        Some(Err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SqliteIndex;
    use crate::store::MemoryStore;
    use crate::warm::WarmSettings;

    fn unfinished(id: &str, resumptions: u32) -> OperationRecord {
        OperationRecord {
            id: id.into(),
            request_id: None,
            request: WarmSpec {
                source: expresscache::BucketName::parse("src").unwrap(),
                prefixes: vec![expresscache::Prefix::parse("d/").unwrap()],
                directory_bucket: expresscache::DirectoryBucketName::parse("cache--use1-az4--x-s3")
                    .unwrap(),
                ttl: Duration::from_secs(60),
                force_copy: false,
                request_id: None,
                destination_prefix: expresscache::Prefix::root(),
            },
            state: OperationState {
                phase: crate::operation::Phase::Copying,
                ..OperationState::queued(id, 1)
            },
            created_at: 1,
            resumptions,
        }
    }

    #[tokio::test]
    async fn a_warm_interrupted_too_often_is_failed_not_resumed_again() {
        let store = MemoryStore::default();
        store.create_bucket("src");
        store.create_bucket("cache--use1-az4--x-s3");
        let index = Arc::new(SqliteIndex::open_in_memory().unwrap());
        index
            .create_operation(&unfinished("crashy", 3))
            .await
            .unwrap();
        index
            .create_operation(&unfinished("drained", 3))
            .await
            .unwrap();
        // Three earlier starts crashed while running `crashy`; `drained`
        // was interrupted by graceful shutdowns only.
        for _ in 0..3 {
            index.count_crash("crashy").await.unwrap();
            index.note_clean_stop("drained").await.unwrap();
            index.count_crash("drained").await.unwrap();
        }
        index.note_clean_stop("drained").await.unwrap();
        let warmer = Arc::new(Warmer::new(
            Arc::new(store),
            Arc::clone(&index),
            Arc::new(crate::clock::SystemClock),
            WarmSettings::default(),
        ));
        let ops = Arc::new(Operations::new(
            warmer,
            OpsSettings::default(),
            Limits::default(),
        ));
        assert_eq!(
            ops.resume_unfinished().await.unwrap(),
            1,
            "only the cleanly stopped one"
        );
        let crashy = index.get_operation("crashy").await.unwrap().unwrap();
        assert!(crashy.is_done());
        assert_eq!(crashy.state.outcome, Some(Outcome::Failed));
        let error = crashy.state.error.unwrap_or_default();
        assert!(error.contains("4 times"), "{error}");
        assert_eq!(crashy.resumptions, 3, "not counted as resumed again");
    }
}
