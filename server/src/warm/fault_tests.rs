//! Warms racing an Evict and losing a claim (issue cases 7 and 8),
//! ordered deterministically by a gate that holds one store call.

use super::*;
use crate::evict::{EvictSettings, Evictor};
use crate::gate::{Gate, Pass};
use crate::index::{ClaimOutcome, ClaimTerms, Completion, Entry};
use crate::index::{Claims, Records};
use crate::index::{KeyRange, SqliteIndex};
use crate::store::{FaultStore, MemoryStore};
use crate::testing::built::Built;
use expresscache::Prefix;
use expresscache::{DirectoryBucketName, EvictSpec};
use futures::future::BoxFuture;
use std::sync::atomic::Ordering as AtomicOrdering;
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

type W = Built<Warmer, FaultStore<MemoryStore>, SqliteIndex>;

fn world(keys: &[&str], hold: &Arc<Hold>) -> Arc<W> {
    world_on(keys, hold, Arc::new(crate::core::clock::SystemClock))
}

fn world_on(keys: &[&str], hold: &Arc<Hold>, clock: Arc<dyn Clock>) -> Arc<W> {
    let mem = MemoryStore::with_page_size(3);
    mem.create_bucket(SRC);
    mem.create_bucket(DIR);
    for k in keys {
        mem.put(SRC, k, 10);
    }
    let store = FaultStore::new(mem).with_gate(Arc::new(HoldGate(Arc::clone(hold))));
    let index = SqliteIndex::open_in_memory().unwrap();
    Arc::new(Built::new(store, index, |store, index| {
        Warmer::new(store, index, clock, WarmSettings::default())
    }))
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
    super::tests::spec(false)
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
        w.store.clone(),
        w.index.clone(),
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
    let clock = Arc::new(crate::core::clock::ManualClock::new(10_000_000));
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
