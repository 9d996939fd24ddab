//! Deleting from the cache: `Evict` (now, on request) and the expiry sweeper
//! (when leases run out). Both delete only what they proved dead:
//!
//! 1. `begin_evict` claims each key in one atomic index step that fails if a
//!    live lease covers it (unless forced) or another claim is live;
//! 2. the S3 delete is fenced by the entry's destination ETag;
//! 3. `finish_evict` removes the record only if the eviction claim is still
//!    ours.
//!
//! A warm writes its lease before it reads the index and waits out eviction
//! claims, so it either stops the eviction at step 1 or copies afresh after
//! step 3. doc/SEMANTICS.md has the full argument.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use expresscache::proto::v1 as pb;
use expresscache::EvictSpec;

use crate::clock::Clock;
use crate::index::{CacheIndex, EvictDecision, IndexError, Millis};
use crate::store::{DeleteTarget, ObjectStore, StoreError, DELETE_BATCH};

#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("deleting from {bucket}: {source}")]
    Store { bucket: String, source: StoreError },
}

/// Most `kept_under` prefixes reported.
const MAX_KEPT_UNDER: usize = 100;

/// What one pass of deletion did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub deleted: u64,
    pub bytes: u64,
    /// Kept because a live lease covers them.
    pub kept_live: u64,
    /// Kept because a copy is in flight.
    pub kept_busy: u64,
    pub kept_under: BTreeSet<String>,
    pub failures: Vec<pb::KeyFailure>,
}

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SweepReport {
    pub leases_expired: u64,
    pub leases_removed: u64,
    pub tally: Tally,
}

/// Deletes cached objects safely; shared by `Evict` and the sweeper.
#[derive(Debug)]
pub struct Evictor<S, I> {
    pub store: Arc<S>,
    pub index: Arc<I>,
    pub clock: Arc<dyn Clock>,
    /// How long an eviction claim lasts (a crashed evictor blocks warms of
    /// its keys at most this long).
    pub claim_ttl: Duration,
}

impl<S: ObjectStore, I: CacheIndex> Evictor<S, I> {
    fn deadline(&self, now: Millis) -> Millis {
        now.saturating_add(crate::index::span_millis(self.claim_ttl))
    }

    /// Ends the leases at or under each prefix now, then deletes every
    /// object under them that no other live lease covers (all of them with
    /// `force`).
    pub async fn evict(&self, spec: &EvictSpec) -> Result<pb::EvictResponse, EvictError> {
        let dir = spec.directory_bucket.as_str();
        let now = self.clock.now();
        let mut leases_ended = 0;
        for prefix in &spec.prefixes {
            leases_ended += self
                .index
                .end_leases(dir, prefix.as_str(), now)
                .await?
                .len() as u64;
        }
        let owner = format!("evict:{}", uuid::Uuid::new_v4());
        let mut tally = Tally::default();
        for prefix in expresscache::request::minimal_cover(&spec.prefixes) {
            self.delete_under(dir, prefix.as_str(), &owner, spec.force, &mut tally)
                .await?;
        }
        Ok(pb::EvictResponse {
            objects_deleted: tally.deleted,
            bytes_deleted: tally.bytes,
            leases_ended,
            failures: tally.failures,
            objects_kept: tally.kept_live + tally.kept_busy,
            kept_under: tally.kept_under.into_iter().collect(),
            forced: spec.force,
        })
    }

    /// One pass of the expiry sweeper: for each expired lease, deletes the
    /// objects under it that no live lease covers, then drops the lease
    /// record (unless something under it could not be settled yet, or a
    /// warm revived it meanwhile).
    pub async fn sweep_once(&self) -> Result<SweepReport, EvictError> {
        const BATCH: usize = 100;
        let mut report = SweepReport::default();
        let owner = format!("sweep:{}", uuid::Uuid::new_v4());
        let expired = self.index.expired_leases(self.clock.now(), BATCH).await?;
        for lease in expired {
            report.leases_expired += 1;
            let mut tally = Tally::default();
            self.delete_under(
                &lease.directory_bucket,
                &lease.prefix,
                &owner,
                false,
                &mut tally,
            )
            .await?;
            let settled = tally.failures.is_empty() && tally.kept_busy == 0;
            if settled
                && self
                    .index
                    .remove_lease_if_expired(&lease, self.clock.now())
                    .await?
            {
                report.leases_removed += 1;
            }
            report.tally.deleted += tally.deleted;
            report.tally.bytes += tally.bytes;
            report.tally.kept_live += tally.kept_live;
            report.tally.kept_busy += tally.kept_busy;
            report.tally.failures.extend(tally.failures);
        }
        Ok(report)
    }

    /// Runs the protocol over every cached key under `prefix`.
    async fn delete_under(
        &self,
        dir: &str,
        prefix: &str,
        owner: &str,
        force: bool,
        tally: &mut Tally,
    ) -> Result<(), EvictError> {
        let mut after: Option<String> = None;
        loop {
            let page = self
                .index
                .records(dir, prefix, after.as_deref(), None, DELETE_BATCH)
                .await?;
            let Some(last) = page.last().map(|r| r.key.clone()) else {
                return Ok(());
            };
            let keys: Vec<String> = page
                .iter()
                .filter(|r| r.entry.is_some())
                .map(|r| r.key.clone())
                .collect();
            after = Some(last);
            if keys.is_empty() {
                continue;
            }
            let now = self.clock.now();
            let decisions = self
                .index
                .begin_evict(dir, &keys, owner, self.deadline(now), now, force)
                .await?;
            let mut marked = Vec::new();
            for d in decisions {
                match d {
                    EvictDecision::Marked(e) => marked.push(e),
                    EvictDecision::Live(p) => {
                        tally.kept_live += 1;
                        if tally.kept_under.len() < MAX_KEPT_UNDER {
                            tally.kept_under.insert(p);
                        }
                    }
                    EvictDecision::Busy(_) => tally.kept_busy += 1,
                    EvictDecision::Absent => {}
                }
            }
            if marked.is_empty() {
                continue;
            }
            let targets: Vec<DeleteTarget> = marked
                .iter()
                .map(|e| DeleteTarget {
                    key: e.key.clone(),
                    etag: (!e.dest_etag.is_empty()).then(|| e.dest_etag.clone()),
                })
                .collect();
            let failures = match self.store.delete_objects(dir, &targets).await {
                Ok(f) => f,
                Err(source) => {
                    self.release(dir, &marked, owner).await;
                    return Err(EvictError::Store {
                        bucket: dir.to_owned(),
                        source,
                    });
                }
            };
            let failed: BTreeSet<&str> = failures.iter().map(|f| f.key.as_str()).collect();
            let (gone, kept): (Vec<_>, Vec<_>) = marked
                .iter()
                .partition(|e| !failed.contains(e.key.as_str()));
            let gone_keys: Vec<String> = gone.iter().map(|e| e.key.clone()).collect();
            self.index.finish_evict(dir, &gone_keys, owner).await?;
            tally.deleted += gone.len() as u64;
            tally.bytes += gone.iter().map(|e| e.size).sum::<u64>();
            let kept: Vec<_> = kept.into_iter().cloned().collect();
            self.release(dir, &kept, owner).await;
            tally
                .failures
                .extend(failures.into_iter().map(|f| pb::KeyFailure {
                    key: f.key,
                    code: f.code,
                    message: f.message,
                }));
        }
    }

    /// Gives up eviction claims (their entries stay; a later pass retries).
    async fn release(&self, dir: &str, entries: &[crate::index::Entry], owner: &str) {
        for e in entries {
            crate::index::release_or_lapse(self.index.as_ref(), dir, &e.key, owner).await;
        }
    }
}

/// Runs [`Evictor::sweep_once`] every `every` until the task is aborted.
pub fn spawn_sweeper<S: ObjectStore, I: CacheIndex>(
    evictor: Arc<Evictor<S, I>>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match evictor.sweep_once().await {
                Ok(r) if r.leases_expired > 0 => tracing::info!(
                    leases_expired = r.leases_expired,
                    leases_removed = r.leases_removed,
                    deleted = r.tally.deleted,
                    kept_live = r.tally.kept_live,
                    kept_busy = r.tally.kept_busy,
                    failed = r.tally.failures.len(),
                    "sweep"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed; retrying next interval"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::index::{Entry, Lease, SqliteIndex};
    use crate::store::MemoryStore;
    use expresscache::{DirectoryBucketName, Prefix};

    const DIR: &str = "cache--use1-az4--x-s3";

    async fn setup(keys: &[&str]) -> (Evictor<MemoryStore, SqliteIndex>, Arc<ManualClock>) {
        let store = MemoryStore::default();
        let index = SqliteIndex::open_in_memory().unwrap();
        store.create_bucket(DIR);
        for k in keys {
            let etag = store.put(DIR, k, 10);
            index
                .complete_copy(
                    &Entry {
                        directory_bucket: DIR.into(),
                        key: (*k).into(),
                        source_bucket: "src".into(),
                        source_key: (*k).into(),
                        source_etag: "\"s\"".into(),
                        size: 10,
                        source_last_modified: None,
                        dest_etag: etag,
                        cached_at: 0,
                    },
                    "test",
                )
                .await
                .unwrap();
        }
        let clock = Arc::new(ManualClock::new(1_000));
        let ev = Evictor {
            store: Arc::new(store),
            index: Arc::new(index),
            clock: clock.clone(),
            claim_ttl: Duration::from_secs(60),
        };
        (ev, clock)
    }

    async fn lease(ev: &Evictor<MemoryStore, SqliteIndex>, prefix: &str, expires_at: Millis) {
        ev.index
            .extend_lease(&Lease {
                directory_bucket: DIR.into(),
                prefix: prefix.into(),
                source_bucket: "src".into(),
                expires_at,
            })
            .await
            .unwrap();
    }

    fn spec(prefix: &str, force: bool) -> EvictSpec {
        EvictSpec {
            directory_bucket: DirectoryBucketName::parse(DIR).unwrap(),
            prefixes: vec![Prefix::parse(prefix).unwrap()],
            force,
        }
    }

    #[tokio::test]
    async fn evict_removes_objects_and_records_under_prefix_only() {
        let (ev, _) = setup(&["a/1", "a/2", "b/1"]).await;
        lease(&ev, "a/", 5_000).await;
        let resp = ev.evict(&spec("a/", false)).await.unwrap();
        assert_eq!(
            (resp.objects_deleted, resp.bytes_deleted, resp.leases_ended),
            (2, 20, 1)
        );
        assert_eq!(ev.store.keys(DIR), ["b/1"]);
        assert_eq!(ev.index.usage(DIR, "").await.unwrap().objects, 1);
    }

    #[tokio::test]
    async fn evict_of_a_child_keeps_what_a_live_parent_covers_unless_forced() {
        let (ev, _) = setup(&["p/c/1", "p/c/2"]).await;
        lease(&ev, "p/", 5_000).await;
        lease(&ev, "p/c/", 5_000).await;
        let resp = ev.evict(&spec("p/c/", false)).await.unwrap();
        assert_eq!((resp.objects_deleted, resp.objects_kept), (0, 2));
        assert_eq!(resp.kept_under, ["p/"]);
        assert!(!resp.forced);
        assert_eq!(ev.store.keys(DIR).len(), 2);
        let forced = ev.evict(&spec("p/c/", true)).await.unwrap();
        assert_eq!((forced.objects_deleted, forced.objects_kept), (2, 0));
        assert!(forced.forced);
        assert!(ev.store.keys(DIR).is_empty());
    }

    #[tokio::test]
    async fn sweeper_deletes_only_what_no_live_lease_covers() {
        let (ev, clock) = setup(&["x/1", "x/long/1", "y/1"]).await;
        lease(&ev, "x/", 2_000).await;
        lease(&ev, "x/long/", 10_000).await;
        lease(&ev, "y/", 10_000).await;
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(r.leases_expired, 0, "nothing expired yet");
        clock.advance(1_500); // now 2_500: x/ expired
        let r = ev.sweep_once().await.unwrap();
        assert_eq!(
            (
                r.leases_expired,
                r.leases_removed,
                r.tally.deleted,
                r.tally.kept_live
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(ev.store.keys(DIR), ["x/long/1", "y/1"]);
        clock.advance(10_000);
        let r = ev.sweep_once().await.unwrap();
        assert_eq!((r.leases_removed, r.tally.deleted), (2, 2));
        assert!(ev.store.keys(DIR).is_empty());
        assert_eq!(ev.index.usage(DIR, "").await.unwrap().objects, 0);
    }

    #[tokio::test]
    async fn a_fenced_delete_keeps_the_newer_object_and_its_record() {
        let (ev, _) = setup(&["f/1"]).await;
        // The object was replaced behind the index's back.
        ev.store.put(DIR, "f/1", 10);
        let resp = ev.evict(&spec("f/", false)).await.unwrap();
        assert_eq!(resp.objects_deleted, 0);
        assert_eq!(resp.failures[0].code, "PreconditionFailed");
        assert_eq!(ev.store.keys(DIR), ["f/1"]);
        let rec = ev.index.records(DIR, "f/", None, None, 10).await.unwrap();
        assert!(
            rec[0].entry.is_some() && rec[0].claim.is_none(),
            "claim released, entry kept"
        );
    }
}
