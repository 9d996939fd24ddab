//! One warm, start to finish: lease, plan, copy, record.
//!
//! Order matters for the guarantees (doc/SEMANTICS.md): leases are written
//! before the index is read, and an entry is written only after its copy
//! succeeded. Listing, planning and copying overlap: the planner feeds a
//! bounded queue that the copiers drain, so memory does not grow with the
//! number of objects.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use expresscache::proto::v1 as pb;
use expresscache::WarmSpec;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::index::{now_millis, CacheIndex, Entry, IndexError, Lease, Millis};
use crate::plan::{plan_page, Decision};
use crate::progress::Progress;
use crate::store::{CopyRequest, ObjectMeta, ObjectStore, StoreError};

/// Tuning of the copy path.
#[derive(Debug, Clone)]
pub struct WarmSettings {
    /// Copies in flight at once for one warm.
    pub max_concurrency: usize,
    /// Attempts per object for retryable errors (1 = no retry).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base_delay: Duration,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            max_attempts: 4,
            retry_base_delay: Duration::from_millis(100),
        }
    }
}

/// What a warm needs from the outside world.
#[derive(Debug)]
pub struct Warmer<S, I> {
    pub store: Arc<S>,
    pub index: Arc<I>,
    pub settings: WarmSettings,
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
}

struct CopyTask {
    object: ObjectMeta,
}

fn millis(t: SystemTime) -> Option<Millis> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

fn from_millis(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Jitter in [0, base) without a random number generator: the low bits of
/// the clock differ between concurrent tasks well enough to spread retries.
fn jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base_ns = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(u64::from(nanos) % base_ns)
}

impl<S: ObjectStore, I: CacheIndex> Warmer<S, I> {
    /// Runs the warm; per-key failures land in `progress`, an error means the
    /// warm as a whole failed.
    pub async fn run(&self, spec: &WarmSpec, progress: &Progress) -> Result<(), WarmError> {
        progress.set_phase(pb::Phase::Planning);
        self.write_leases(spec, progress).await?;

        let (tx, rx) = mpsc::channel::<CopyTask>(4 * self.settings.max_concurrency.max(1));
        let (entry_tx, entry_rx) = mpsc::channel::<Entry>(1024);
        let writer = tokio::spawn(write_entries(Arc::clone(&self.index), entry_rx));

        let copier = self.copy_all(spec, progress, rx, entry_tx);
        let planner = async {
            let r = self.plan(spec, progress, &tx).await;
            drop(tx);
            r
        };
        let (planned, ()) = tokio::join!(planner, copier);
        let written = writer
            .await
            .map_err(|e| IndexError::Storage(format!("entry writer stopped: {e}")))?;
        planned?;
        written?;
        Ok(())
    }

    /// Extends one lease per requested prefix to max(old, now + ttl). This
    /// happens before the index is read, so an eviction that starts after
    /// this point sees the lease.
    async fn write_leases(&self, spec: &WarmSpec, progress: &Progress) -> Result<(), WarmError> {
        let ttl_ms = i64::try_from(spec.ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at = now_millis().saturating_add(ttl_ms);
        let mut earliest = Millis::MAX;
        for prefix in &spec.prefixes {
            let stored = self
                .index
                .extend_lease(&Lease {
                    directory_bucket: spec.directory_bucket.to_string(),
                    prefix: prefix.to_string(),
                    source_bucket: spec.source.to_string(),
                    expires_at,
                })
                .await?;
            earliest = earliest.min(stored.expires_at);
        }
        progress.set_lease_expiry(from_millis(earliest));
        Ok(())
    }

    /// Lists each prefix page by page, merges it with the index and queues
    /// what must be copied.
    async fn plan(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        tx: &mpsc::Sender<CopyTask>,
    ) -> Result<(), WarmError> {
        let dir = spec.directory_bucket.as_str();
        let source = spec.source.as_str();
        for prefix in spec.listing_prefixes() {
            let mut token = None;
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .list_page(source, prefix.as_str(), token)
                    .await
                    .map_err(|e| WarmError::List {
                        bucket: source.to_owned(),
                        prefix: prefix.to_string(),
                        source: e,
                    })?;
                let Some(last) = page.objects.last().map(|o| o.key.clone()) else {
                    break;
                };
                let entries = self
                    .entries_between(dir, prefix.as_str(), after.as_deref(), &last)
                    .await?;
                Progress::add(&progress.listed, page.objects.len() as u64);
                Progress::add(
                    &progress.bytes_listed,
                    page.objects.iter().map(|o| o.size).sum(),
                );
                for (obj, decision) in plan_page(&page.objects, &entries, source, spec.force_copy) {
                    match decision {
                        Decision::Hit => Progress::add(&progress.hits, 1),
                        Decision::Clash { cached_from } => progress.fail(
                            &obj.key,
                            "KeyClash",
                            format!(
                                "{dir}/{} is already cached from bucket {cached_from:?}; \
                                 evict it first or warm into another directory bucket",
                                obj.key
                            ),
                        ),
                        Decision::Copy(_) => {
                            Progress::add(&progress.to_copy, 1);
                            Progress::add(&progress.bytes_to_copy, obj.size);
                            if tx
                                .send(CopyTask {
                                    object: obj.clone(),
                                })
                                .await
                                .is_err()
                            {
                                return Ok(());
                            }
                        }
                    }
                }
                after = Some(last);
                token = page.next;
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// All index entries under `prefix` with keys in (`after`, `upto`].
    async fn entries_between(
        &self,
        dir: &str,
        prefix: &str,
        after: Option<&str>,
        upto: &str,
    ) -> Result<Vec<Entry>, IndexError> {
        const PAGE: usize = 1000;
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_owned);
        loop {
            let page = self
                .index
                .entries(dir, prefix, cursor.as_deref(), Some(upto), PAGE)
                .await?;
            let full = page.len() == PAGE;
            cursor = page.last().map(|e| e.key.clone());
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    async fn copy_all(
        &self,
        spec: &WarmSpec,
        progress: &Progress,
        rx: mpsc::Receiver<CopyTask>,
        entries: mpsc::Sender<Entry>,
    ) {
        let mut announced = false;
        ReceiverStream::new(rx)
            .map(|task| {
                if !announced {
                    announced = true;
                    progress.set_phase(pb::Phase::Copying);
                }
                task
            })
            .for_each_concurrent(self.settings.max_concurrency.max(1), |task| {
                let entries = entries.clone();
                async move {
                    let obj = &task.object;
                    match self.copy_one(spec, obj).await {
                        Ok(entry) => {
                            Progress::add(&progress.copied, 1);
                            Progress::add(&progress.bytes_copied, obj.size);
                            // The writer only stops early if the index failed;
                            // that error is reported by the writer itself.
                            let _ = entries.send(entry).await;
                        }
                        Err(e) => progress.fail(&obj.key, e.code(), describe(&e)),
                    }
                }
            })
            .await;
    }

    async fn copy_one(&self, spec: &WarmSpec, obj: &ObjectMeta) -> Result<Entry, StoreError> {
        let req = CopyRequest {
            source_bucket: spec.source.as_str(),
            source_key: &obj.key,
            source_etag: &obj.etag,
            dest_bucket: spec.directory_bucket.as_str(),
            dest_key: &obj.key,
        };
        let mut attempt = 1;
        let copied = loop {
            match self.store.copy_object(&req).await {
                Ok(c) => break c,
                Err(e) if e.is_retryable() && attempt < self.settings.max_attempts => {
                    let backoff = self.settings.retry_base_delay * 2u32.pow(attempt - 1);
                    tracing::debug!(key = %obj.key, attempt, error = %e, "retrying copy");
                    tokio::time::sleep(backoff + jitter(backoff)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Entry {
            directory_bucket: spec.directory_bucket.to_string(),
            key: obj.key.clone(),
            source_bucket: spec.source.to_string(),
            source_key: obj.key.clone(),
            source_etag: obj.etag.clone(),
            size: obj.size,
            source_last_modified: obj.last_modified.and_then(millis),
            dest_etag: copied.etag,
            cached_at: now_millis(),
        })
    }
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

/// Writes entries in batches: one transaction per batch keeps the index
/// cost per copied object small.
async fn write_entries<I: CacheIndex>(
    index: Arc<I>,
    mut rx: mpsc::Receiver<Entry>,
) -> Result<(), IndexError> {
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = rx.recv_many(&mut batch, BATCH).await;
        if n == 0 {
            return Ok(());
        }
        index.put_entries(&batch).await?;
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SqliteIndex;
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
        Warmer {
            store: Arc::new(FaultStore::new(mem)),
            index: Arc::new(SqliteIndex::open_in_memory().unwrap()),
            settings: WarmSettings {
                retry_base_delay: Duration::from_millis(1),
                ..WarmSettings::default()
            },
        }
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
            },
            &expresscache::Limits::default(),
        )
        .unwrap()
    }

    async fn run(w: &Warmer<FaultStore<MemoryStore>, SqliteIndex>) -> pb::WarmProgress {
        let (progress, _rx) = Progress::new("op".into());
        w.run(&spec(false), &progress).await.unwrap();
        let outcome = if progress.failed.load(Ordering::Relaxed) > 0 {
            pb::Outcome::PartiallyFailed
        } else {
            pb::Outcome::Succeeded
        };
        progress.finish(outcome, None)
    }

    async fn cached_keys(w: &Warmer<FaultStore<MemoryStore>, SqliteIndex>) -> Vec<String> {
        w.index
            .entries(DIR, "", None, None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
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
        assert_eq!(last.outcome, pb::Outcome::Succeeded as i32);
        assert_eq!(last.counters.unwrap().objects_copied, 5);
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
        assert_eq!(last.outcome, pb::Outcome::PartiallyFailed as i32);
        let c = last.counters.unwrap();
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
        let c = again.counters.unwrap();
        assert_eq!((c.objects_hit, c.objects_copied), (2, 2));
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
        let (progress, _rx) = Progress::new("op".into());
        let err = w.run(&spec(false), &progress).await.unwrap_err();
        assert!(err.to_string().contains("list denied"), "{err}");
    }

    #[tokio::test]
    async fn rewarm_does_no_per_object_store_request() {
        let w = setup(&["d/1", "d/2", "d/3", "d/4", "d/5", "d/6", "d/7"]);
        run(&w).await;
        let copies = w.store.inner().counters.copy.load(Ordering::Relaxed);
        let lists = w.store.inner().counters.list.load(Ordering::Relaxed);
        let last = run(&w).await;
        assert_eq!(last.counters.unwrap().objects_hit, 7);
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
