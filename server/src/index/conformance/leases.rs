//! Leases: they only grow, cover their ancestors' keys, end with a new
//! epoch, expire into the sweeper's hands, and record failed sweeps.

use super::*;

pub(super) async fn leases_only_grow<I: CacheIndex>(index: &I) {
    let l = index.extend_lease(&lease("grow/", 1000), 0).await.unwrap();
    assert_eq!(l.expires_at, 1000, "a new lease is stored as given");
    let l = index.extend_lease(&lease("grow/", 500), 0).await.unwrap();
    assert_eq!(
        l.expires_at, 1000,
        "a shorter extension never shortens a lease"
    );
    let l = index.extend_lease(&lease("grow/", 2000), 0).await.unwrap();
    assert_eq!(l.expires_at, 2000, "a longer extension wins");
    index.end_leases(DIR, "grow/", 0).await.unwrap();
    remove_expired(index).await;
}

pub(super) async fn covering_leases_are_live_ancestors<I: CacheIndex>(index: &I) {
    index.extend_lease(&lease("", 100), 0).await.unwrap();
    index.extend_lease(&lease("a/", 300), 0).await.unwrap();
    index.extend_lease(&lease("a/b/", 50), 0).await.unwrap();
    index.extend_lease(&lease("a/b/c/", 300), 0).await.unwrap();
    index.extend_lease(&lease("a0/", 300), 0).await.unwrap();
    let prefixes = |ls: Vec<Lease>| ls.into_iter().map(|l| l.prefix).collect::<Vec<_>>();
    assert_eq!(
        prefixes(index.covering_leases(DIR, "a/b/", 10).await.unwrap()),
        ["", "a/", "a/b/"],
        "the prefix itself and its ancestors, not siblings or children"
    );
    assert_eq!(
        prefixes(index.covering_leases(DIR, "a/b/", 60).await.unwrap()),
        ["", "a/"],
        "an expired lease is absent"
    );
    assert_eq!(
        prefixes(index.leases_under(DIR, "a/", 10, 100).await.unwrap()),
        ["a/b/", "a/b/c/"],
        "strictly under the prefix, not a sibling sharing a string prefix"
    );
    assert_eq!(
        prefixes(index.leases_under(DIR, "a/", 60, 100).await.unwrap()),
        ["a/b/c/"],
        "live ones only"
    );
    assert_eq!(
        index.leases_under(DIR, "a/", 10, 1).await.unwrap().len(),
        1,
        "limit"
    );
    assert!(
        index
            .covering_leases("other--use1-az4--x-s3", "a/", 0)
            .await
            .unwrap()
            .is_empty(),
        "leases belong to one directory bucket"
    );
    index.end_leases(DIR, "", 0).await.unwrap();
    remove_expired(index).await;
}

pub(super) async fn end_leases_expires_the_prefix_and_below<I: CacheIndex>(index: &I) {
    for p in ["x/", "x/y/", "x0/", "w/"] {
        index.extend_lease(&lease(p, 100), 0).await.unwrap();
    }
    let ended = index.end_leases(DIR, "x/", 10).await.unwrap();
    assert_eq!(ended.len(), 2, "the prefix and the leases under it");
    assert!(ended.iter().all(|l| l.expires_at == 10), "ended as of now");
    assert!(
        index
            .covering_leases(DIR, "x/y/", 10)
            .await
            .unwrap()
            .is_empty(),
        "ended leases are absent"
    );
    assert_eq!(
        index.covering_leases(DIR, "x0/", 10).await.unwrap().len(),
        1,
        "a sibling sharing a string prefix survives"
    );
    assert_eq!(
        index.end_leases(DIR, "x/", 20).await.unwrap().len(),
        0,
        "only live leases end"
    );
    assert_eq!(
        index.end_leases(DIR, "", 10).await.unwrap().len(),
        2,
        "\"\" ends all"
    );
    remove_expired(index).await;
}

pub(super) async fn expired_leases_are_found_and_removed_only_while_expired<I: CacheIndex>(
    index: &I,
) {
    index.extend_lease(&lease("e1/", 50), 0).await.unwrap();
    index.extend_lease(&lease("e2/", 80), 0).await.unwrap();
    index.extend_lease(&lease("e3/", 500), 0).await.unwrap();
    let expired = index.expired_leases(100, 10).await.unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|l| l.prefix.as_str())
            .collect::<Vec<_>>(),
        ["e1/", "e2/"],
        "expired at now, oldest first"
    );
    assert_eq!(
        index.expired_leases(100, 1).await.unwrap().len(),
        1,
        "limit"
    );
    // A warm revives e2/ before the sweeper removes it.
    index.extend_lease(&lease("e2/", 900), 0).await.unwrap();
    assert!(index
        .remove_lease_if_expired(&expired[0], 100)
        .await
        .unwrap());
    assert!(
        !index
            .remove_lease_if_expired(&expired[1], 100)
            .await
            .unwrap(),
        "a revived lease is not removed"
    );
    assert_eq!(
        index.covering_leases(DIR, "e2/", 100).await.unwrap().len(),
        1
    );
    index.end_leases(DIR, "", 100).await.unwrap();
    for l in index.expired_leases(100, 10).await.unwrap() {
        assert!(index.remove_lease_if_expired(&l, 100).await.unwrap());
    }
}

pub(super) async fn leases_extended_together_are_each_extended<I: CacheIndex>(index: &I) {
    let old = index.extend_lease(&lease("tog/a/", 500), 0).await.unwrap();
    let mut named = lease("tog/a/", 900);
    named.epoch.clone_from(&old.epoch);
    let mut stale = lease("tog/b/", 900);
    stale.epoch = "not-the-epoch".into();
    let stored = index
        .extend_leases(&[named, lease("tog/c/", 800), stale], 0)
        .await
        .unwrap();
    assert_eq!(stored.len(), 3, "one answer per lease, in order");
    assert_eq!(
        (stored[0].epoch.as_str(), stored[0].expires_at),
        (old.epoch.as_str(), 900),
        "a lease named by its epoch is extended"
    );
    assert!(
        !stored[1].epoch.is_empty() && stored[1].expires_at == 800,
        "a new lease is created with an epoch"
    );
    assert!(
        stored[2].epoch.is_empty(),
        "naming an epoch that is not there creates nothing"
    );
    assert!(
        index
            .covering_leases(DIR, "tog/b/x", 0)
            .await
            .unwrap()
            .is_empty(),
        "and nothing was written for it"
    );
    index.end_leases(DIR, "tog/", 0).await.unwrap();
    remove_expired(index).await;
}

pub(super) async fn a_lease_changes_epoch_when_ended<I: CacheIndex>(index: &I) {
    let first = index.extend_lease(&lease("ep/", 1000), 0).await.unwrap();
    assert!(!first.epoch.is_empty(), "the index assigns an epoch");
    let again = index.extend_lease(&lease("ep/", 2000), 0).await.unwrap();
    assert_eq!(first.epoch, again.epoch, "extending keeps the epoch");
    index.end_leases(DIR, "", 10).await.unwrap();
    let revived = index.extend_lease(&lease("ep/", 3000), 0).await.unwrap();
    assert_ne!(
        first.epoch, revived.epoch,
        "an ended lease, even when extended again, has a new epoch"
    );
    let mut mine = lease("ep/", 9000);
    mine.epoch.clone_from(&first.epoch);
    let refused = index.extend_lease(&mine, 0).await.unwrap();
    assert_eq!(
        (refused.epoch.as_str(), refused.expires_at),
        (revived.epoch.as_str(), 3000),
        "a write naming the old epoch extends nothing and sees the new one"
    );
    mine.epoch.clone_from(&revived.epoch);
    assert_eq!(
        index.extend_lease(&mine, 100).await.unwrap().expires_at,
        9000,
        "naming the current epoch extends"
    );
    assert!(
        index
            .extend_lease(&mine, 9000)
            .await
            .unwrap()
            .epoch
            .is_empty(),
        "a lease expired at `now` is over for the one who names it"
    );
    let lapsed = index
        .extend_lease(&lease("ep/", 20_000), 9000)
        .await
        .unwrap();
    assert_ne!(
        lapsed.epoch, revived.epoch,
        "reviving an expired lease gives it a new epoch"
    );
    index.end_leases(DIR, "ep/", 10).await.unwrap();
    remove_expired(index).await;
    let mut gone = lease("ep/", 3000);
    gone.epoch.clone_from(&lapsed.epoch);
    let absent = index.extend_lease(&gone, 0).await.unwrap();
    assert!(
        absent.epoch.is_empty(),
        "naming the epoch of a removed lease does not create it"
    );
    assert!(
        index
            .covering_leases(DIR, "ep/", 0)
            .await
            .unwrap()
            .is_empty(),
        "and nothing was written"
    );
    let recreated = index.extend_lease(&lease("ep/", 3000), 0).await.unwrap();
    assert!(
        recreated.epoch != first.epoch && recreated.epoch != revived.epoch,
        "a lease removed and created again has a new epoch"
    );
    index.end_leases(DIR, "ep/", 10).await.unwrap();
    remove_expired(index).await;
}

pub(super) async fn a_failed_sweep_is_deferred_and_reported<I: CacheIndex>(index: &I) {
    let written = index.extend_lease(&lease("sw/a/", 10), 0).await.unwrap();
    index.extend_lease(&lease("sw/b/", 20), 0).await.unwrap();
    let first = &index.expired_leases(100, 10).await.unwrap()[0];
    assert_ne!(
        first.epoch, written.epoch,
        "handing a lease to the sweeper gives it a new epoch"
    );
    let mut renewal = lease("sw/a/", 5000);
    renewal.epoch.clone_from(&written.epoch);
    assert_eq!(
        index.extend_lease(&renewal, 0).await.unwrap().epoch,
        first.epoch,
        "a warm naming the old epoch can no longer extend it"
    );
    assert_eq!(first.prefix, "sw/a/", "oldest first");
    let backoff = |now| SweepBackoff {
        now,
        base: 100,
        max: 1_000,
    };
    let f = index
        .defer_sweep(first, "NoSuchBucket", &backoff(400))
        .await
        .unwrap();
    assert_eq!((f.attempts, f.retry_at), (1, 500), "now + base");
    let due: Vec<String> = index
        .expired_leases(100, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.prefix)
        .collect();
    assert_eq!(due, ["sw/b/"], "a deferred lease does not block the rest");
    assert_eq!(
        index.expired_leases(500, 10).await.unwrap().len(),
        2,
        "due again at retry_at"
    );
    let f = index
        .defer_sweep(first, "still", &backoff(700))
        .await
        .unwrap();
    assert_eq!(
        (f.attempts, f.error.as_str(), f.retry_at),
        (2, "still", 900),
        "the delay doubles with the stored attempts"
    );
    for now in [900, 1_000, 1_100, 1_200] {
        index
            .defer_sweep(first, "still", &backoff(now))
            .await
            .unwrap();
    }
    let f = index
        .defer_sweep(first, "still", &backoff(2_000))
        .await
        .unwrap();
    assert_eq!(f.retry_at, 3_000, "and stops growing at max");
    let reported = index.sweep_failures(DIR, "sw/", 10).await.unwrap();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].lease.prefix, "sw/a/");
    assert_eq!(
        index
            .sweep_failures(DIR, "sw/a/x/", 10)
            .await
            .unwrap()
            .len(),
        1,
        "a failure covering the prefix is reported too"
    );
    index.extend_lease(&lease("sw/a/", 5000), 0).await.unwrap();
    assert!(
        index
            .sweep_failures(DIR, "sw/", 10)
            .await
            .unwrap()
            .is_empty(),
        "a revived lease starts clean"
    );
    index.end_leases(DIR, "sw/", 10).await.unwrap();
    remove_expired(index).await;
}
