//! The cache guarantees end to end: the real server over gRPC, S3 through
//! the AWS SDK against moto, time moved by the test's manual clock, sweeps
//! run on demand.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{as_refs, data_set, Fixture};
use expresscache_client::Outcome;
use expresscache_server::store::Op;
use expresscache_server::testing::{create_bucket, get, list_keys, put, unique};

const HOUR: Duration = Duration::from_secs(3600);

fn objects(keys: &[&str]) -> Vec<(String, Vec<u8>)> {
    keys.iter()
        .map(|k| (k.to_string(), k.as_bytes().to_vec()))
        .collect()
}

#[tokio::test]
async fn ttl_expiry_removes_objects_and_their_records() {
    let data = objects(&["t/1", "t/2", "t/3", "u/1"]);
    let fx = Fixture::new(&as_refs(&data)).await;
    fx.warm(fx.request(&["t/"]).ttl(Duration::from_secs(1)))
        .await;
    fx.warm(fx.request(&["u/"]).ttl(HOUR)).await;

    let early = fx.server.sweep().await;
    assert_eq!(early.tally.deleted, 0, "nothing expired yet");
    // Past the 1 s TTL and the default 5 s clock skew margin.
    fx.server.clock.advance(7_000);
    let report = fx.server.sweep().await;

    assert_eq!(
        (
            report.leases_expired,
            report.leases_removed,
            report.tally.deleted
        ),
        (1, 1, 3)
    );
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await, ["u/1"]);
    let status = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["t/".into()])
        .await
        .unwrap();
    assert_eq!((status[0].cached_objects, status[0].leases.len()), (0, 0));
}

#[tokio::test]
async fn an_expired_lease_is_absent_before_the_sweeper_runs() {
    let fx = Fixture::new(&as_refs(&objects(&["e/1"]))).await;
    fx.warm(fx.request(&["e/"]).ttl(Duration::from_secs(1)))
        .await;
    // Past the TTL, which the service rounds up to the second.
    fx.server.clock.advance(2_000);
    let status = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["e/".into()])
        .await
        .unwrap();
    assert!(status[0].leases.is_empty(), "{status:?}");
}

#[tokio::test]
async fn a_long_parent_lease_keeps_a_short_child_lease_objects() {
    let fx = Fixture::new(&as_refs(&objects(&["p/c/1", "p/c/2", "p/x"]))).await;
    fx.warm(fx.request(&["p/"]).ttl(HOUR)).await;
    fx.warm(fx.request(&["p/c/"]).ttl(Duration::from_secs(1)))
        .await;

    // Past the 1 s TTL and the default 5 s clock skew margin.
    fx.server.clock.advance(7_000);
    let report = fx.server.sweep().await;

    assert_eq!(
        (
            report.leases_expired,
            report.tally.deleted,
            report.tally.kept_live
        ),
        (1, 0, 2)
    );
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await.len(), 3);
    fx.server.clock.advance(3_600_000);
    let report = fx.server.sweep().await;
    assert_eq!(report.tally.deleted, 3);
    assert!(list_keys(&fx.s3, &fx.dir, "").await.is_empty());
}

#[tokio::test]
async fn ttl_only_grows() {
    let fx = Fixture::new(&as_refs(&objects(&["g/1"]))).await;
    let long = fx.warm(fx.request(&["g/"]).ttl(HOUR)).await;
    let short = fx
        .warm(fx.request(&["g/"]).ttl(Duration::from_secs(1)))
        .await;
    assert_eq!(long.lease_expires_at, short.lease_expires_at);
    fx.server.clock.advance(60_000);
    assert_eq!(fx.server.sweep().await.tally.deleted, 0);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await, ["g/1"]);
}

#[tokio::test]
async fn evict_of_a_child_under_a_live_parent_keeps_objects_unless_forced() {
    let fx = Fixture::new(&as_refs(&objects(&["p/c/1", "p/c/2", "p/x"]))).await;
    fx.warm(fx.request(&["p/"]).ttl(HOUR)).await;
    fx.warm(fx.request(&["p/c/"]).ttl(HOUR)).await;
    let mut client = fx.client().await;

    let kept = client
        .evict(&fx.dir, vec!["p/c/".into()], false)
        .await
        .unwrap();
    assert_eq!(
        (kept.objects_deleted, kept.objects_kept, kept.leases_ended),
        (0, 2, 1)
    );
    assert_eq!(kept.kept_under, ["p/"]);
    assert!(!kept.forced);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await.len(), 3);

    let forced = client
        .evict(&fx.dir, vec!["p/c/".into()], true)
        .await
        .unwrap();
    assert_eq!((forced.objects_deleted, forced.objects_kept), (2, 0));
    assert!(forced.forced);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await, ["p/x"]);
}

#[tokio::test]
async fn concurrent_overlapping_warms_copy_each_object_exactly_once() {
    let mut keys: Vec<String> = (0..12).map(|i| format!("o/{i:02}")).collect();
    keys.extend((0..8).map(|i| format!("o/sub/{i:02}")));
    let data: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|k| (k.clone(), k.as_bytes().to_vec()))
        .collect();
    let fx = Fixture::new(&as_refs(&data)).await;
    // Slow copies keep all three warms in flight at once.
    fx.server.store.delay(Op::Copy, Duration::from_millis(150));

    let (child, parent, root) = tokio::join!(
        fx.warm(fx.request(&["o/sub/"])),
        fx.warm(fx.request(&["o/"])),
        fx.warm(fx.request(&[""])),
    );

    assert_eq!(
        fx.server.store.calls.copy.load(Ordering::Relaxed),
        20,
        "one CopyObject per object"
    );
    let mut copied = 0;
    for (r, listed) in [(&child, 8), (&parent, 20), (&root, 20)] {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        let c = &r.counters;
        assert_eq!(c.objects_listed, listed);
        assert_eq!(
            c.objects_copied + c.objects_shared + c.objects_hit,
            listed,
            "{c:?}"
        );
        copied += c.objects_copied;
    }
    assert_eq!(copied, 20);
    assert!(
        child.counters.objects_shared
            + parent.counters.objects_shared
            + root.counters.objects_shared
            > 0,
        "the warms overlapped"
    );
    for k in &keys {
        assert_eq!(get(&fx.s3, &fx.dir, k).await, k.as_bytes());
    }
}

#[tokio::test]
async fn a_warm_after_source_changes_recopies_exactly_the_changed_objects() {
    let data = data_set(15);
    let fx = Fixture::new(&as_refs(&data)).await;
    fx.warm(fx.request(&["data/"])).await;
    let before = fx.server.store.calls.copy.load(Ordering::Relaxed);
    put(&fx.s3, &fx.src, "data/part-0004.bin", b"v2".to_vec()).await;
    put(
        &fx.s3,
        &fx.src,
        "data/part-0011.bin",
        b"v2 as well".to_vec(),
    )
    .await;

    let report = fx.warm(fx.request(&["data/"])).await;

    assert_eq!(
        fx.server.store.calls.copy.load(Ordering::Relaxed) - before,
        2
    );
    assert_eq!(
        (report.counters.objects_copied, report.counters.objects_hit),
        (2, 13)
    );
    assert_eq!(get(&fx.s3, &fx.dir, "data/part-0004.bin").await, b"v2");
}

#[tokio::test]
async fn a_rewarm_writes_to_the_index_per_prefix_not_per_object() {
    let mut data = data_set(60);
    data.extend(objects(&["more/1", "more/2", "more/3"]));
    let fx = Fixture::new(&as_refs(&data)).await;
    fx.warm(fx.request(&["data/", "more/"])).await;
    let (writes, copies, lists) = (
        fx.server.index.writes(),
        fx.server.store.calls.copy.load(Ordering::Relaxed),
        fx.server.store.calls.list.load(Ordering::Relaxed),
    );

    let report = fx.warm(fx.request(&["data/", "more/"])).await;

    assert_eq!(report.counters.objects_hit, 63);
    let index_writes = fx.server.index.writes() - writes;
    // 2 leases written before planning and 2 after, plus the operation's
    // record and its final state; never one per object.
    assert!(
        index_writes <= 2 * 2 + 2 + 2,
        "{index_writes} index writes for a re-warm of 63 objects"
    );
    assert_eq!(
        fx.server.store.calls.copy.load(Ordering::Relaxed),
        copies,
        "no CopyObject"
    );
    assert_eq!(
        fx.server.store.calls.list.load(Ordering::Relaxed) - lists,
        2,
        "one listing page per prefix"
    );
}

#[tokio::test]
async fn destination_prefixes_let_sources_share_a_bucket_and_clashes_are_refused() {
    let fx = Fixture::new(&as_refs(&objects(&["k/1", "k/2"]))).await;
    let other = unique("other");
    create_bucket(&fx.s3, &other).await;
    put(&fx.s3, &other, "k/1", b"from other".to_vec()).await;

    let clash = fx
        .warm(expresscache_client::WarmRequest::new(&other, &fx.dir).prefix("k/"))
        .await;
    assert_eq!(
        clash.outcome,
        Outcome::Succeeded,
        "nothing cached yet: no clash"
    );
    let mine = fx.warm(fx.request(&["k/"])).await;
    assert_eq!(mine.outcome, Outcome::PartiallyFailed);
    assert_eq!(mine.failures[0].key, "k/1");
    assert_eq!(mine.failures[0].code, "KeyClash");
    assert_eq!(
        get(&fx.s3, &fx.dir, "k/1").await,
        b"from other",
        "never silently overwritten"
    );

    let shared = fx
        .warm(fx.request(&["k/"]).destination_prefix("team-a/"))
        .await;
    assert_eq!(
        (shared.outcome, shared.counters.objects_copied),
        (Outcome::Succeeded, 2)
    );
    assert_eq!(get(&fx.s3, &fx.dir, "team-a/k/1").await, b"k/1");
    let status = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["team-a/".into()])
        .await
        .unwrap();
    assert_eq!(status[0].cached_objects, 2);
    assert_eq!(status[0].leases[0].prefix, "team-a/k/");
}

/// A request_id attaches to a finished operation only while the very leases
/// it wrote stand: after an Evict ended them, a later warm under another id
/// that re-created the lease (even a longer one) does not make the old
/// SUCCEEDED true again, so the resubmission starts a new warm.
#[tokio::test]
async fn a_request_id_does_not_attach_to_a_success_whose_lease_was_replaced() {
    let data = objects(&["q/1", "q/2"]);
    let fx = Fixture::new(&as_refs(&data)).await;
    let first = fx.warm(fx.request(&["q/"]).request_id("job-7")).await;
    assert_eq!(first.counters.objects_copied, 2);
    let evicted = fx
        .client()
        .await
        .evict(fx.dir.clone(), vec!["q/".into()], false)
        .await
        .unwrap();
    assert_eq!(evicted.objects_deleted, 2);
    // Another job re-creates the lease with a longer TTL; its own copies
    // are still what the old operation's objects were not.
    let other = fx
        .warm(fx.request(&["q/"]).ttl(Duration::from_secs(7200)))
        .await;
    assert_eq!(other.counters.objects_copied, 2);
    let again = fx.warm(fx.request(&["q/"]).request_id("job-7")).await;
    assert_ne!(
        again.operation_id, first.operation_id,
        "a new operation, not the stale success"
    );
    assert_eq!(again.counters.objects_hit, 2, "it checks and finds them");
}
