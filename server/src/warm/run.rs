//! One warm's state, and the pipeline that joins its parts: the lister
//! feeds the planner, the planner feeds the copy shards, the copiers feed
//! the entry writer, and the lease renewer runs beside them all.

use std::sync::atomic::{AtomicBool, Ordering};

use expresscache::WarmSpec;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::planning::CopyTask;
use super::writer::EntrySender;
use super::{WarmError, WarmOutcome, Warmer};
use crate::index::{release_or_lapse, span_millis, CacheIndex, ClaimTerms, Millis};
use crate::operation::Phase;
use crate::progress::Progress;
use crate::stop::{StopReason, StopSignal};
use crate::store::ObjectStore;

/// Copy tasks queued per shard: deep enough that the single planner rarely
/// waits on one full shard while others starve (head-of-line blocking).
const SHARD_DEPTH: usize = 256;

/// Copied entries queued for the writer.
const ENTRY_QUEUE: usize = 1024;

/// One warm while it runs: what it was asked, where it reports, who it is
/// in the index, and what stops it. Every part of the warm is a method on
/// this value, so none threads these through its arguments.
pub(super) struct WarmRun<'a, S, I> {
    pub w: &'a Warmer<S, I>,
    pub spec: &'a WarmSpec,
    pub progress: &'a Progress,
    /// The claim owner and lease writer: the operation id.
    pub owner: &'a str,
    pub stop: &'a StopSignal,
    /// Whether the Copying phase was announced yet.
    announced: AtomicBool,
}

impl<'a, S: ObjectStore, I: CacheIndex> WarmRun<'a, S, I> {
    pub fn new(
        w: &'a Warmer<S, I>,
        spec: &'a WarmSpec,
        progress: &'a Progress,
        owner: &'a str,
        stop: &'a StopSignal,
    ) -> Self {
        Self {
            w,
            spec,
            progress,
            owner,
            stop,
            announced: AtomicBool::new(false),
        }
    }

    pub async fn run(&self) -> Result<WarmOutcome, WarmError> {
        self.progress.set_phase(Phase::Planning);
        self.write_leases().await?;
        let shards = self.w.settings.shards.max(1);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| mpsc::channel::<CopyTask>(SHARD_DEPTH))
            .unzip();
        let (entry_tx, entry_rx) = mpsc::channel(ENTRY_QUEUE);
        let copier = self.copy_all(rxs, entry_tx);
        let planner = async {
            let r = self.plan(&txs).await;
            drop(txs);
            r
        };
        let writer = self.write_entries(entry_rx);
        let work = async {
            let (planned, (), written) = tokio::join!(planner, copier, writer);
            planned.and(written.map_err(WarmError::from))
        };
        tokio::pin!(work);
        let planned = tokio::select! {
            r = &mut work => r,
            e = self.renew_leases() => {
                // The renewer stopped the warm: let copies in flight finish
                // and be recorded (or their multipart uploads aborted), then
                // report why.
                let _ = (&mut work).await;
                return Err(e);
            }
        };
        planned?;
        // "At least ttl" counts from when the data is ready; and if an
        // Evict ended a lease meanwhile, what was counted may be gone.
        self.write_leases().await?;
        Ok(self.outcome())
    }

    /// How the warm ended, once everything it started has ended.
    fn outcome(&self) -> WarmOutcome {
        match self.stop.reason() {
            Some(StopReason::Interrupted) => WarmOutcome::Interrupted,
            Some(StopReason::Cancelled) => WarmOutcome::Cancelled,
            None if self.progress.failed.load(Ordering::Relaxed) > 0 => {
                WarmOutcome::PartiallyFailed
            }
            None => WarmOutcome::Succeeded,
        }
    }

    /// Runs every queued copy task: each shard's queue drained with
    /// `per_shard_concurrency` tasks at once.
    async fn copy_all(&self, shards: Vec<mpsc::Receiver<CopyTask>>, entries: EntrySender) {
        let per_shard = self.w.settings.per_shard_concurrency.max(1);
        let entries = &entries;
        // Boxed: naming the per-task future type keeps the whole warm `Send`
        // (rustc cannot prove it through nested closures otherwise).
        let runs: Vec<BoxFuture<'_, ()>> = shards
            .into_iter()
            .map(|rx| -> BoxFuture<'_, ()> {
                Box::pin(
                    ReceiverStream::new(rx)
                        .for_each_concurrent(per_shard, move |task| -> BoxFuture<'_, ()> {
                            Box::pin(self.run_task(task, entries))
                        }),
                )
            })
            .collect();
        futures::future::join_all(runs).await;
    }

    /// Notes that copying started (once per warm).
    pub fn announce_copying(&self) {
        if !self.announced.swap(true, Ordering::Relaxed) {
            self.progress.set_phase(Phase::Copying);
        }
    }

    /// The directory bucket, as the index names it.
    pub fn dir(&self) -> &'a str {
        self.spec.directory_bucket.as_str()
    }

    /// "Now" for deciding whether another holder's claim has lapsed: the
    /// clock minus the skew margin, so a claim is taken over only once it
    /// is past its deadline on any clock within the margin of ours.
    pub fn takeover_now(&self) -> Millis {
        self.w
            .clock
            .now()
            .saturating_sub(span_millis(self.w.settings.skew_margin))
    }

    /// The terms of a claim this warm takes or renews now.
    pub fn claim_terms(&self) -> ClaimTerms<'a> {
        ClaimTerms {
            owner: self.owner,
            deadline: self
                .w
                .clock
                .now()
                .saturating_add(span_millis(self.w.settings.claim_ttl)),
            now: self.takeover_now(),
        }
    }

    /// Gives back this warm's claim on `key`.
    pub async fn release(&self, key: &str) {
        release_or_lapse(self.w.index.as_ref(), self.dir(), key, self.owner).await;
    }
}
