//! The copy engine shared by every warm: one global in-flight cap, an
//! adaptive limit per destination bucket (see [`limiter`]), bounded retries with
//! jittered exponential backoff, and multipart `UploadPartCopy` for objects
//! above a threshold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;

pub use crate::core::limiter::AdaptiveLimit;
use crate::core::limiter;

use crate::jitter::{Jitter, RandomJitter};
use crate::metrics as metrics_names;
use crate::stop::StopSignal;
use crate::store::{Copied, CopyRequest, ObjectStore, PartCopy, StoreError};

/// The timeout of CompleteMultipartUpload, as if it moved this many bytes:
/// 1 GiB at the slowest copy rate is about 100 s on top of the base.
const COMPLETE_BUDGET_BYTES: u64 = 1024 * 1024 * 1024;

use crate::core::limits::{MAX_PARTS, MIN_PART};
/// Largest part the engine uses: big enough to keep part counts low, small
/// enough that a failed part costs little to redo.
pub const MAX_PART: u64 = 512 * 1024 * 1024;
/// The part size: at S3's 85-90 MB/s per request, under a second a part,
/// so a 5 GiB object is 80 parts that the bucket's limit runs side by side
/// (measured: doc/PERFORMANCE.md, large objects).
pub const DEFAULT_PART_SIZE: u64 = 64 * 1024 * 1024;

/// One multipart upload under way: the copy it makes, its id, and the
/// source's size.
struct Upload<'r, 'a> {
    req: &'r CopyRequest<'a>,
    upload_id: &'r str,
    size: u64,
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Requests in flight at once, across all warms and buckets.
    pub max_concurrency: usize,
    /// The adaptive limit never drops below this.
    pub min_concurrency: usize,
    /// Attempts per request for retryable errors (1 = no retry).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter, up to
    /// `retry_max_delay`.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Objects larger than this are copied in parts (CopyObject's limit is
    /// 5 GiB).
    pub multipart_threshold: u64,
    /// The size of a part (more for an object that would need over 10,000).
    pub part_size: u64,
    /// Parts of one object copied at once, at least: up to half the
    /// bucket's limit when it is higher, so a lone large object uses the
    /// bandwidth small ones would (the limit still bounds all requests, and
    /// half of it stays for the rest of the warm).
    pub part_concurrency: usize,
    /// Time one attempt of a request may take before it is abandoned and
    /// retried (a request that never answers must not hang a warm).
    /// Copies get more in proportion to their size, at `min_copy_rate`.
    pub request_timeout: Duration,
    /// The slowest server-side copy rate (bytes/s) still considered alive,
    /// which sizes the timeout of a copy or part: a 5 GiB CopyObject gets
    /// `request_timeout` + 5 GiB / this.
    pub min_copy_rate: u64,
}

/// When work last moved: shared by everything a warm does, so a warm can
/// tell "slow" (requests keep ending) from "stuck" (none does).
#[derive(Debug)]
pub struct Activity {
    started: tokio::time::Instant,
    /// Milliseconds after `started` of the last sign of progress.
    last: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Notes a sign of progress now.
    pub fn touch(&self) {
        let at = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(at, Ordering::Relaxed);
    }

    /// How long since the last sign of progress (or since the start).
    pub fn idle(&self) -> Duration {
        let at = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }
}

/// What it took to copy one object.
#[derive(Debug, Default)]
pub struct CopyStats {
    /// Requests retried after a retryable error.
    pub retries: AtomicU32,
    /// Of those, throttling answers (SlowDown, 429, 503, timeouts).
    pub throttled: AtomicU32,
    /// Touched whenever one request attempt ends, however it ended.
    pub activity: Option<Arc<Activity>>,
}

impl CopyStats {
    pub fn with_activity(activity: Arc<Activity>) -> Self {
        Self {
            activity: Some(activity),
            ..Self::default()
        }
    }
}

/// One request counted in the in-flight gauge until dropped (also when
/// its warm is aborted mid-request).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> Self {
        let g = metrics::gauge!(metrics_names::S3_REQUESTS_IN_FLIGHT);
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The part size for an object of `size` bytes, `preferred` if S3 allows.
pub fn part_size(size: u64, preferred: u64) -> u64 {
    preferred
        .clamp(MIN_PART, MAX_PART)
        .max(size.div_ceil(MAX_PARTS))
}

#[derive(Debug)]
pub struct CopyEngine {
    store: Arc<dyn ObjectStore>,
    /// Touched whenever any attempt of any warm ends.
    activity: Activity,
    global: Arc<Semaphore>,
    /// Each destination bucket's limit, and the gauge that shows it (made
    /// once: a gauge with a label costs a lookup and an allocation).
    limiters: Mutex<HashMap<String, (Arc<AdaptiveLimit>, metrics::Gauge)>>,
    settings: EngineSettings,
    jitter: Arc<dyn Jitter>,
    /// Live replicas sharing each bucket's budget (1 alone).
    replicas: std::sync::atomic::AtomicUsize,
    /// The index's busy answers already acted on ([`crate::pressure`]).
    index_busy_seen: std::sync::atomic::AtomicU64,
}

impl CopyEngine {
    pub fn new(store: Arc<dyn ObjectStore>, settings: EngineSettings) -> Self {
        Self {
            store,
            activity: Activity::default(),
            global: Arc::new(Semaphore::new(settings.max_concurrency.max(1))),
            limiters: Mutex::default(),
            settings,
            jitter: Arc::new(RandomJitter),
            replicas: std::sync::atomic::AtomicUsize::new(1),
            index_busy_seen: std::sync::atomic::AtomicU64::new(crate::pressure::index_busy_count()),
        }
    }

    /// Cuts `limiter` once for any busy answers of the index since the
    /// last look (the limiter itself cuts at most once per cool-down).
    fn heed_index(&self, limiter: &AdaptiveLimit, gauge: &metrics::Gauge) {
        // Every attempt looks: a read, and a write only when it changed.
        let busy = crate::pressure::index_busy_count();
        if self.index_busy_seen.load(Ordering::Relaxed) == busy {
            return;
        }
        if self.index_busy_seen.swap(busy, Ordering::Relaxed) != busy && limiter.on_throttle() {
            gauge.set(limiter.limit() as f64);
            tracing::debug!(limit = limiter.limit(), "index busy: concurrency halved");
        }
    }

    /// This replica's share of a bucket's request budget
    /// (`max_concurrency`) when `replicas` replicas share it: an equal
    /// part, rounded down (so all together never exceed it), at least the
    /// minimum.
    pub fn share(&self, replicas: usize) -> usize {
        (self.settings.max_concurrency / replicas.max(1)).max(self.settings.min_concurrency.max(1))
    }

    /// Splits every bucket's budget among `replicas` live replicas from now
    /// on.
    pub fn set_replicas(&self, replicas: usize) {
        let replicas = replicas.max(1);
        if self.replicas.swap(replicas, Ordering::Relaxed) == replicas {
            return;
        }
        let share = self.share(replicas);
        tracing::info!(replicas, share, "per-bucket request budget shared");
        let map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        for (l, _) in map.values() {
            l.set_max(share);
        }
    }

    /// Takes retry jitter from `jitter` instead of a random source.
    #[must_use]
    #[cfg(any(test, feature = "testing"))]
    pub fn with_jitter(mut self, jitter: Arc<dyn Jitter>) -> Self {
        self.jitter = jitter;
        self
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    fn limiter(&self, bucket: &str) -> (Arc<AdaptiveLimit>, metrics::Gauge) {
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        // Every request asks: look up without allocating the key.
        if let Some((l, g)) = map.get(bucket) {
            return (Arc::clone(l), g.clone());
        }
        let max = self.share(self.replicas.load(Ordering::Relaxed));
        let l = AdaptiveLimit::new(limiter::INITIAL_LIMIT, self.settings.min_concurrency, max);
        let g = metrics::gauge!(metrics_names::S3_CONCURRENCY_LIMIT, "bucket" => bucket.to_owned());
        map.insert(bucket.to_owned(), (Arc::clone(&l), g.clone()));
        (l, g)
    }

    /// How long since any attempt of any warm ended.
    pub fn idle(&self) -> Duration {
        self.activity.idle()
    }

    /// The current adaptive limit for `bucket`.
    pub fn limit_for(&self, bucket: &str) -> usize {
        self.limiter(bucket).0.limit()
    }

    /// How long one attempt of a request moving `bytes` may take.
    pub fn timeout_for(&self, bytes: u64) -> Duration {
        let rate = self.settings.min_copy_rate.max(1);
        self.settings.request_timeout + Duration::from_secs(bytes.div_ceil(rate))
    }

    /// Runs `call`, a request that moves `bytes`, under the global cap and
    /// `bucket`'s adaptive limit, each attempt bounded by
    /// `timeout_for(bytes)`, retrying retryable errors (a timeout is one)
    /// with backoff.
    async fn attempt<T, F, Fut>(
        &self,
        operation: &'static str,
        bucket: &str,
        bytes: u64,
        stats: &CopyStats,
        stop: &StopSignal,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        self.attempt_within(
            operation,
            bucket,
            Some(bytes),
            self.timeout_for(bytes),
            stats,
            stop,
            call,
        )
        .await
    }

    /// [`Self::attempt`], each attempt bounded by `limit` instead. A request
    /// whose time shows neither its bytes nor a queue (`bytes: None`: a
    /// CompleteMultipartUpload, seconds for many parts) feeds no window of
    /// the adaptive limit.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_within<T, F, Fut>(
        &self,
        operation: &'static str,
        bucket: &str,
        bytes: Option<u64>,
        limit: Duration,
        stats: &CopyStats,
        stop: &StopSignal,
        mut call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let (limiter, limit_gauge) = self.limiter(bucket);
        let mut attempt = 1;
        loop {
            self.heed_index(&limiter, &limit_gauge);
            let result = {
                // The bucket's slot first: requests waiting on one
                // throttled bucket must not hold global permits that
                // another bucket's requests could use.
                let slot = limiter.acquire().await;
                let _global = self
                    .global
                    .acquire()
                    .await
                    .map_err(|_| StoreError::Transport("copy engine closed".into()))?;
                // Waiting for capacity can take long; a stopped warm sends
                // nothing more.
                if stop.is_set() || stop.lapsed() {
                    return Err(StoreError::Stopped);
                }
                let started = tokio::time::Instant::now();
                let in_flight = InFlight::enter();
                let r = tokio::time::timeout(limit, call())
                    .await
                    .unwrap_or_else(|_| Err(crate::store::timed_out("request", limit)));
                drop(in_flight);
                let outcome = if r.is_ok() { "ok" } else { "error" };
                metrics::histogram!(metrics_names::S3_REQUEST_DURATION,
                    "operation" => operation, "outcome" => outcome)
                .record(started.elapsed());
                if let Some(a) = &stats.activity {
                    a.touch();
                }
                self.activity.touch();
                if let (Ok(_), Some(bytes)) = (&r, bytes) {
                    limiter.on_success(&slot, started.elapsed(), bytes);
                    limit_gauge.set(limiter.limit() as f64);
                }
                r
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.settings.max_attempts => {
                    self.before_retry(&e, attempt, bucket, (&limiter, &limit_gauge), stats)
                        .await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After failed attempt `attempt` of a request to `bucket` that will be
    /// retried: counts it, halves the bucket's limit on a throttle, and
    /// backs off (with jitter).
    async fn before_retry(
        &self,
        e: &StoreError,
        attempt: u32,
        bucket: &str,
        (limiter, limit_gauge): (&AdaptiveLimit, &metrics::Gauge),
        stats: &CopyStats,
    ) {
        stats.retries.fetch_add(1, Ordering::Relaxed);
        if e.class().backs_off() {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            let cut = limiter.on_throttle();
            limit_gauge.set(limiter.limit() as f64);
            if cut {
                tracing::debug!(
                    bucket,
                    limit = limiter.limit(),
                    "throttled: concurrency halved"
                );
            }
        }
        let backoff = expresscache::Backoff::new(
            self.settings.retry_base_delay,
            self.settings.retry_max_delay,
        )
        .ceiling(attempt);
        tracing::debug!(attempt, error = %e, "retrying");
        tokio::time::sleep(backoff + self.jitter.below(backoff)).await;
    }

    /// Copies one object of `size` bytes, in parts above the threshold.
    pub async fn copy(
        &self,
        req: &CopyRequest<'_>,
        size: u64,
        stats: &CopyStats,
        stop: &StopSignal,
    ) -> Result<Copied, StoreError> {
        if size > self.settings.multipart_threshold {
            return self.copy_multipart(req, size, stats, stop).await;
        }
        self.attempt("copy_object", req.dest_bucket, size, stats, stop, || {
            self.store.copy_object(req)
        })
        .await
    }

    /// Aborts the uploads of `req`'s destination key that an earlier
    /// copier left open. Only the holder of the key's copy claim copies
    /// it, so an open upload is a copier's that lost the claim: one that
    /// died, or one that is frozen (a paused replica taken over) and may
    /// still send its Complete, which would put the version it copied over
    /// a newer one recorded since. Once aborted, that Complete fails
    /// (NoSuchUpload); one that landed before it is overwritten by this
    /// copy. (A whole-object copy needs none of this: a late one is
    /// conditional on its source ETag, so it lands only the version this
    /// copy would.)
    async fn abort_earlier_uploads(
        &self,
        req: &CopyRequest<'_>,
        stats: &CopyStats,
        stop: &StopSignal,
    ) -> Result<(), StoreError> {
        let (dest, key) = (req.dest_bucket, req.dest_key);
        let open = self
            .attempt("list_multipart_uploads", dest, 0, stats, stop, || {
                self.store.unfinished_uploads(dest, key)
            })
            .await?;
        for upload_id in open {
            tracing::warn!(key, upload_id,
                "aborting an upload an earlier copier left open, so its late Complete cannot land over this copy");
            let aborted = self
                .attempt("abort_multipart_upload", dest, 0, stats, stop, || {
                    self.store.abort_multipart(dest, key, &upload_id)
                })
                .await;
            match aborted {
                // Completed or aborted meanwhile: nothing is left to land.
                Ok(()) | Err(StoreError::NoSuchKey(_)) => {}
                Err(StoreError::Service { ref code, .. }) if code == "NoSuchUpload" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn copy_multipart(
        &self,
        req: &CopyRequest<'_>,
        size: u64,
        stats: &CopyStats,
        stop: &StopSignal,
    ) -> Result<Copied, StoreError> {
        let dest = req.dest_bucket;
        let part = part_size(size, self.settings.part_size);
        let count = size.div_ceil(part);
        let at_once = (self.limit_for(dest) / 2).max(self.settings.part_concurrency.max(1));
        self.abort_earlier_uploads(req, stats, stop).await?;
        let upload_id = self
            .attempt("create_multipart_upload", dest, 0, stats, stop, || {
                self.store.create_multipart(req)
            })
            .await?;
        tracing::debug!(key = req.dest_key, size, part, count, "multipart copy");
        let upload = Upload {
            req,
            upload_id: &upload_id,
            size,
        };
        let result = async {
            let parts = self.copy_parts(&upload, part, at_once, stats, stop).await?;
            self.complete(&upload, &parts, stats, stop).await
        }
        .await;
        if result.is_err() {
            // Never leave an incomplete upload (it is billed until aborted).
            let aborted = self
                .attempt(
                    "abort_multipart_upload",
                    dest,
                    0,
                    stats,
                    &StopSignal::default(),
                    || self.store.abort_multipart(dest, req.dest_key, &upload_id),
                )
                .await;
            if let Err(e) = aborted {
                tracing::warn!(key = req.dest_key, upload_id, error = %e, "could not abort multipart upload; a lifecycle rule must clean it up");
            }
        }
        result
    }

    /// Copies every part of `upload`, `part` bytes each (the last the
    /// rest), `at_once` at a time; the parts' numbers and ETags in order.
    async fn copy_parts(
        &self,
        upload: &Upload<'_, '_>,
        part: u64,
        at_once: usize,
        stats: &CopyStats,
        stop: &StopSignal,
    ) -> Result<Vec<(i32, String)>, StoreError> {
        let (req, size) = (upload.req, upload.size);
        let parts = futures::stream::iter(1..=size.div_ceil(part))
            .map(|n| async move {
                let first = (n - 1) * part;
                let last = (first + part).min(size) - 1;
                let number = i32::try_from(n).unwrap_or(i32::MAX);
                let pc = PartCopy {
                    copy: req.clone(),
                    upload_id: upload.upload_id,
                    part_number: number,
                    first_byte: first,
                    last_byte: last,
                };
                self.attempt(
                    "upload_part_copy",
                    req.dest_bucket,
                    last - first + 1,
                    stats,
                    stop,
                    || self.store.upload_part_copy(&pc),
                )
                .await
                .map(|etag| (number, etag))
            })
            .buffer_unordered(at_once)
            .collect::<Vec<_>>()
            .await;
        let mut done = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
        done.sort_by_key(|(n, _)| *n);
        Ok(done)
    }

    /// Assembles `upload` from `parts` and checks the object that landed
    /// has the source's size.
    async fn complete(
        &self,
        upload: &Upload<'_, '_>,
        parts: &[(i32, String)],
        stats: &CopyStats,
        stop: &StopSignal,
    ) -> Result<Copied, StoreError> {
        let (dest, key) = (upload.req.dest_bucket, upload.req.dest_key);
        let copied = self
            // Assembling parts takes S3 time that grows with their count,
            // not with the bytes (nothing is copied again).
            .attempt_within(
                "complete_multipart_upload",
                dest,
                None,
                self.timeout_for(COMPLETE_BUDGET_BYTES),
                stats,
                stop,
                || {
                    self.store
                        .complete_multipart(dest, key, upload.upload_id, parts)
                },
            )
            .await?;
        let landed = self
            .attempt("head_object", dest, 0, stats, stop, || {
                self.store.head_object(dest, key)
            })
            .await?;
        if landed.size != upload.size {
            return Err(StoreError::Unexpected {
                code: "SizeMismatch",
                message: format!(
                    "multipart copy produced {} bytes, expected {}",
                    landed.size, upload.size
                ),
            });
        }
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultStore, MemoryStore, Op};

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn part_sizes_respect_s3_limits() {
        assert_eq!(part_size(12 * MIB, 5 * MIB), 5 * MIB);
        assert_eq!(
            part_size(12 * MIB, MIB),
            MIN_PART,
            "parts are at least 5 MiB"
        );
        assert_eq!(part_size(6 << 30, 5 << 30), MAX_PART);
        let huge = 10u64 << 40; // 10 TiB
        assert!(huge.div_ceil(part_size(huge, 5 << 30)) <= MAX_PARTS);
    }

    fn engine(store: Arc<FaultStore<MemoryStore>>) -> CopyEngine {
        CopyEngine::new(
            store,
            EngineSettings {
                multipart_threshold: 5 * MIB,
                part_size: 5 * MIB,
                retry_base_delay: Duration::from_millis(1),
                ..EngineSettings::default()
            },
        )
    }

    fn store_with(size: u64) -> (Arc<FaultStore<MemoryStore>>, String) {
        let mem = MemoryStore::default();
        mem.create_bucket("src");
        mem.create_bucket("dst");
        let etag = mem.put("src", "big", size);
        (Arc::new(FaultStore::new(mem)), etag)
    }

    fn req(etag: &str) -> CopyRequest<'_> {
        copy_of("big", etag)
    }

    /// Holds the first Complete until told to let it go: a copier frozen
    /// (SIGSTOP, a VM pause) just before sending it.
    #[derive(Debug)]
    struct FreezeFirstComplete {
        /// Told when the first Complete is held.
        at_complete: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
        /// The held Complete goes on when this resolves.
        wake: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    }

    impl crate::gate::Gate for FreezeFirstComplete {
        fn enter(
            &self,
            call: &'static str,
            _subject: &str,
        ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
            let wake = (call == "complete_multipart")
                .then(|| self.wake.lock().unwrap().take())
                .flatten();
            if wake.is_some() {
                if let Some(tell) = self.at_complete.lock().unwrap().take() {
                    let _ = tell.send(());
                }
            }
            Box::pin(async move {
                if let Some(wake) = wake {
                    let _ = wake.await;
                }
                Box::new(()) as crate::gate::Pass
            })
        }
    }

    #[tokio::test]
    async fn a_frozen_copiers_late_complete_cannot_land_over_a_newer_copy() {
        // Copier A copies version 1 in parts and freezes before its
        // Complete; the source changes; copier B (the attempt that took
        // the warm over) copies version 2 and records it; A wakes and
        // sends its Complete.
        let (at_complete, frozen) = tokio::sync::oneshot::channel();
        let (wake, woken) = tokio::sync::oneshot::channel();
        let gate = Arc::new(FreezeFirstComplete {
            at_complete: std::sync::Mutex::new(Some(at_complete)),
            wake: std::sync::Mutex::new(Some(woken)),
        });
        let mem = MemoryStore::default();
        mem.create_bucket("src");
        mem.create_bucket("dst");
        let v1 = mem.put("src", "big", 12 * MIB);
        let store = Arc::new(FaultStore::new(mem).with_gate(gate));
        let e = Arc::new(engine(Arc::clone(&store)));
        let a = tokio::spawn({
            let (e, v1) = (Arc::clone(&e), v1.clone());
            async move {
                e.copy(
                    &req(&v1),
                    12 * MIB,
                    &CopyStats::default(),
                    &StopSignal::default(),
                )
                .await
            }
        });
        frozen.await.unwrap();
        let v2 = store.inner().put("src", "big", 12 * MIB);
        let b = e
            .copy(
                &req(&v2),
                12 * MIB,
                &CopyStats::default(),
                &StopSignal::default(),
            )
            .await
            .expect("the newer copy succeeds");
        wake.send(()).unwrap();
        let late = a.await.unwrap();
        assert!(
            late.is_err(),
            "the frozen copier's Complete must fail: {late:?}"
        );
        assert_eq!(
            store.inner().etag("dst", "big"),
            Some(b.etag),
            "the destination holds the newer copy, the one recorded"
        );
        assert_eq!(store.inner().open_uploads(), 0, "nothing left billed");
    }

    #[tokio::test]
    async fn a_copier_past_its_run_deadline_sends_nothing() {
        // A process woken from a pause past its run's deadline: another
        // replica may run the warm now. Its copies see the deadline before
        // the run keeper (which would stop the warm) gets to run.
        let (store, etag) = store_with(1024);
        let e = engine(Arc::clone(&store));
        let stop = StopSignal::default();
        let clock: Arc<dyn crate::core::clock::Clock> = Arc::new(crate::core::clock::SystemClock);
        stop.hold_until(clock.now(), &clock);
        let sent = e
            .copy(&req(&etag), 1024, &CopyStats::default(), &stop)
            .await;
        assert!(matches!(sent, Err(StoreError::Stopped)), "{sent:?}");
        assert_eq!(store.inner().etag("dst", "big"), None, "nothing was copied");
    }

    #[tokio::test]
    async fn large_objects_are_copied_in_parts_and_verified() {
        let (store, etag) = store_with(12 * MIB + 7);
        let e = engine(store.clone());
        let stats = CopyStats::default();
        e.copy(&req(&etag), 12 * MIB + 7, &stats, &StopSignal::default())
            .await
            .unwrap();
        assert_eq!(store.calls.part_copy.load(Ordering::Relaxed), 3);
        assert_eq!(store.inner().size("dst", "big"), Some(12 * MIB + 7));
        assert_eq!(store.inner().open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload() {
        let (store, etag) = store_with(12 * MIB);
        store.fail(
            Op::PartCopy,
            None,
            StoreError::AccessDenied("no".into()),
            None,
        );
        let e = engine(store.clone());
        let err = e
            .copy(
                &req(&etag),
                12 * MIB,
                &CopyStats::default(),
                &StopSignal::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "AccessDenied");
        assert_eq!(store.inner().open_uploads(), 0, "no incomplete upload left");
        assert!(store.inner().size("dst", "big").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_by_the_injected_jitter() {
        let (store, etag) = store_with(10);
        store.fail(
            Op::Copy,
            None,
            StoreError::Throttled("SlowDown".into()),
            Some(3),
        );
        let e = CopyEngine::new(
            store.clone(),
            EngineSettings {
                retry_base_delay: Duration::from_millis(100),
                ..EngineSettings::default()
            },
        )
        .with_jitter(Arc::new(crate::jitter::NoJitter));
        let start = tokio::time::Instant::now();
        e.copy(
            &req(&etag),
            10,
            &CopyStats::default(),
            &StopSignal::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(100 + 200 + 400),
            "base, then doubled per attempt, nothing added"
        );
    }

    #[tokio::test]
    async fn throttling_is_retried_and_halves_the_bucket_limit() {
        let (store, etag) = store_with(10);
        store.fail(
            Op::Copy,
            None,
            StoreError::Throttled("SlowDown".into()),
            Some(2),
        );
        let e = engine(store.clone());
        let stats = CopyStats::default();
        e.copy(&req(&etag), 10, &stats, &StopSignal::default())
            .await
            .unwrap();
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
        assert_eq!(stats.throttled.load(Ordering::Relaxed), 2);
        assert!(
            e.limit_for("dst") <= 32,
            "limit was halved: {}",
            e.limit_for("dst")
        );
    }

    #[tokio::test]
    async fn a_busy_index_halves_the_limit_of_the_bucket_being_copied_to() {
        let (store, etag) = store_with(10);
        let e = engine(store.clone());
        let stats = CopyStats::default();
        e.copy(&req(&etag), 10, &stats, &StopSignal::default())
            .await
            .unwrap();
        let before = e.limit_for("dst");
        // The index answered busy (a DynamoDB throttle) since.
        crate::pressure::note_index_busy();
        e.copy(&req(&etag), 10, &stats, &StopSignal::default())
            .await
            .unwrap();
        let after = e.limit_for("dst");
        assert!(
            after < before && after <= before / 2 + 1,
            "cut as for a SlowDown: {before} -> {after}"
        );
        assert_eq!(stats.retries.load(Ordering::Relaxed), 0, "no copy failed");
    }

    /// An engine whose copies take their bytes at 5 MiB/s (S3's per-request
    /// copy rate, scaled), with 5 MiB parts above 5 MiB.
    fn byte_costed(
        objects: &[(&str, u64)],
    ) -> (CopyEngine, Arc<FaultStore<MemoryStore>>, Vec<String>) {
        let mem = MemoryStore::default();
        mem.create_bucket("src");
        mem.create_bucket("dst");
        let etags = objects
            .iter()
            .map(|(k, size)| mem.put("src", k, *size))
            .collect();
        let store = Arc::new(FaultStore::new(mem));
        store.copy_rate(5.0 * MIB as f64);
        (engine(store.clone()), store, etags)
    }

    fn copy_of<'a>(key: &'a str, etag: &'a str) -> CopyRequest<'a> {
        CopyRequest {
            source_bucket: "src",
            source_key: key,
            source_etag: etag,
            dest_bucket: "dst",
            dest_key: key,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_large_object_copies_its_parts_side_by_side_up_to_half_the_limit() {
        let size = 200 * 5 * MIB;
        let (e, store, etags) = byte_costed(&[("big", size)]);
        let limit = e.limit_for("dst");
        e.copy(
            &copy_of("big", &etags[0]),
            size,
            &CopyStats::default(),
            &StopSignal::default(),
        )
        .await
        .unwrap();
        assert_eq!(store.calls.part_copy.load(Ordering::Relaxed), 200);
        assert_eq!(
            store.calls.peak_parts_in_flight.load(Ordering::Relaxed),
            (limit / 2) as u64,
            "half the bucket's limit ({limit}), not the 8 of part_concurrency"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_object_and_small_ones_each_keep_moving_while_the_other_copies() {
        // One object of 400 parts (a second each) among 2,000 small ones
        // (a second each, too: 5 MiB): neither waits for the other to end.
        let big = 400 * 5 * MIB;
        let mut objects = vec![("big".to_owned(), big)];
        objects.extend((0..2000).map(|i| (format!("small/{i}"), 5 * MIB)));
        let named: Vec<(&str, u64)> = objects.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        let (e, store, etags) = byte_costed(&named);
        let e = &e;
        let half = (e.limit_for("dst") / 2) as u64;
        let stop = StopSignal::default();
        let big_done = std::sync::atomic::AtomicU64::new(0);
        let smalls_done = std::sync::atomic::AtomicU64::new(0);
        let smalls_at_big_end = std::sync::atomic::AtomicU64::new(0);
        let large = async {
            e.copy(
                &copy_of("big", &etags[0]),
                big,
                &CopyStats::default(),
                &stop,
            )
            .await
            .unwrap();
            big_done.store(1, Ordering::SeqCst);
            smalls_at_big_end.store(smalls_done.load(Ordering::SeqCst), Ordering::SeqCst);
        };
        let smalls = futures::stream::iter(named.iter().zip(&etags).skip(1)).for_each_concurrent(
            2 * e.limit_for("dst"),
            |((key, size), etag)| {
                let (stop, smalls_done) = (&stop, &smalls_done);
                async move {
                    e.copy(&copy_of(key, etag), *size, &CopyStats::default(), stop)
                        .await
                        .unwrap();
                    smalls_done.fetch_add(1, Ordering::SeqCst);
                }
            },
        );
        tokio::join!(large, smalls);
        let at_big_end = smalls_at_big_end.load(Ordering::SeqCst);
        assert_eq!(big_done.load(Ordering::SeqCst), 1);
        // The small ones had at least half the slots while the parts ran,
        // and the parts no more than half.
        assert!(
            at_big_end >= 400,
            "small copies kept moving: {at_big_end} done when the large one ended"
        );
        assert!(
            at_big_end < 2000,
            "the large object was not left until the small ones were done"
        );
        assert!(store.calls.peak_parts_in_flight.load(Ordering::Relaxed) <= half);
    }
}
