//! The operation registry: starts warms detached from the RPC that asked for
//! them, makes `request_id` submission idempotent, and lets any number of
//! callers follow an operation's progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use expresscache::proto::v1 as pb;
use expresscache::WarmSpec;
use tokio::sync::watch;

use crate::index::{now_millis, CacheIndex, CreateOutcome, IndexError, OperationRecord};
use crate::progress::Progress;
use crate::store::ObjectStore;
use crate::warm::Warmer;

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("request_id {request_id:?} is already used by operation {operation_id} with a different request")]
    RequestIdConflict {
        request_id: String,
        operation_id: String,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Follows one operation's progress until its DONE message.
pub type Subscription = watch::Receiver<pb::WarmProgress>;

#[derive(Debug)]
struct LiveOp {
    request: pb::WarmCacheRequest,
    progress: Arc<Progress>,
}

/// Running and recent operations.
#[derive(Debug)]
pub struct Operations<S, I> {
    warmer: Arc<Warmer<S, I>>,
    live: Mutex<HashMap<String, LiveOp>>,
    publish_interval: Duration,
}

impl<S: ObjectStore, I: CacheIndex> Operations<S, I> {
    pub fn new(warmer: Arc<Warmer<S, I>>, publish_interval: Duration) -> Self {
        Self {
            warmer,
            live: Mutex::default(),
            publish_interval,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveOp>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a warm, or attaches to the operation that already holds the
    /// request's `request_id`.
    pub async fn submit(
        self: &Arc<Self>,
        spec: WarmSpec,
        request: pb::WarmCacheRequest,
    ) -> Result<Subscription, SubmitError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (progress, rx) = Progress::new(id.clone());
        let record = OperationRecord {
            id: id.clone(),
            request_id: spec.request_id.as_ref().map(|r| r.to_string()),
            request: request.clone(),
            progress: progress.snapshot(),
            created_at: now_millis(),
        };
        // The index decides who owns a request id, so two racing submissions
        // (even on two replicas) end up on one operation.
        if let CreateOutcome::Exists(existing) = self.warmer.index.create_operation(&record).await?
        {
            return self.attach(*existing, &request);
        }
        let progress = Arc::new(progress);
        self.live().insert(
            id.clone(),
            LiveOp {
                request,
                progress: Arc::clone(&progress),
            },
        );
        tracing::info!(operation_id = %id, source = %spec.source, directory_bucket = %spec.directory_bucket, prefixes = spec.prefixes.len(), force_copy = spec.force_copy, "warm started");
        let this = Arc::clone(self);
        tokio::spawn(async move { this.drive(id, spec, progress).await });
        Ok(rx)
    }

    fn attach(
        &self,
        existing: OperationRecord,
        request: &pb::WarmCacheRequest,
    ) -> Result<Subscription, SubmitError> {
        if existing.request != *request {
            return Err(SubmitError::RequestIdConflict {
                request_id: existing.request_id.unwrap_or_default(),
                operation_id: existing.id,
            });
        }
        tracing::info!(operation_id = %existing.id, "request_id matched; attaching");
        if let Some(op) = self.live().get(&existing.id) {
            return Ok(op.progress.subscribe());
        }
        // Finished (or owned by another process): serve its last state.
        let (_tx, rx) = watch::channel(existing.progress);
        Ok(rx)
    }

    async fn drive(self: Arc<Self>, id: String, spec: WarmSpec, progress: Arc<Progress>) {
        let ticker = {
            let progress = Arc::clone(&progress);
            let every = self.publish_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    progress.publish();
                }
            })
        };
        let result = self.warmer.run(&spec, &progress, &id).await;
        ticker.abort();
        let last = match result {
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "warm failed");
                progress.finish(pb::Outcome::Failed, Some(e.to_string()))
            }
            Ok(()) if progress.failed.load(std::sync::atomic::Ordering::Relaxed) > 0 => {
                progress.finish(pb::Outcome::PartiallyFailed, None)
            }
            Ok(()) => progress.finish(pb::Outcome::Succeeded, None),
        };
        let c = last.counters.unwrap_or_default();
        tracing::info!(operation_id = %id, outcome = ?pb::Outcome::try_from(last.outcome).unwrap_or_default(),
            listed = c.objects_listed, hits = c.objects_hit, copied = c.objects_copied,
            failed = c.objects_failed, bytes_copied = c.bytes_copied, "warm finished");
        if let Err(e) = self.warmer.index.update_operation(&id, &last).await {
            tracing::error!(operation_id = %id, error = %e, "could not record the final state");
        }
        self.live().remove(&id);
    }

    /// The request and latest progress of an operation, live or recorded.
    pub async fn status(
        &self,
        id: &str,
    ) -> Result<Option<(pb::WarmCacheRequest, pb::WarmProgress)>, IndexError> {
        if let Some(op) = self.live().get(id) {
            return Ok(Some((op.request.clone(), op.progress.snapshot())));
        }
        Ok(self
            .warmer
            .index
            .get_operation(id)
            .await?
            .map(|r| (r.request, r.progress)))
    }
}
