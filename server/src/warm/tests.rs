//! The warm against in-memory stores: outcomes, retries, failures.

use super::*;
use crate::core::operation::{OperationState, Outcome};
use crate::index::Records;
use crate::index::{KeyRange, SqliteIndex};
use crate::store::{FaultStore, MemoryStore, Op};
use crate::testing::built::Built;
use expresscache::proto::v1 as pb;
use std::sync::atomic::Ordering;

const SRC: &str = "src";
const DIR: &str = "cache--use1-az4--x-s3";

/// A warmer with handles on its in-memory store and index.
type W = Built<Warmer, FaultStore<MemoryStore>, SqliteIndex>;

fn setup(keys: &[&str]) -> W {
    let mem = MemoryStore::with_page_size(3);
    mem.create_bucket(SRC);
    mem.create_bucket(DIR);
    for k in keys {
        mem.put(SRC, k, 10);
    }
    with_store(FaultStore::new(mem), SqliteIndex::open_in_memory().unwrap())
}

/// A warmer over `store` and `index` on the system clock, retrying fast.
fn with_store(store: FaultStore<MemoryStore>, index: SqliteIndex) -> W {
    Built::new(store, index, |store, index| {
        Warmer::new(
            store,
            index,
            Arc::new(crate::core::clock::SystemClock),
            WarmSettings {
                engine: crate::engine::EngineSettings {
                    retry_base_delay: Duration::from_millis(1),
                    ..Default::default()
                },
                ..WarmSettings::default()
            },
        )
    })
}

pub(super) fn spec(force: bool) -> WarmSpec {
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
            max_staleness: None,
            dry_run: false,
            batch_operations: false,
            allow_empty: false,
            include: vec![],
            exclude: vec![],
            keys: vec![],
        },
        &expresscache::Limits::default(),
    )
    .unwrap()
}

async fn run(w: &W) -> OperationState {
    let (progress, _rx) = Progress::new("op".into(), w.clock.clone());
    let outcome = match w.run(&spec(false), &progress, "op").await.unwrap() {
        WarmOutcome::Succeeded => Outcome::Succeeded,
        WarmOutcome::PartiallyFailed => Outcome::PartiallyFailed,
        other => panic!("{other:?}"),
    };
    progress.finish(outcome, None)
}

async fn cached_keys(w: &W) -> Vec<String> {
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
    // Every tenth key's first call failed; each retry got through.
    assert_eq!(injected, 200);
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

#[tokio::test]
async fn an_index_failure_while_planning_ends_the_warm_instead_of_hanging() {
    use crate::index::CountingIndex;
    let mem = MemoryStore::with_page_size(3);
    mem.create_bucket(SRC);
    mem.create_bucket(DIR);
    for i in 0..30 {
        mem.put(SRC, &format!("d/{i:02}"), 10);
    }
    let index = CountingIndex::new(SqliteIndex::open_in_memory().unwrap());
    // The first page's batch claim fails; ten pages wait to be planned.
    index.fail("claim_copies", 1);
    let w = Warmer::new(
        Arc::new(FaultStore::new(mem)),
        Arc::new(index),
        Arc::new(crate::core::clock::SystemClock),
        WarmSettings::default(),
    );
    let (progress, _rx) = Progress::new("op".into(), w.clock.clone());
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        w.run(&spec(false), &progress, "op"),
    )
    .await
    .expect("the warm ends");
    assert!(matches!(ended, Err(WarmError::Index(_))), "{ended:?}");
}

/// A warm over `keys` on a store that answers `page` keys per page, each
/// listing taking 5 ms (so listings under way at once overlap).
fn setup_slow_listing(keys: &[String], page: usize) -> W {
    let mem = MemoryStore::with_page_size(page);
    mem.create_bucket(SRC);
    mem.create_bucket(DIR);
    for k in keys {
        mem.put(SRC, k, 10);
    }
    let store = FaultStore::new(mem);
    store.delay(Op::List, Duration::from_millis(5));
    with_store(store, SqliteIndex::open_in_memory().unwrap())
}

#[tokio::test]
async fn a_tree_is_listed_in_parallel_each_key_once() {
    // 20 directories of 30 keys, one of them two levels deep, and direct
    // objects before, between and after them.
    let mut keys: Vec<String> = (0..20)
        .flat_map(|d| (0..30).map(move |k| format!("d/{d:02}/{k:02}")))
        .collect();
    keys.extend(["d/00.txt", "d/07/sub/x", "d/10.txt", "d/zz"].map(str::to_owned));
    keys.sort();
    let w = setup_slow_listing(&keys, 10);
    let first = run(&w).await;
    assert_eq!(first.outcome, Some(Outcome::Succeeded));
    assert_eq!(
        first.counters.objects_listed,
        keys.len() as u64,
        "each key once"
    );
    assert_eq!(first.counters.objects_copied, keys.len() as u64);
    assert_eq!(w.store.inner().keys(DIR), keys);
    let calls = &w.store.calls;
    let peak = calls.peak_lists_in_flight.load(Ordering::Relaxed);
    assert!(
        peak >= 10,
        "the 20 directories are listed side by side: {peak}"
    );
    // Flat, the listing is 61 pages of 10; the tree costs one delimited
    // page of the parent and one extra (short) page per directory at most.
    let lists = calls.list.load(Ordering::Relaxed);
    assert!(lists <= 61 + 1 + 21, "{lists} listings");
    // The re-warm merges every page with the index: all hits.
    let again = run(&w).await;
    assert_eq!(again.counters.objects_hit, keys.len() as u64);
    assert_eq!(again.counters.objects_copied, 0);
}

#[tokio::test]
async fn a_flat_prefix_costs_exactly_its_flat_listing() {
    let keys: Vec<String> = (0..95).map(|i| format!("d/{i:03}")).collect();
    let w = setup_slow_listing(&keys, 10);
    let first = run(&w).await;
    assert_eq!(first.counters.objects_copied, 95);
    assert_eq!(w.store.calls.list.load(Ordering::Relaxed), 10, "10 pages");
    assert_eq!(
        w.store.calls.peak_lists_in_flight.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_wide_tree_is_grouped_into_spans_not_one_listing_per_directory() {
    // 400 directories of 2 keys, 100 entries a page: one listing per
    // directory would be 400 requests; the 4 delimited pages of the parent
    // make at most 32 listings each.
    let keys: Vec<String> = (0..400)
        .flat_map(|d| (0..2).map(move |k| format!("d/{d:03}/{k}")))
        .collect();
    let w = setup_slow_listing(&keys, 100);
    let first = run(&w).await;
    assert_eq!(first.counters.objects_listed, 800);
    assert_eq!(first.counters.objects_copied, 800);
    assert_eq!(w.store.inner().keys(DIR), keys);
    let lists = w.store.calls.list.load(Ordering::Relaxed);
    assert!(lists <= 4 + 4 * 32, "{lists} listings for 400 directories");
    let again = run(&w).await;
    assert_eq!(again.counters.objects_hit, 800);
}

#[tokio::test]
async fn a_failed_listing_of_one_sub_prefix_fails_the_warm_and_stops_the_rest() {
    let keys: Vec<String> = (0..20)
        .flat_map(|d| (0..30).map(move |k| format!("d/{d:02}/{k:02}")))
        .collect();
    let w = setup_slow_listing(&keys, 10);
    w.store.fail(
        Op::List,
        Some("d/07/"),
        StoreError::AccessDenied("list denied".into()),
        None,
    );
    let (progress, _rx) = Progress::new("op".into(), w.clock.clone());
    let err = w.run(&spec(false), &progress, "op").await.unwrap_err();
    assert!(err.to_string().contains("d/07/"), "names the prefix: {err}");
    assert!(err.to_string().contains("list denied"), "{err}");
    assert_eq!(w.store.calls.lists_in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn empty_truncated_pages_in_a_tree_lose_no_key() {
    // Pages with no entries but a continuation token, in the delimited
    // listing of the parent and in the sub-prefixes' listings alike: a
    // listing that stopped at one would report SUCCEEDED with keys missing.
    let mut keys: Vec<String> = (0..20)
        .flat_map(|d| (0..25).map(move |k| format!("d/{d:02}/{k:02}")))
        .collect();
    keys.extend(["d/00.txt", "d/10.txt", "d/zz"].map(str::to_owned));
    keys.sort();
    let w = setup_slow_listing(&keys, 10);
    w.store.inner().empty_pages_before(30);
    let first = run(&w).await;
    assert_eq!(first.outcome, Some(Outcome::Succeeded));
    assert_eq!(first.counters.objects_copied, keys.len() as u64);
    assert_eq!(w.store.inner().keys(DIR), keys, "every key, once");
}
