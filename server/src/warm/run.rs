//! One warm's state, and the pipeline that joins its parts: the listers
//! feed the planner, the planner feeds the copiers, the copiers feed
//! the entry writer, and the lease renewer runs beside them all.

use std::sync::atomic::Ordering;

use expresscache::WarmSpec;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::claims::KeyClaims;
use super::listing::{Lister, Page};
use super::offload::Offloader;
use super::phase::CopyingStarted;
use super::planning::Triage;
use super::settle::Settler;
use super::task::CopyTask;
use super::writer::{EntrySender, EntryWriter};
use super::{WarmError, WarmOutcome, Warmer};
use crate::batch::Offload;
use crate::core::judge::Judge;
use crate::core::operation::Phase;
use crate::progress::Progress;
use crate::stop::{StopReason, StopSignal};

/// Listing pages fetched ahead of the planner: the next page is listed
/// while this one is planned, so a re-warm costs about the listing alone.
const PAGES_AHEAD: usize = 2;

/// Copy tasks queued ahead of the copiers: about two listing pages, so the
/// planner works on the next page while the copiers start on this one.
const TASK_QUEUE: usize = 2048;

/// Keys settled at once per request the adaptive limit lets in flight:
/// some of them wait for another warm's claim or for the index, and the
/// copies must never wait for tasks.
const TASKS_PER_SLOT: usize = 2;

/// Keys settled at once however low the limit is.
const MIN_TASKS: usize = 16;

/// Copied entries queued for the writer.
const ENTRY_QUEUE: usize = 1024;

/// One warm while it runs: what it was asked, where it reports, who it is
/// in the index, and what stops it. It wires the pipeline and builds each
/// stage (lister, triage, settler, offload) from the parts that stage uses.
pub(super) struct WarmRun<'a> {
    pub w: &'a Warmer,
    pub spec: &'a WarmSpec,
    pub progress: &'a Progress,
    /// The claim owner and lease writer: the operation id.
    pub owner: &'a str,
    pub stop: &'a StopSignal,
    /// Lists the source for the planner.
    pub lister: Lister<'a>,
    /// Its claims on destination keys.
    pub claims: KeyClaims<'a>,
    /// The requested prefixes no listed key fell under yet.
    pub empty: super::empty::EmptyPrefixes,
    /// When the first copy started.
    copying: CopyingStarted,
    /// When the warm began (wall clock, as S3 stamps objects): a Batch
    /// Operations job copies only sources not modified since.
    started: std::time::SystemTime,
}

impl<'a> WarmRun<'a> {
    pub fn new(
        w: &'a Warmer,
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
            lister: Lister::new(&*w.store, spec, progress, stop, w.settings.list_fanout),
            claims: KeyClaims {
                index: &*w.index,
                clock: &*w.clock,
                dir: spec.directory_bucket.as_str(),
                owner,
                ttl: w.settings.claim_ttl,
                judge: Judge::new(w.settings.skew_margin),
            },
            empty: super::empty::EmptyPrefixes::new(spec.prefixes.iter().map(|p| p.as_str())),
            copying: CopyingStarted::default(),
            started: std::time::SystemTime::now(),
        }
    }

    pub async fn run(&self) -> Result<WarmOutcome, WarmError> {
        self.progress.set_phase(Phase::Planning);
        self.leases().write().await?;
        let (task_tx, task_rx) = mpsc::channel::<CopyTask>(TASK_QUEUE);
        let (entry_tx, entry_rx) = mpsc::channel(ENTRY_QUEUE);
        let copier = async {
            match self.offload() {
                Some(o) => self.offloader(o).copy_all(task_rx, entry_tx).await,
                None => {
                    self.copy_all(task_rx, entry_tx).await;
                    Ok(())
                }
            }
        };
        let planner = async {
            let r = self.plan(&task_tx).await;
            drop(task_tx);
            r
        };
        let writer = EntryWriter {
            index: &*self.w.index,
            owner: self.owner,
        };
        let writer = writer.write(entry_rx);
        let work = async {
            let (planned, copied, written) = tokio::join!(planner, copier, writer);
            planned.and(copied).and(written.map_err(WarmError::from))
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
        self.judge_empty()?;
        if let Some(t0) = self.copying.at() {
            let c = self.progress.snapshot().counters;
            self.w
                .rate
                .record(c.objects_copied, c.bytes_copied, t0.elapsed());
        }
        // "At least ttl" counts from when the data is ready; and if an
        // Evict ended a lease meanwhile, what was counted may be gone.
        self.leases().write().await?;
        Ok(self.outcome())
    }

    /// Lists each prefix, merges each page with the index and queues what
    /// must be copied or waited for.
    pub async fn plan(&self, tasks: &mpsc::Sender<CopyTask>) -> Result<(), WarmError> {
        let (pages_tx, mut pages) = mpsc::channel::<Page>(PAGES_AHEAD);
        // `move`: the planner owns the receiver, so when it fails the
        // receiver is dropped and the listers' next send ends the listing
        // (a lister blocked on a full channel would otherwise never return).
        let triage = self.triage();
        let planner = async move {
            while let Some(page) = pages.recv().await {
                // Stopped: claiming more keys would only give them back.
                if self.stop.is_set() {
                    break;
                }
                let (batch, _) = triage.page(&page).await?;
                let batch = triage.claim(batch).await?;
                triage.dispatch(batch, tasks).await;
            }
            Ok::<(), WarmError>(())
        };
        let (listed, planned) = tokio::join!(self.lister.list(pages_tx), planner);
        planned?;
        listed
    }

    /// Reports the prefixes that listed nothing, and fails the warm when
    /// that is every prefix and the request did not allow it. Only a
    /// listing that ran to its end is judged.
    pub fn judge_empty(&self) -> Result<(), WarmError> {
        if self.stop.is_set() {
            return Ok(());
        }
        let empty = self.empty.remaining();
        self.progress.add_empty_prefixes(empty.clone());
        if self.spec.allow_empty || !self.empty.all_empty() {
            return Ok(());
        }
        Err(WarmError::Empty {
            bucket: self.spec.source.to_string(),
            prefixes: empty,
        })
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

    /// Runs every queued copy task, as many at once as the destination's
    /// adaptive limit can use: the task count follows the limit (up to
    /// twice the engine's ceiling), so memory stays bounded however large
    /// the warm and the copies are never starved of tasks.
    async fn copy_all(&self, mut tasks: mpsc::Receiver<CopyTask>, entries: EntrySender) {
        let entries = &entries;
        let settler = self.settler();
        let ceiling = self
            .w
            .settings
            .max_copy_tasks
            .unwrap_or(self.w.engine.settings().max_concurrency * TASKS_PER_SLOT)
            .max(1);
        // Boxed: naming the per-task future type keeps the whole warm `Send`
        // (rustc cannot prove it through nested closures otherwise).
        let mut running: FuturesUnordered<BoxFuture<'_, ()>> = FuturesUnordered::new();
        let mut open = true;
        while open || !running.is_empty() {
            let room = (self.w.engine.limit_for(self.dir()) * TASKS_PER_SLOT)
                .max(MIN_TASKS)
                .min(ceiling);
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                task = tasks.recv(), if open && running.len() < room => match task {
                    Some(task) => {
                        self.copying.announce(self.progress);
                        running.push(Box::pin(settler.run_task(task, entries)));
                    }
                    None => open = false,
                },
            }
        }
    }

    /// The stage that decides listed keys and claims the ones to copy.
    pub fn triage(&self) -> Triage<'_> {
        Triage {
            claims: &self.claims,
            spec: self.spec,
            progress: self.progress,
            empty: &self.empty,
        }
    }

    /// The stage that takes queued keys to their end.
    pub fn settler(&self) -> Settler<'_> {
        Settler {
            claims: &self.claims,
            engine: &self.w.engine,
            spec: self.spec,
            progress: self.progress,
            stop: self.stop,
            wait_poll: self.w.settings.wait_poll,
        }
    }

    /// The offload this warm may use: configured, and asked for or with a
    /// threshold to check.
    fn offload(&self) -> Option<&'a Offload> {
        self.w
            .batch
            .as_deref()
            .filter(|o| self.spec.batch_operations || o.threshold.is_some())
    }

    /// The stage that copies through an S3 Batch Operations job.
    pub fn offloader<'s>(&'s self, o: &'s Offload) -> Offloader<'s> {
        Offloader {
            o,
            claims: &self.claims,
            settler: self.settler(),
            lister: &self.lister,
            store: &*self.w.store,
            engine: &self.w.engine,
            spec: self.spec,
            progress: self.progress,
            owner: self.owner,
            stop: self.stop,
            copying: &self.copying,
            clock: &*self.w.clock,
            judge: Judge::new(self.w.settings.skew_margin),
            started: self.started,
        }
    }

    /// The directory bucket, as the index names it.
    pub fn dir(&self) -> &'a str {
        self.spec.directory_bucket.as_str()
    }

}
