//! One warm, start to finish: lease, plan, claim, copy, record.
//!
//! Order matters for the guarantees (doc/SEMANTICS.md): leases are written
//! before the index is read and kept extended while the warm runs; a key is
//! claimed before it is copied, so overlapping warms copy it once; and an
//! entry is written only after its copy succeeded. Listing, planning and
//! copying overlap: the planner feeds a bounded queue that the copiers
//! drain, so memory does not grow with the number of objects.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use expresscache::{Prefix, WarmSpec};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::clock::Clock;
use crate::exec::{CopyEngine, CopyStats, EngineSettings};
use crate::index::{
    millis_of, release_or_lapse, span_millis, CacheIndex, Claim, ClaimOutcome, ClaimTerms,
    Completion, Entry, IndexError, Lease, Millis, Record, RecordCursor,
};
use crate::operation::Phase;
use crate::plan::{Decision, Planner};
use crate::progress::Progress;
use crate::stop::{StopReason, StopSignal};
use crate::store::{CopyRequest, ListPage, ObjectMeta, ObjectStore, StoreError};

/// Tuning of the copy path.
#[derive(Debug, Clone)]
pub struct WarmSettings {
    /// Queues a warm's copies are spread over, by hash of the key.
    pub shards: usize,
    /// Copies one shard works on at once (the engine's global and adaptive
    /// limits apply on top).
    pub per_shard_concurrency: usize,
    /// The shared copy engine: concurrency, retries, multipart.
    pub engine: EngineSettings,
    /// How long a claim on a key lasts; a holder that crashes blocks others
    /// at most this long.
    pub claim_ttl: Duration,
    /// First delay between checks while waiting for another operation's
    /// claim; grows to 1s.
    pub wait_poll: Duration,
    /// How far clocks may disagree: a claim is taken over only this long
    /// past its deadline (doc/SEMANTICS.md, clock skew).
    pub skew_margin: Duration,
    /// A warm that has made no progress at all (no listing page, no copy
    /// attempt ending, no index answer while waiting) for this long stops
    /// extending its leases: a stuck warm must not keep data alive forever.
    pub stall_limit: Duration,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self::from(&crate::config::Config::default())
    }
}

impl From<&crate::config::Config> for WarmSettings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            shards: 8,
            // shards x per_shard (default 16) = twice the engine's default
            // global cap: an unlucky shard with more keys than the others
            // still keeps the engine busy; the engine's cap bounds what is
            // in flight.
            per_shard_concurrency: c.shard_concurrency,
            engine: EngineSettings::from(c),
            claim_ttl: Duration::from_secs(600),
            wait_poll: Duration::from_millis(50),
            skew_margin: c.clock_skew_margin,
            stall_limit: Duration::from_secs(15 * 60),
        }
    }
}

/// What a warm needs from the outside world. One warmer (and so one copy
/// engine, with its global cap) serves every warm of a server.
#[derive(Debug)]
pub struct Warmer<S, I> {
    pub store: Arc<S>,
    pub index: Arc<I>,
    pub clock: Arc<dyn Clock>,
    pub settings: WarmSettings,
    pub engine: CopyEngine<S>,
}

impl<S: ObjectStore, I> Warmer<S, I> {
    pub fn new(
        store: Arc<S>,
        index: Arc<I>,
        clock: Arc<dyn Clock>,
        settings: WarmSettings,
    ) -> Self {
        Self {
            engine: CopyEngine::new(Arc::clone(&store), settings.engine.clone()),
            store,
            index,
            clock,
            settings,
        }
    }
}

/// How a warm that ran to its end ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmOutcome {
    /// Every listed object is present and current.
    Succeeded,
    /// Some keys failed (the progress lists them); the rest is ready.
    PartiallyFailed,
    /// A user cancelled it: no new copy started after that.
    Cancelled,
    /// A shutdown interrupted it; it stays unfinished and resumes later.
    Interrupted,
}

/// Why a warm could not do its job at all (per-key failures are not this).
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("listing s3://{bucket}/{prefix} failed: {source}")]
    List {
        bucket: String,
        prefix: String,
        source: StoreError,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    /// One of this warm's leases ended while it ran (an `Evict` ended it,
    /// or it lapsed while the warm made no progress): objects it had
    /// already counted as ready may have been deleted.
    #[error(
        "the lease on {prefix:?} ended while this warm ran (an Evict ended it, or it lapsed \
         while the warm made no progress), so objects it had counted as ready may have been \
         deleted; warm again to bring them back"
    )]
    LeaseEnded { prefix: String },
    /// A listing answered a continuation token it had answered before:
    /// following it would loop forever.
    #[error("listing s3://{bucket}/{prefix} repeated continuation token {token:?}")]
    ListingLoop {
        bucket: String,
        prefix: String,
        token: String,
    },
}

/// What every copy task of one warm shares.
#[derive(Clone, Copy)]
struct TaskCtx<'a> {
    spec: &'a WarmSpec,
    progress: &'a Progress,
    owner: &'a str,
    stop: &'a StopSignal,
    announced: &'a AtomicBool,
    entries: &'a mpsc::Sender<(Entry, oneshot::Sender<Completion>)>,
}

struct CopyTask {
    object: ObjectMeta,
    dest_key: String,
    /// Set when the planner saw another operation's claim on the key.
    wait_for: Option<Claim>,
    /// When the planner took this warm's claim on the key, if it did.
    claimed_at: Option<Millis>,
}

/// How one key ended for this warm.
enum KeyOutcome {
    Copied,
    /// Another operation copied it while this one waited.
    Shared,
    Failed {
        code: String,
        message: String,
    },
    /// The warm was stopped before this key was settled.
    Stopped,
}

/// The last few continuation tokens of one listing, to catch a listing
/// that cycles without holding every token of a billion-key listing.
#[derive(Default)]
struct RecentTokens {
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
}

impl RecentTokens {
    const WINDOW: usize = 1024;

    /// False if `token` was among the recent ones.
    fn insert(&mut self, token: &str) -> bool {
        if !self.set.insert(token.to_owned()) {
            return false;
        }
        self.order.push_back(token.to_owned());
        if self.order.len() > Self::WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// How a wait for another holder's claim ended.
enum Released {
    /// The claim is gone or void; the key's record as it now stands.
    Now(Option<Box<Record>>),
    /// The warm was stopped while waiting.
    Stopped,
}

/// Where one key's settling stands.
enum Step {
    /// Another holder's claim must go first.
    Wait(Claim),
    /// Read the key's record and decide.
    Decide,
    /// Claim the key for this warm.
    Claim,
    /// This warm claimed the key at this time: copy and record it.
    Copy(Millis),
}

fn writer_gone() -> KeyOutcome {
    KeyOutcome::Failed {
        code: "IndexError".into(),
        message: "the index writer stopped; see the warm's error".into(),
    }
}

fn index_failure(e: &IndexError) -> KeyOutcome {
    KeyOutcome::Failed {
        code: "IndexError".into(),
        message: e.to_string(),
    }
}

impl<S: ObjectStore, I: CacheIndex> Warmer<S, I> {
    /// Runs the warm as operation `owner`; per-key failures land in
    /// `progress` (and make the outcome PartiallyFailed), an error means the
    /// warm as a whole failed.
    pub async fn run(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
    ) -> Result<WarmOutcome, WarmError> {
        self.run_until(spec, progress, owner, &StopSignal::default())
            .await
    }

    /// [`run`](Self::run) that also stops early when `stop` is set: no new
    /// listing page, no new copy; copies in flight finish and are recorded.
    pub async fn run_until(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        stop: &StopSignal,
    ) -> Result<WarmOutcome, WarmError> {
        progress.set_phase(Phase::Planning);
        self.write_leases(spec, progress).await?;
        // A warm can outlast a short TTL: keep its leases alive while it
        // runs, so nothing it reports ready expires before it reports it,
        // but only while it makes progress (a stuck warm must not keep
        // data alive forever), and never past an Evict that ended them.
        let renew_every = (spec.ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let renewer = async {
            let mut tick = tokio::time::interval(renew_every);
            tick.tick().await;
            let mut warned = false;
            loop {
                tick.tick().await;
                // Waiting for a copy slot while the engine works for other
                // warms is not being stuck.
                let idle = progress.idle().min(self.engine.idle());
                if idle > self.settings.stall_limit {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(operation_id = owner, idle = ?idle,
                            "warm made no progress; its leases are no longer extended");
                    }
                    continue;
                }
                warned = false;
                match self.write_leases(spec, progress).await {
                    Ok(()) => {}
                    Err(e @ WarmError::LeaseEnded { .. }) => {
                        // Stop the work: what was evicted must not be
                        // brought back behind the caller's back.
                        stop.cancel();
                        return e;
                    }
                    Err(e) => {
                        tracing::warn!(operation_id = owner, error = %e, "lease renewal failed");
                    }
                }
            }
        };

        let shards = self.settings.shards.max(1);
        // Deep enough that the single planner rarely waits on one full
        // shard while others starve (head-of-line blocking).
        let depth = 256;
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| mpsc::channel::<CopyTask>(depth))
            .unzip();
        let (entry_tx, entry_rx) = mpsc::channel(1024);
        let copier = self.copy_all(spec, progress, owner, stop, rxs, entry_tx);
        let planner = async {
            let r = self.plan(spec, progress, owner, stop, &txs).await;
            drop(txs);
            r
        };
        let writer = self.write_entries(owner, entry_rx);
        let work = async {
            let (planned, (), written) = tokio::join!(planner, copier, writer);
            planned.and(written.map_err(WarmError::from))
        };
        tokio::pin!(work);
        let planned = tokio::select! {
            r = &mut work => r,
            e = renewer => {
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
        self.write_leases(spec, progress).await?;
        Ok(match stop.reason() {
            Some(StopReason::Interrupted) => WarmOutcome::Interrupted,
            Some(StopReason::Cancelled) => WarmOutcome::Cancelled,
            None if progress.failed.load(AtomicOrdering::Relaxed) > 0 => {
                WarmOutcome::PartiallyFailed
            }
            None => WarmOutcome::Succeeded,
        })
    }

    /// Extends one lease per requested prefix to max(old, now + ttl).
    /// `progress` remembers each lease's epoch from this warm's first
    /// write; later writes extend only that same lease, and a lease that was
    /// ended (by an Evict) or lapsed (and may have been swept) meanwhile is
    /// [`WarmError::LeaseEnded`], not silently revived.
    async fn write_leases(&self, spec: &WarmSpec, progress: &Progress) -> Result<(), WarmError> {
        let expires_at = self.clock.now().saturating_add(span_millis(spec.ttl));
        let mut earliest = Millis::MAX;
        for prefix in spec.lease_prefixes() {
            let mut lease = Lease::new(
                spec.directory_bucket.as_str(),
                prefix.as_str(),
                spec.source.as_str(),
                expires_at,
            );
            let known = progress.lease_epoch(prefix.as_str());
            if let Some(epoch) = &known {
                lease.epoch.clone_from(epoch);
            }
            // Strict: expired on our clock is over (the sweeper hands the
            // lease on with a new epoch before deleting, so a renewal that
            // races it is refused either way).
            let stored = self.index.extend_lease(&lease, self.clock.now()).await?;
            match known {
                Some(epoch) if epoch != stored.epoch => {
                    return Err(WarmError::LeaseEnded {
                        prefix: prefix.to_string(),
                    })
                }
                Some(_) => {}
                None => progress.add_lease_epoch(prefix.as_str(), &stored.epoch),
            }
            earliest = earliest.min(stored.expires_at);
        }
        progress.set_lease_expiry(earliest);
        Ok(())
    }

    /// Lists each prefix page by page, merges it with the index and queues
    /// what must be copied or waited for.
    async fn plan(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        stop: &StopSignal,
        shards: &[mpsc::Sender<CopyTask>],
    ) -> Result<(), WarmError> {
        // The next listing page is fetched while this one is planned: a
        // re-warm then costs about the listing alone.
        let (pages_tx, mut pages) = mpsc::channel::<(Prefix, ListPage)>(2);
        let lister = async move {
            for prefix in spec.listing_prefixes() {
                let mut token: Option<String> = None;
                // The recent tokens: one answered again means a cycle that
                // would list forever (a window of them bounds the memory).
                let mut seen = RecentTokens::default();
                loop {
                    if stop.is_set() {
                        return Ok(());
                    }
                    let page = self
                        .store
                        .list_page(spec.source.as_str(), prefix.as_str(), token.clone())
                        .await
                        .map_err(|e| WarmError::List {
                            bucket: spec.source.to_string(),
                            prefix: prefix.to_string(),
                            source: e,
                        })?;
                    progress.touch();
                    // Only the token ends a listing: S3 may answer a page
                    // with no keys that is still truncated (delete markers,
                    // S3-compatible stores).
                    let next = page.next.clone();
                    if let Some(t) = &next {
                        if !seen.insert(t) {
                            return Err(WarmError::ListingLoop {
                                bucket: spec.source.to_string(),
                                prefix: prefix.to_string(),
                                token: t.clone(),
                            });
                        }
                    }
                    if !page.objects.is_empty()
                        && pages_tx.send((prefix.clone(), page)).await.is_err()
                    {
                        break;
                    }
                    token = next;
                    if token.is_none() {
                        break;
                    }
                }
            }
            Ok(())
        };
        let planner = async {
            let mut after: Option<(Prefix, String)> = None;
            while let Some((prefix, page)) = pages.recv().await {
                let cursor = after.take().filter(|(p, _)| *p == prefix).map(|(_, k)| k);
                let last = self
                    .plan_page(spec, progress, owner, shards, &prefix, cursor, &page)
                    .await?;
                after = Some((prefix, last));
            }
            Ok::<(), WarmError>(())
        };
        let (listed, planned) = tokio::join!(lister, planner);
        planned?;
        listed
    }

    /// Plans one listing page: counts hits, claims what must be copied (one
    /// index round trip for the page) and queues it; returns the page's last
    /// destination key.
    #[allow(clippy::too_many_arguments)]
    async fn plan_page(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        shards: &[mpsc::Sender<CopyTask>],
        prefix: &Prefix,
        after: Option<String>,
        page: &ListPage,
    ) -> Result<String, WarmError> {
        let dir = spec.directory_bucket.as_str();
        let last = page
            .objects
            .last()
            .map(|o| spec.dest_key(&o.key))
            .unwrap_or_default();
        let dest_prefix = spec.dest_key(prefix.as_str());
        Progress::add(&progress.listed, page.objects.len() as u64);
        Progress::add(
            &progress.bytes_listed,
            page.objects.iter().map(|o| o.size).sum(),
        );
        let planner = Planner {
            source_bucket: spec.source.as_str(),
            owner,
            force: spec.force_copy,
            now: self.takeover_now(),
        };
        let mut records = RecordCursor::new(self.index.as_ref(), dir, &dest_prefix, after, &last);
        let mut tasks = Vec::new();
        for obj in &page.objects {
            let dest_key = spec.dest_key(&obj.key);
            let record = records.seek(&dest_key).await?;
            let wait_for = match planner.decide(obj, record.as_ref()) {
                Decision::Hit => {
                    Progress::add(&progress.hits, 1);
                    continue;
                }
                Decision::Clash { cached_from } => {
                    progress.fail(
                        &obj.key,
                        "KeyClash",
                        format!(
                            "{dir}/{dest_key} is already cached from {cached_from}; \
                             evict it first, or use a destination_prefix"
                        ),
                    );
                    continue;
                }
                Decision::Copy(_) => None,
                Decision::Wait(claim) => Some(claim),
            };
            if dest_key.len() > expresscache::names::MAX_KEY_BYTES {
                progress.fail(
                    &obj.key,
                    "KeyTooLong",
                    format!(
                        "destination key would be {} bytes; S3 allows 1024",
                        dest_key.len()
                    ),
                );
                continue;
            }
            Progress::add(&progress.to_copy, 1);
            Progress::add(&progress.bytes_to_copy, obj.size);
            tasks.push(CopyTask {
                object: obj.clone(),
                dest_key,
                wait_for,
                claimed_at: None,
            });
        }
        // Claim every key this page copies in one batch; a key someone else
        // holds becomes a wait.
        let to_claim: Vec<String> = tasks
            .iter()
            .filter(|t| t.wait_for.is_none())
            .map(|t| t.dest_key.clone())
            .collect();
        if !to_claim.is_empty() {
            let now = self.clock.now();
            let outcomes = self
                .index
                .claim_copies(
                    dir,
                    &to_claim,
                    &ClaimTerms {
                        owner,
                        deadline: self.claim_deadline(),
                        now: self.takeover_now(),
                    },
                )
                .await?;
            let mut outcomes = outcomes.into_iter();
            for t in tasks.iter_mut().filter(|t| t.wait_for.is_none()) {
                match outcomes.next() {
                    Some(ClaimOutcome::Claimed) => t.claimed_at = Some(now),
                    Some(ClaimOutcome::Held(c)) => t.wait_for = Some(c),
                    None => {}
                }
            }
        }
        for task in tasks {
            let shard = shard_of(&task.dest_key, shards.len());
            if let Err(mpsc::error::SendError(task)) = shards[shard].send(task).await {
                // The copiers are gone (the warm is ending): give back the
                // claim this task holds.
                if task.claimed_at.is_some() {
                    self.release(dir, &task.dest_key, owner).await;
                }
            }
        }
        Ok(last)
    }

    async fn release(&self, dir: &str, key: &str, owner: &str) {
        release_or_lapse(self.index.as_ref(), dir, key, owner).await;
    }

    /// Records copied objects in batches: one index transaction per batch
    /// keeps the index cost per copied object small.
    async fn write_entries(
        &self,
        owner: &str,
        mut rx: mpsc::Receiver<(Entry, oneshot::Sender<Completion>)>,
    ) -> Result<(), IndexError> {
        const BATCH: usize = 256;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return Ok(());
            }
            let (entries, replies): (Vec<Entry>, Vec<_>) = batch.drain(..).unzip();
            let outcomes = self.index.complete_copies(&entries, owner).await?;
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A copier that is gone no longer cares.
                let _ = reply.send(outcome);
            }
        }
    }

    /// "Now" for deciding whether another holder's claim has lapsed: the
    /// clock minus the skew margin, so a claim is taken over only once it
    /// is past its deadline on any clock within the margin of ours.
    fn takeover_now(&self) -> Millis {
        self.clock
            .now()
            .saturating_sub(span_millis(self.settings.skew_margin))
    }

    async fn copy_all(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        owner: &str,
        stop: &StopSignal,
        shards: Vec<mpsc::Receiver<CopyTask>>,
        entries: mpsc::Sender<(Entry, oneshot::Sender<Completion>)>,
    ) {
        let announced = AtomicBool::new(false);
        let ctx = TaskCtx {
            spec,
            progress,
            owner,
            stop,
            announced: &announced,
            entries: &entries,
        };
        let per_shard = self.settings.per_shard_concurrency.max(1);
        // Boxed: naming the per-task future type keeps the whole warm `Send`
        // (rustc cannot prove it through nested closures otherwise).
        let runs: Vec<BoxFuture<'_, ()>> = shards
            .into_iter()
            .map(|rx| -> BoxFuture<'_, ()> {
                Box::pin(
                    ReceiverStream::new(rx)
                        .for_each_concurrent(per_shard, move |task| -> BoxFuture<'_, ()> {
                            Box::pin(self.run_task(ctx, task))
                        }),
                )
            })
            .collect();
        futures::future::join_all(runs).await;
    }

    async fn run_task(&self, ctx: TaskCtx<'_>, task: CopyTask) {
        let TaskCtx {
            progress,
            stop,
            announced,
            ..
        } = ctx;
        if !announced.swap(true, AtomicOrdering::Relaxed) {
            progress.set_phase(Phase::Copying);
        }
        if stop.is_set() {
            if task.claimed_at.is_some() {
                let dir = ctx.spec.directory_bucket.as_str();
                self.release(dir, &task.dest_key, ctx.owner).await;
            }
            return;
        }
        let obj = &task.object;
        let outcome = self
            .settle(ctx, task.wait_for, task.claimed_at, obj, &task.dest_key)
            .await;
        match outcome {
            KeyOutcome::Copied => {
                Progress::add(&progress.copied, 1);
                Progress::add(&progress.bytes_copied, obj.size);
            }
            KeyOutcome::Shared => Progress::add(&progress.shared, 1),
            KeyOutcome::Failed { code, message } => progress.fail(&obj.key, &code, message),
            KeyOutcome::Stopped => {}
        }
    }

    /// Makes one key present and current: waits out another operation's
    /// claim if there is one, then either finds its copy good (shared) or
    /// claims the key (unless the planner did, recently enough) and copies
    /// it, keeping the claim alive meanwhile. The entry is recorded only if
    /// the claim is still ours; if it was lost, the key is decided again.
    async fn settle(
        &self,
        ctx: TaskCtx<'_>,
        wait_for: Option<Claim>,
        claimed_at: Option<Millis>,
        obj: &ObjectMeta,
        dest_key: &str,
    ) -> KeyOutcome {
        let TaskCtx {
            spec,
            progress,
            owner,
            stop,
            ..
        } = ctx;
        let dir = spec.directory_bucket.as_str();
        let mut step = match (wait_for, claimed_at) {
            (Some(claim), _) => Step::Wait(claim),
            (None, Some(at)) => Step::Copy(at),
            (None, None) => Step::Claim,
        };
        loop {
            step = match step {
                Step::Wait(claim) => {
                    match self
                        .wait_for_release(dir, dest_key, owner, stop, progress, &claim)
                        .await
                    {
                        Ok(Released::Now(r)) => {
                            match self.redecide(spec, owner, obj, dest_key, r.as_deref()) {
                                Ok(next) => next,
                                Err(outcome) => return outcome,
                            }
                        }
                        Ok(Released::Stopped) => return KeyOutcome::Stopped,
                        Err(e) => return index_failure(&e),
                    }
                }
                Step::Decide => match self.record(dir, dest_key).await {
                    Ok(r) => match self.redecide(spec, owner, obj, dest_key, r.as_ref()) {
                        Ok(next) => next,
                        Err(outcome) => return outcome,
                    },
                    Err(e) => return index_failure(&e),
                },
                Step::Claim => match self.claim(dir, dest_key, owner).await {
                    Ok(ClaimOutcome::Held(claim)) => Step::Wait(claim),
                    Ok(ClaimOutcome::Claimed) => Step::Copy(self.clock.now()),
                    Err(e) => return index_failure(&e),
                },
                Step::Copy(claimed_at) => {
                    match self.copy_claimed(ctx, obj, dest_key, claimed_at).await {
                        Ok(outcome) => return outcome,
                        // Lost the claim before or during the copy.
                        Err(()) => Step::Decide,
                    }
                }
            };
        }
    }

    /// Copies a key this warm claimed at `claimed_at` and records it. `Err`
    /// when the claim turned out lost (nothing was recorded).
    async fn copy_claimed(
        &self,
        ctx: TaskCtx<'_>,
        obj: &ObjectMeta,
        dest_key: &str,
        claimed_at: Millis,
    ) -> Result<KeyOutcome, ()> {
        let TaskCtx {
            spec,
            progress,
            owner,
            stop,
            ..
        } = ctx;
        let dir = spec.directory_bucket.as_str();
        // A claim taken when the page was planned may be old by now (a
        // throttled engine queues copies for long): renew it first.
        if self.clock.now().saturating_sub(claimed_at) >= self.renew_after() {
            match self.renew(dir, dest_key, owner).await {
                Ok(true) => {}
                Ok(false) => return Err(()),
                Err(e) => return Ok(index_failure(&e)),
            }
        }
        let copied = {
            let copy = self.copy_one(spec, obj, dest_key, progress, stop);
            let heartbeat = self.keep_claimed(dir, dest_key, owner);
            tokio::select! {
                r = copy => r,
                () = heartbeat => unreachable!("the heartbeat never ends"),
            }
        };
        let entry = match copied {
            Ok(entry) => entry,
            Err(e) => {
                self.release(dir, dest_key, owner).await;
                return Ok(if matches!(e, StoreError::Stopped) {
                    KeyOutcome::Stopped
                } else {
                    KeyOutcome::Failed {
                        code: e.code().to_owned(),
                        message: describe(&e),
                    }
                });
            }
        };
        // The writer records it (and drops the claim) in its next batch;
        // the warm reports ready only after the writer is done.
        let (reply, recorded) = oneshot::channel();
        if ctx.entries.send((entry, reply)).await.is_err() {
            return Ok(writer_gone());
        }
        match recorded.await {
            Ok(Completion::Recorded) => Ok(KeyOutcome::Copied),
            Ok(Completion::ClaimLost) => {
                tracing::warn!(
                    key = dest_key,
                    "claim lost during the copy; deciding the key again"
                );
                Err(())
            }
            Err(_) => Ok(writer_gone()),
        }
    }

    /// What to do with a key whose record is now `record` (after another
    /// holder let go of it, or after this warm lost its claim): the next
    /// step, or how the key ended.
    fn redecide(
        &self,
        spec: &WarmSpec,
        owner: &str,
        obj: &ObjectMeta,
        dest_key: &str,
        record: Option<&Record>,
    ) -> Result<Step, KeyOutcome> {
        let planner = Planner {
            source_bucket: spec.source.as_str(),
            owner,
            force: false,
            now: self.takeover_now(),
        };
        match planner.decide(obj, record) {
            Decision::Hit => Err(KeyOutcome::Shared),
            Decision::Wait(next) => Ok(Step::Wait(next)),
            Decision::Clash { cached_from } => Err(KeyOutcome::Failed {
                code: "KeyClash".into(),
                message: format!(
                    "{}/{dest_key} is now cached from {cached_from}",
                    spec.directory_bucket
                ),
            }),
            // The other copy failed or was evicted: do it ourselves.
            Decision::Copy(_) => Ok(Step::Claim),
        }
    }

    /// When a claim taken or renewed now lapses.
    fn claim_deadline(&self) -> Millis {
        self.clock
            .now()
            .saturating_add(span_millis(self.settings.claim_ttl))
    }

    /// Claims `key` for this warm (or extends its own claim).
    async fn claim(&self, dir: &str, key: &str, owner: &str) -> Result<ClaimOutcome, IndexError> {
        self.index
            .claim_copy(
                dir,
                key,
                &ClaimTerms {
                    owner,
                    deadline: self.claim_deadline(),
                    now: self.takeover_now(),
                },
            )
            .await
    }

    /// How old a claim may get before it is renewed.
    fn renew_after(&self) -> Millis {
        span_millis(self.settings.claim_ttl / 4)
    }

    /// Extends this warm's own claim on `key`; false if it was lost.
    async fn renew(&self, dir: &str, key: &str, owner: &str) -> Result<bool, IndexError> {
        self.index
            .renew_claim(dir, key, owner, self.claim_deadline())
            .await
    }

    /// Extends this warm's claim on `key` every quarter of the claim TTL,
    /// for as long as it is polled (while the copy runs); stops once the
    /// claim is lost (the completion then finds out and decides again).
    async fn keep_claimed(&self, dir: &str, key: &str, owner: &str) {
        let every = (self.settings.claim_ttl / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            match self.renew(dir, key, owner).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(key, "copy claim lost while copying");
                    return std::future::pending().await;
                }
                Err(e) => tracing::warn!(key, error = %e, "could not extend the copy claim"),
            }
        }
    }

    async fn record(&self, dir: &str, key: &str) -> Result<Option<Record>, IndexError> {
        self.index.get_record(dir, key).await
    }

    /// Polls until `claim` on `key` is gone, void, or ours; answers the
    /// record as it then stands.
    async fn wait_for_release(
        &self,
        dir: &str,
        key: &str,
        owner: &str,
        stop: &StopSignal,
        progress: &Progress,
        claim: &Claim,
    ) -> Result<Released, IndexError> {
        tracing::debug!(key, holder = %claim.owner, "waiting for another operation's claim");
        let mut delay = self.settings.wait_poll;
        loop {
            tokio::time::sleep(delay).await;
            if stop.is_set() {
                return Ok(Released::Stopped);
            }
            delay = (delay * 2).min(Duration::from_secs(1));
            let record = self.record(dir, key).await?;
            // Waiting on a live holder is progress of the shared work.
            progress.touch();
            let now = self.takeover_now();
            let blocked = record
                .as_ref()
                .and_then(|r| r.claim.as_ref())
                .is_some_and(|c| c.is_live(now) && c.owner != owner);
            if !blocked {
                return Ok(Released::Now(record.map(Box::new)));
            }
        }
    }

    async fn copy_one(
        &self,
        spec: &WarmSpec,
        obj: &ObjectMeta,
        dest_key: &str,
        progress: &Progress,
        stop: &StopSignal,
    ) -> Result<Entry, StoreError> {
        let req = CopyRequest {
            source_bucket: spec.source.as_str(),
            source_key: &obj.key,
            source_etag: &obj.etag,
            dest_bucket: spec.directory_bucket.as_str(),
            dest_key,
        };
        let stats = CopyStats::with_activity(progress.activity());
        let copied = self.engine.copy(&req, obj.size, &stats, stop).await;
        Progress::add(
            &progress.retries,
            u64::from(stats.retries.load(AtomicOrdering::Relaxed)),
        );
        Progress::add(
            &progress.throttled,
            u64::from(stats.throttled.load(AtomicOrdering::Relaxed)),
        );
        progress.set_concurrency_limit(self.engine.limit_for(spec.directory_bucket.as_str()));
        let copied = copied?;
        Ok(Entry {
            directory_bucket: spec.directory_bucket.to_string(),
            key: dest_key.to_owned(),
            source_bucket: spec.source.to_string(),
            source_key: obj.key.clone(),
            source_etag: obj.etag.clone(),
            size: obj.size,
            source_last_modified: obj.last_modified.and_then(millis_of),
            dest_etag: copied.etag,
            cached_at: self.clock.now(),
        })
    }
}

/// The shard of a key: a stable hash, so a key always lands in one queue.
fn shard_of(key: &str, shards: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

fn describe(e: &StoreError) -> String {
    match e {
        StoreError::PreconditionFailed => {
            "the source object changed after it was listed; warm again to copy the new version"
                .to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{KeyRange, SqliteIndex};
    use crate::operation::{OperationState, Outcome};
    use crate::store::{FaultStore, MemoryStore, Op};
    use expresscache::proto::v1 as pb;
    use std::sync::atomic::Ordering;

    const SRC: &str = "src";
    const DIR: &str = "cache--use1-az4--x-s3";

    fn setup(keys: &[&str]) -> Warmer<FaultStore<MemoryStore>, SqliteIndex> {
        let mem = MemoryStore::with_page_size(3);
        mem.create_bucket(SRC);
        mem.create_bucket(DIR);
        for k in keys {
            mem.put(SRC, k, 10);
        }
        Warmer::new(
            Arc::new(FaultStore::new(mem)),
            Arc::new(SqliteIndex::open_in_memory().unwrap()),
            Arc::new(crate::clock::SystemClock),
            WarmSettings {
                engine: crate::exec::EngineSettings {
                    retry_base_delay: Duration::from_millis(1),
                    ..Default::default()
                },
                ..WarmSettings::default()
            },
        )
    }

    fn spec(force: bool) -> WarmSpec {
        WarmSpec::parse(
            &pb::WarmCacheRequest {
                bucket: SRC.into(),
                prefixes: vec!["d/".into()],
                directory_bucket: DIR.into(),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                force_copy: force,
                request_id: String::new(),
                destination_prefix: String::new(),
            },
            &expresscache::Limits::default(),
        )
        .unwrap()
    }

    async fn run(w: &Warmer<FaultStore<MemoryStore>, SqliteIndex>) -> OperationState {
        let (progress, _rx) = Progress::new("op".into(), w.clock.clone());
        let outcome = match w.run(&spec(false), &progress, "op").await.unwrap() {
            WarmOutcome::Succeeded => Outcome::Succeeded,
            WarmOutcome::PartiallyFailed => Outcome::PartiallyFailed,
            other => panic!("{other:?}"),
        };
        progress.finish(outcome, None)
    }

    async fn cached_keys(w: &Warmer<FaultStore<MemoryStore>, SqliteIndex>) -> Vec<String> {
        w.index
            .records(DIR, &KeyRange::prefix(""), 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.entry.is_some() && r.claim.is_none())
            .map(|r| r.key)
            .collect()
    }

    #[tokio::test]
    async fn retryable_faults_are_retried_until_the_copy_succeeds() {
        let w = setup(&["d/1", "d/2", "d/3", "d/4", "d/5"]);
        w.store.fail(
            Op::Copy,
            Some("d/2"),
            StoreError::Throttled("SlowDown".into()),
            Some(2),
        );
        w.store.fail(
            Op::Copy,
            Some("d/4"),
            StoreError::Service {
                code: "InternalError".into(),
                status: 500,
                message: "boom".into(),
            },
            Some(1),
        );
        let last = run(&w).await;
        assert_eq!(last.outcome, Some(Outcome::Succeeded));
        assert_eq!(last.counters.objects_copied, 5);
        assert_eq!(w.store.injected.load(Ordering::Relaxed), 3);
        // 5 successful copies; the 3 failed attempts never reached the store.
        assert_eq!(w.store.inner().counters.copy.load(Ordering::Relaxed), 5);
        assert_eq!(cached_keys(&w).await.len(), 5);
    }

    #[tokio::test]
    async fn terminal_errors_fail_the_key_and_leave_no_entry() {
        let w = setup(&["d/1", "d/2", "d/3", "d/4"]);
        w.store.fail(
            Op::Copy,
            Some("d/3"),
            StoreError::AccessDenied("nope".into()),
            None,
        );
        w.store
            .fail(Op::Copy, Some("d/1"), StoreError::PreconditionFailed, None);
        let last = run(&w).await;
        assert_eq!(last.outcome, Some(Outcome::PartiallyFailed));
        let c = last.counters;
        assert_eq!((c.objects_copied, c.objects_failed), (2, 2));
        let mut codes: Vec<(String, String)> = last
            .failures
            .iter()
            .map(|f| (f.key.clone(), f.code.clone()))
            .collect();
        codes.sort();
        assert_eq!(
            codes,
            [
                ("d/1".to_owned(), "SourceChanged".to_owned()),
                ("d/3".to_owned(), "AccessDenied".to_owned())
            ]
        );
        // One attempt each: terminal errors are not retried.
        assert_eq!(w.store.injected.load(Ordering::Relaxed), 2);
        assert_eq!(cached_keys(&w).await, ["d/2", "d/4"]);
        // The next warm copies only what failed.
        w.store.clear();
        let again = run(&w).await;
        let c = again.counters;
        assert_eq!((c.objects_hit, c.objects_copied), (2, 2));
    }

    #[tokio::test]
    async fn ten_percent_retryable_faults_still_copy_every_object_exactly_once() {
        let keys: Vec<String> = (0..2000).map(|i| format!("d/{i:05}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let w = setup(&refs);
        w.store.fail_every(
            Op::Copy,
            10,
            &[
                StoreError::Throttled("SlowDown".into()),
                StoreError::Service {
                    code: "InternalError".into(),
                    status: 500,
                    message: "injected".into(),
                },
                StoreError::Transport("connection reset (injected)".into()),
            ],
        );
        let last = run(&w).await;
        let c = last.counters;
        assert_eq!(
            last.outcome,
            Some(Outcome::Succeeded),
            "{:?}",
            last.failures
        );
        assert_eq!((c.objects_copied, c.objects_failed), (2000, 0));
        let injected = w.store.injected.load(Ordering::Relaxed);
        assert!(injected >= 200, "about 10% of calls failed: {injected}");
        // Every injected fault was retried, and seen in the progress.
        assert_eq!(c.copy_retries, injected);
        assert!(c.throttle_events >= injected * 2 / 3 - 1, "{c:?}");
        // Exactly one successful CopyObject per object reached the store.
        assert_eq!(w.store.inner().counters.copy.load(Ordering::Relaxed), 2000);
        assert_eq!(w.store.inner().keys(DIR).len(), 2000);
        assert_eq!(w.index.usage(DIR, "").await.unwrap().objects, 2000);
    }

    #[tokio::test]
    async fn a_failed_listing_fails_the_warm() {
        let w = setup(&["d/1"]);
        w.store.fail(
            Op::List,
            None,
            StoreError::AccessDenied("list denied".into()),
            None,
        );
        let (progress, _rx) = Progress::new("op".into(), w.clock.clone());
        let err = w.run(&spec(false), &progress, "op").await.unwrap_err();
        assert!(err.to_string().contains("list denied"), "{err}");
    }

    #[tokio::test]
    async fn rewarm_does_no_per_object_store_request() {
        let w = setup(&["d/1", "d/2", "d/3", "d/4", "d/5", "d/6", "d/7"]);
        run(&w).await;
        let copies = w.store.inner().counters.copy.load(Ordering::Relaxed);
        let lists = w.store.inner().counters.list.load(Ordering::Relaxed);
        let last = run(&w).await;
        assert_eq!(last.counters.objects_hit, 7);
        assert_eq!(
            w.store.inner().counters.copy.load(Ordering::Relaxed),
            copies
        );
        // Page size 3: 7 keys are 3 pages, the only requests of a re-warm.
        assert_eq!(
            w.store.inner().counters.list.load(Ordering::Relaxed) - lists,
            3
        );
    }
}

#[cfg(test)]
mod fault_tests {
    //! Warms racing an Evict and losing a claim (issue cases 7 and 8),
    //! ordered deterministically by a gate that holds one store call.
    use super::*;
    use crate::evict::{EvictSettings, Evictor};
    use crate::gate::{Gate, Pass};
    use crate::index::{KeyRange, SqliteIndex};
    use crate::store::{FaultStore, MemoryStore};
    use expresscache::proto::v1 as pb;
    use expresscache::{DirectoryBucketName, EvictSpec};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    const SRC: &str = "src";
    const DIR: &str = "cache--use1-az4--x-s3";

    /// Holds the `nth` call named `call` (about `subject`, if given) until
    /// released, and says when it got there.
    #[derive(Debug)]
    struct Hold {
        call: &'static str,
        subject: Option<&'static str>,
        nth: usize,
        seen: AtomicUsize,
        reached: Notify,
        release: Arc<Notify>,
    }

    #[derive(Debug, Clone)]
    struct HoldGate(Arc<Hold>);

    impl Gate for HoldGate {
        fn enter(&self, call: &'static str, subject: &str) -> BoxFuture<'static, Pass> {
            let hold = Arc::clone(&self.0);
            let matches = call == hold.call && hold.subject.is_none_or(|s| s == subject);
            let n = if matches {
                hold.seen.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                0
            };
            Box::pin(async move {
                if n == hold.nth {
                    hold.reached.notify_one();
                    hold.release.notified().await;
                }
                Box::new(()) as Pass
            })
        }
    }

    type W = Warmer<FaultStore<MemoryStore>, SqliteIndex>;

    fn world(keys: &[&str], hold: &Arc<Hold>) -> Arc<W> {
        world_on(keys, hold, Arc::new(crate::clock::SystemClock))
    }

    fn world_on(keys: &[&str], hold: &Arc<Hold>, clock: Arc<dyn Clock>) -> Arc<W> {
        let mem = MemoryStore::with_page_size(3);
        mem.create_bucket(SRC);
        mem.create_bucket(DIR);
        for k in keys {
            mem.put(SRC, k, 10);
        }
        Arc::new(Warmer::new(
            Arc::new(FaultStore::new(mem).with_gate(Arc::new(HoldGate(Arc::clone(hold))))),
            Arc::new(SqliteIndex::open_in_memory().unwrap()),
            clock,
            WarmSettings::default(),
        ))
    }

    fn hold(call: &'static str, subject: Option<&'static str>, nth: usize) -> Arc<Hold> {
        Arc::new(Hold {
            call,
            subject,
            nth,
            seen: AtomicUsize::new(0),
            reached: Notify::new(),
            release: Arc::new(Notify::new()),
        })
    }

    fn spec() -> WarmSpec {
        WarmSpec::parse(
            &pb::WarmCacheRequest {
                bucket: SRC.into(),
                prefixes: vec!["d/".into()],
                directory_bucket: DIR.into(),
                ttl: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &expresscache::Limits::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_evict_during_a_warm_ends_it_instead_of_reporting_deleted_objects_ready() {
        // Two listing pages per warm; hold the second page of the second.
        let h = hold("list", None, 4);
        let w = world(&["d/1", "d/2", "d/3", "d/4", "d/5", "d/6"], &h);
        let (p, _rx) = Progress::new("op1".into(), w.clock.clone());
        w.run(&spec(), &p, "op1").await.unwrap();
        assert_eq!(w.store.inner().keys(DIR).len(), 6);

        let rewarm = {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                let (p, _rx) = Progress::new("op2".into(), w.clock.clone());
                let r = w.run(&spec(), &p, "op2").await;
                (r, p.hits.load(AtomicOrdering::Relaxed))
            })
        };
        // The re-warm has counted page 1 (d/1..d/3) as hits.
        h.reached.notified().await;
        let evictor = Evictor::new(
            Arc::clone(&w.store),
            Arc::clone(&w.index),
            Arc::clone(&w.clock),
            EvictSettings::default(),
        );
        let evicted = evictor
            .evict(&EvictSpec {
                directory_bucket: DirectoryBucketName::parse(DIR).unwrap(),
                prefixes: vec![Prefix::parse("d/").unwrap()],
                force: false,
            })
            .await
            .unwrap();
        assert_eq!(evicted.tally.deleted, 6, "the warm's own lease was ended");
        h.release.notify_one();
        let (result, hits) = rewarm.await.unwrap();
        assert_eq!(hits, 3);
        match result {
            Err(WarmError::LeaseEnded { prefix }) => assert_eq!(prefix, "d/"),
            other => panic!("expected LeaseEnded, got {other:?}"),
        }
        assert!(
            !w.store.inner().keys(DIR).contains(&"d/1".to_owned()),
            "page 1 is gone: SUCCEEDED would have been a lie"
        );
    }

    #[tokio::test]
    async fn a_copier_whose_claim_was_taken_over_never_overwrites_the_newer_entry() {
        let h = hold("copy", Some("d/1"), 1);
        let w = world(&["d/1", "d/2"], &h);
        let run = {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                let (p, _rx) = Progress::new("slow".into(), w.clock.clone());
                w.run(&spec(), &p, "slow").await.unwrap();
                (
                    p.copied.load(AtomicOrdering::Relaxed),
                    p.shared.load(AtomicOrdering::Relaxed),
                )
            })
        };
        h.reached.notified().await;
        // The slow copier's claim lapses (it was paused) and another
        // replica takes d/1 over, copies the same version and records it.
        let etag = w.store.inner().etag(SRC, "d/1").unwrap();
        let later = w.clock.now() + 3_600_000;
        let taken = w
            .index
            .claim_copy(
                DIR,
                "d/1",
                &ClaimTerms {
                    owner: "other",
                    deadline: later + 1000,
                    now: later,
                },
            )
            .await
            .unwrap();
        assert_eq!(taken, ClaimOutcome::Claimed);
        let theirs = Entry {
            directory_bucket: DIR.into(),
            key: "d/1".into(),
            source_bucket: SRC.into(),
            source_key: "d/1".into(),
            source_etag: etag,
            size: 10,
            source_last_modified: None,
            dest_etag: "\"theirs\"".into(),
            cached_at: 42,
        };
        assert_eq!(
            w.index.complete_copy(&theirs, "other").await.unwrap(),
            Completion::Recorded
        );
        h.release.notify_one();
        let (copied, shared) = run.await.unwrap();
        assert_eq!(
            (copied, shared),
            (1, 1),
            "d/2 copied; d/1 found current after the lost claim"
        );
        let rec = w
            .index
            .records(DIR, &KeyRange::prefix("d/1"), 1)
            .await
            .unwrap();
        assert_eq!(
            rec[0].entry.as_ref(),
            Some(&theirs),
            "the newer holder's entry stands"
        );
        assert!(rec[0].claim.is_none());
    }

    /// The evicting process died right after DeleteObjects took effect,
    /// before it recorded the deletion (kill -9 between the two): once its
    /// claim lapses, the next warm must copy the keys, not count hits.
    #[tokio::test]
    async fn a_warm_after_an_evictor_died_between_delete_and_record_copies_again() {
        let h = hold("none", None, usize::MAX);
        let w = world(&["d/1", "d/2", "d/3"], &h);
        let (p, _rx) = Progress::new("op1".into(), w.clock.clone());
        assert_eq!(
            w.run(&spec(), &p, "op1").await.unwrap(),
            WarmOutcome::Succeeded
        );
        let keys: Vec<String> = ["d/1", "d/2", "d/3"].map(String::from).to_vec();
        // What the dead evictor did: claimed (its claim has long lapsed)...
        let now = w.clock.now();
        w.index
            .begin_evict(
                DIR,
                &keys,
                &ClaimTerms {
                    owner: "evict:dead",
                    deadline: now - 60_000,
                    now: now - 120_000,
                },
                true,
            )
            .await
            .unwrap();
        // ... and deleted; then it died.
        let targets: Vec<crate::store::DeleteTarget> = keys
            .iter()
            .map(|k| crate::store::DeleteTarget {
                key: k.clone(),
                etag: None,
            })
            .collect();
        w.store.delete_objects(DIR, &targets).await.unwrap();
        let (p, _rx) = Progress::new("op2".into(), w.clock.clone());
        assert_eq!(
            w.run(&spec(), &p, "op2").await.unwrap(),
            WarmOutcome::Succeeded
        );
        assert_eq!(
            (
                p.hits.load(AtomicOrdering::Relaxed),
                p.copied.load(AtomicOrdering::Relaxed)
            ),
            (0, 3)
        );
        assert_eq!(w.store.inner().keys(DIR), keys, "ready means present");
    }

    /// Our clock stepped past another copier's claim deadline by less than
    /// the skew margin: the claim is still the other's on a clock within
    /// the margin, so this warm waits instead of copying over it.
    #[tokio::test]
    async fn a_claim_lapsed_by_less_than_the_skew_margin_is_not_taken_over() {
        let clock = Arc::new(crate::clock::ManualClock::new(10_000_000));
        let h = hold("none", None, usize::MAX);
        let w = world_on(&["d/1"], &h, clock.clone());
        w.index
            .claim_copy(
                DIR,
                "d/1",
                &ClaimTerms {
                    owner: "other",
                    deadline: clock.now() - 1_000,
                    now: 0,
                },
            )
            .await
            .unwrap();
        let run = {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                let (p, _rx) = Progress::new("mine".into(), w.clock.clone());
                w.run(&spec(), &p, "mine").await.unwrap();
                p.copied.load(AtomicOrdering::Relaxed)
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!run.is_finished(), "waiting for the other's claim");
        assert!(
            w.store.inner().keys(DIR).is_empty(),
            "nothing copied over it"
        );
        clock.advance(5_000);
        assert_eq!(run.await.unwrap(), 1, "past the margin it is taken over");
        assert_eq!(w.store.inner().keys(DIR), ["d/1"]);
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;
    use crate::index::SqliteIndex;
    use crate::store::{FaultStore, MemoryStore, Op};
    use expresscache::proto::v1 as pb;

    #[tokio::test]
    async fn a_warm_that_makes_no_progress_stops_extending_its_lease() {
        let mem = MemoryStore::default();
        mem.create_bucket("src");
        mem.create_bucket("cache--use1-az4--x-s3");
        mem.put("src", "d/1", 10);
        let store = FaultStore::new(mem);
        // The copy never answers (within this test).
        store.delay(Op::Copy, Duration::from_secs(60));
        let w = Arc::new(Warmer::new(
            Arc::new(store),
            Arc::new(SqliteIndex::open_in_memory().unwrap()),
            Arc::new(crate::clock::SystemClock),
            WarmSettings {
                stall_limit: Duration::from_millis(300),
                ..WarmSettings::default()
            },
        ));
        let spec = WarmSpec::parse(
            &pb::WarmCacheRequest {
                bucket: "src".into(),
                prefixes: vec!["d/".into()],
                directory_bucket: "cache--use1-az4--x-s3".into(),
                ttl: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &expresscache::Limits::default(),
        )
        .unwrap();
        let started = w.clock.now();
        let task = {
            let w = Arc::clone(&w);
            tokio::spawn(async move {
                let (p, _rx) = Progress::new("stuck".into(), w.clock.clone());
                w.run(&spec, &p, "stuck").await
            })
        };
        // Renewals are due every 500 ms; a renewing warm would have pushed
        // the lease past started + 1.5 s by now.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let leases = w
            .index
            .covering_leases("cache--use1-az4--x-s3", "d/", 0)
            .await
            .unwrap();
        task.abort();
        assert_eq!(leases.len(), 1);
        assert!(
            leases[0].expires_at <= started + 1_100,
            "a stalled warm kept extending its lease: {} ms after start",
            leases[0].expires_at - started
        );
    }
}
