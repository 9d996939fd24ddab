//! One conformance suite for every [`CacheIndex`] backend: each backend's
//! tests call [`run_all`] with a fresh, empty index. Assertions name the rule
//! they check, so a new backend learns the contract from its failures.

// Test support: a failed step must stop the test with its message.
#![allow(clippy::unwrap_used)]

use expresscache::{BucketName, DirectoryBucketName, Prefix, RequestId, WarmSpec};

use crate::core::operation::{KeyFailure, OperationState, Outcome, Phase, RunLease, RunTicket};

use super::{
    CacheIndex, Claim, ClaimKind, ClaimOutcome, ClaimTerms, Completion, CreateOutcome, Entry,
    EvictDecision, KeyRange, Lease, OperationLog, OperationRecord, Record, Renewal, RunTerms,
    SweepBackoff, Usage,
};

const DIR: &str = "cache--use1-az4--x-s3";

fn entry(key: &str, size: u64) -> Entry {
    Entry {
        directory_bucket: DIR.into(),
        key: key.into(),
        source_bucket: "src".into(),
        source_key: key.into(),
        source_etag: format!("\"{key}\""),
        size,
        source_last_modified: Some(1_700_000_000_000),
        dest_etag: "\"d\"".into(),
        cached_at: 1,
    }
}

fn warm_spec(request_id: Option<&str>) -> WarmSpec {
    WarmSpec {
        source: BucketName::parse("src").unwrap(),
        prefixes: vec![Prefix::parse("d/").unwrap()],
        directory_bucket: DirectoryBucketName::parse(DIR).unwrap(),
        ttl: std::time::Duration::from_secs(60),
        force_copy: false,
        request_id: request_id.map(|r| RequestId::parse(r).unwrap()),
        destination_prefix: Prefix::root(),
        max_staleness: std::time::Duration::ZERO,
        batch_operations: false,
        allow_empty: false,
        selection: Default::default(),
    }
}

fn ticket(replica: &str, attempt: u32) -> RunTicket {
    RunTicket {
        replica: replica.into(),
        attempt,
    }
}

/// A first run by `replica` until `deadline`.
fn run_lease(replica: &str, deadline: i64) -> RunLease {
    RunLease {
        ticket: ticket(replica, 1),
        deadline,
        cancel_requested: false,
        joinable: false,
    }
}

/// A state copying, or finished successfully.
fn phase_state(id: &str, done: bool) -> OperationState {
    let mut s = OperationState::queued(id, 5);
    s.phase = Phase::Copying;
    if done {
        s = s.ended(Outcome::Succeeded, None);
    }
    s
}

fn lease(prefix: &str, expires_at: i64) -> Lease {
    Lease::new(DIR, prefix, "src", expires_at)
}

/// Runs every check of the operation log against `log`, which must start
/// empty.
pub async fn run_operation_log<I: OperationLog>(log: &I) {
    runs_are_leased_fenced_and_taken_over(log).await;
    operations_are_unique_per_request_id(log).await;
    operations_list_newest_first_resume_and_purge(log).await;
    a_finished_operation_can_be_superseded_once(log).await;
    offers_name_their_attempt_and_stay_withdrawn(log).await;
}

async fn offers_name_their_attempt_and_stay_withdrawn<I: OperationLog>(log: &I) {
    let rec = OperationRecord {
        id: "offer1".into(),
        request_id: None,
        request: warm_spec(None),
        owner: None,
        state: phase_state("offer1", false),
        created_at: 1,
        resumptions: 0,
        run: Some(run_lease("a", 1_000)),
    };
    log.create_operation(&rec).await.unwrap();
    let joinable = || async {
        log.get_operation("offer1")
            .await
            .unwrap()
            .unwrap()
            .run
            .is_some_and(|r| r.joinable)
    };
    assert!(!joinable().await, "not joinable until offered");
    assert!(
        !log.offer_join("offer1", &ticket("z", 1)).await.unwrap(),
        "only the run's holder offers"
    );
    assert!(log.offer_join("offer1", &ticket("a", 1)).await.unwrap());
    assert!(joinable().await, "offered");
    assert!(log.withdraw_join("offer1", &ticket("a", 1)).await.unwrap());
    assert!(!joinable().await, "withdrawn");
    assert!(
        !log.offer_join("offer1", &ticket("a", 1)).await.unwrap(),
        "an offer landing after its withdrawal is refused"
    );
    assert!(!joinable().await);
    // Offered again by a new attempt, then taken over: the new attempt is
    // not joinable by the old one's offer.
    let b = log
        .take_over(
            "offer1",
            &RunTerms {
                replica: "b",
                deadline: 5_000,
                now: 1_000,
            },
        )
        .await
        .unwrap()
        .expect("a lapsed run is taken over");
    assert!(log.offer_join("offer1", &b.ticket).await.unwrap());
    assert!(joinable().await, "the new attempt offered");
    let c = log
        .take_over(
            "offer1",
            &RunTerms {
                replica: "c",
                deadline: 9_000,
                now: 5_000,
            },
        )
        .await
        .unwrap()
        .expect("taken over again");
    assert!(
        !joinable().await,
        "a takeover is not joinable by the previous attempt's offer"
    );
    assert!(
        !log.offer_join("offer1", &b.ticket).await.unwrap(),
        "nor can the previous attempt offer it"
    );
    assert!(
        !log.withdraw_join("offer1", &b.ticket).await.unwrap(),
        "a superseded attempt's withdrawal says its run is lost"
    );
    assert!(log
        .update_operation("offer1", &c.ticket, &phase_state("offer1", true))
        .await
        .unwrap());
}

/// Runs every check of the replica registry against `registry`, which
/// must start empty.
pub async fn run_replica_registry<I: super::ReplicaRegistry>(registry: &I) {
    registry.heartbeat("b", 1_000).await.unwrap();
    registry.heartbeat("a", 500).await.unwrap();
    assert_eq!(registry.live_replicas(0).await.unwrap(), ["a", "b"]);
    assert_eq!(
        registry.live_replicas(500).await.unwrap(),
        ["b"],
        "a replica is gone once its deadline passed"
    );
    registry.heartbeat("b", 800).await.unwrap();
    assert_eq!(
        registry.live_replicas(900).await.unwrap(),
        ["b"],
        "a late heartbeat never shortens the deadline"
    );
    registry.leave("b").await.unwrap();
    assert_eq!(
        registry.live_replicas(0).await.unwrap(),
        ["a"],
        "a replica that left is gone at once"
    );
    registry.heartbeat("b", 2_000).await.unwrap();
    assert_eq!(
        registry.live_replicas(500).await.unwrap(),
        ["b"],
        "and can rejoin"
    );
    registry.leave("b").await.unwrap();
}

/// Runs every check of the cache index against `index`, which must start
/// empty.
pub async fn run_all<I: CacheIndex>(index: &I) {
    leases_only_grow(index).await;
    covering_leases_are_live_ancestors(index).await;
    end_leases_expires_the_prefix_and_below(index).await;
    expired_leases_are_found_and_removed_only_while_expired(index).await;
    records_are_key_ordered_ranges(index).await;
    claims_are_exclusive_until_their_deadline(index).await;
    eviction_respects_leases_and_claims(index).await;
    usage_counts_cached_objects_only(index).await;
    completion_requires_the_copiers_claim(index).await;
    a_lease_changes_epoch_when_ended(index).await;
    leases_extended_together_are_each_extended(index).await;
    a_failed_sweep_is_deferred_and_reported(index).await;
    a_later_attempt_takes_over_an_earlier_attempts_claims(index).await;
    an_abandoned_eviction_leaves_a_lapsed_evict_claim(index).await;
}

async fn put<I: CacheIndex>(index: &I, entries: &[Entry]) {
    for e in entries {
        index
            .claim_copy(
                DIR,
                &e.key,
                &ClaimTerms {
                    owner: "writer",
                    deadline: i64::MAX,
                    now: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            index.complete_copy(e, "writer").await.unwrap(),
            Completion::Recorded
        );
    }
}

async fn clear<I: CacheIndex>(index: &I, prefix: &str) {
    let keys: Vec<String> = index
        .records(DIR, &KeyRange::prefix(prefix), 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    index
        .begin_evict(
            DIR,
            &keys,
            &ClaimTerms {
                owner: "cleaner",
                deadline: i64::MAX,
                now: 0,
            },
            true,
        )
        .await
        .unwrap();
    index.finish_evict(DIR, &keys, "cleaner").await.unwrap();
    for k in &keys {
        index.release_claim(DIR, k, "cleaner").await.unwrap();
    }
}

async fn leases_only_grow<I: CacheIndex>(index: &I) {
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

async fn covering_leases_are_live_ancestors<I: CacheIndex>(index: &I) {
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

async fn end_leases_expires_the_prefix_and_below<I: CacheIndex>(index: &I) {
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

async fn expired_leases_are_found_and_removed_only_while_expired<I: CacheIndex>(index: &I) {
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

async fn records_are_key_ordered_ranges<I: CacheIndex>(index: &I) {
    let keys = ["r/a", "r/b", "r/c", "r/d", "r0", "q/z", "r/ü", "r/ z"];
    put(index, &keys.iter().map(|k| entry(k, 1)).collect::<Vec<_>>()).await;
    let got = |v: Vec<Record>| v.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(
        got(index
            .records(DIR, &KeyRange::prefix("r/"), 100)
            .await
            .unwrap()),
        ["r/ z", "r/a", "r/b", "r/c", "r/d", "r/ü"],
        "byte order, the same order S3 lists in; only keys under the prefix"
    );
    assert_eq!(
        got(index
            .records(
                DIR,
                &KeyRange::prefix("r/").after(Some("r/a")).upto(Some("r/c")),
                100
            )
            .await
            .unwrap()),
        ["r/b", "r/c"],
        "(after, upto] bounds"
    );
    assert_eq!(
        got(index
            .records(DIR, &KeyRange::prefix("r/"), 2)
            .await
            .unwrap()),
        ["r/ z", "r/a"],
        "limit"
    );
    let closed_open = KeyRange {
        prefix: "r/",
        start: std::ops::Bound::Included("r/b"),
        end: std::ops::Bound::Excluded("r/d"),
    };
    assert_eq!(
        got(index.records(DIR, &closed_open, 100).await.unwrap()),
        ["r/b", "r/c"],
        "[start, end) bounds"
    );
    put(index, &[entry("r/ab", 1)]).await;
    assert_eq!(
        index.get_record(DIR, "r/a").await.unwrap().map(|r| r.key),
        Some("r/a".to_owned()),
        "get_record finds the key itself, not a longer key it prefixes"
    );
    assert_eq!(index.get_record(DIR, "r/aa").await.unwrap(), None);
    let mut replaced = entry("r/a", 7);
    replaced.source_etag = "\"new\"".into();
    put(index, &[replaced.clone()]).await;
    assert_eq!(
        index
            .records(
                DIR,
                &KeyRange::prefix("r/").after(Some("r/ z")).upto(Some("r/a")),
                1
            )
            .await
            .unwrap(),
        [Record {
            unconfirmed: false,
            key: "r/a".into(),
            entry: Some(replaced),
            claim: None
        }],
        "a completed copy replaces the entry and keeps every field"
    );
    clear(index, "").await;
    assert!(index
        .records(DIR, &KeyRange::prefix(""), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn claims_are_exclusive_until_their_deadline<I: CacheIndex>(index: &I) {
    let claim = |owner: &'static str, deadline, now| async move {
        index
            .claim_copy(
                DIR,
                "c/k",
                &ClaimTerms {
                    owner,
                    deadline,
                    now,
                },
            )
            .await
            .unwrap()
    };
    assert_eq!(claim("a", 100, 0).await, ClaimOutcome::Claimed);
    let rec = &index
        .records(DIR, &KeyRange::prefix("c/"), 10)
        .await
        .unwrap()[0];
    assert!(rec.entry.is_none(), "a claim is not a cached entry");
    assert_eq!(index.usage(DIR, "c/").await.unwrap(), Usage::default());
    match claim("b", 200, 50).await {
        ClaimOutcome::Held(c) => {
            assert_eq!(
                (c.owner.as_str(), c.kind, c.deadline),
                ("a", ClaimKind::Copy, 100)
            )
        }
        ClaimOutcome::Claimed => panic!("a live claim is exclusive"),
    }
    assert_eq!(
        claim("a", 150, 60).await,
        ClaimOutcome::Claimed,
        "the holder may extend"
    );
    assert_eq!(
        claim("b", 300, 150).await,
        ClaimOutcome::Claimed,
        "a void claim is taken over"
    );
    index.release_claim(DIR, "c/k", "a").await.unwrap();
    assert!(
        index
            .records(DIR, &KeyRange::prefix("c/"), 10)
            .await
            .unwrap()[0]
            .claim
            .is_some(),
        "only the holder releases"
    );
    index.release_claim(DIR, "c/k", "b").await.unwrap();
    assert!(
        index
            .records(DIR, &KeyRange::prefix("c/"), 10)
            .await
            .unwrap()
            .is_empty(),
        "a released claim on an uncached key leaves nothing behind"
    );
    assert_eq!(claim("b", 300, 150).await, ClaimOutcome::Claimed);
    index.complete_copy(&entry("c/k", 5), "b").await.unwrap();
    let rec = &index
        .records(DIR, &KeyRange::prefix("c/"), 10)
        .await
        .unwrap()[0];
    assert!(
        rec.entry.is_some() && rec.claim.is_none(),
        "completing drops the claim"
    );
    clear(index, "c/").await;
}

async fn eviction_respects_leases_and_claims<I: CacheIndex>(index: &I) {
    put(
        index,
        &[
            entry("v/live/1", 1),
            entry("v/dead/1", 1),
            entry("v/busy/1", 1),
        ],
    )
    .await;
    index
        .extend_lease(&lease("v/live/", 1_000), 0)
        .await
        .unwrap();
    index.extend_lease(&lease("v/dead/", 10), 0).await.unwrap();
    assert_eq!(
        index
            .claim_copy(
                DIR,
                "v/busy/1",
                &ClaimTerms {
                    owner: "warm",
                    deadline: 1_000,
                    now: 100
                }
            )
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    let keys: Vec<String> = ["v/live/1", "v/dead/1", "v/busy/1", "v/none"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    let d = index
        .begin_evict(
            DIR,
            &keys,
            &ClaimTerms {
                owner: "ev",
                deadline: 500,
                now: 100,
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        d[0],
        EvictDecision::Live("v/live/".into()),
        "a live lease protects"
    );
    assert!(
        matches!(&d[1], EvictDecision::Marked(e) if e.key == "v/dead/1"),
        "an expired lease does not"
    );
    assert!(
        matches!(&d[2], EvictDecision::Busy(c) if c.owner == "warm"),
        "an in-flight copy protects"
    );
    assert_eq!(d[3], EvictDecision::Absent);
    assert!(
        matches!(
            index.claim_copy(DIR, "v/dead/1", &ClaimTerms { owner: "warm2", deadline: 900, now: 100 }).await.unwrap(),
            ClaimOutcome::Held(c) if c.kind == ClaimKind::Evict
        ),
        "a key being evicted cannot be claimed for copy"
    );
    index
        .finish_evict(DIR, &keys, "someone-else")
        .await
        .unwrap();
    assert_eq!(
        index.usage(DIR, "v/dead/").await.unwrap().objects,
        1,
        "only the claimant finishes"
    );
    index.finish_evict(DIR, &keys, "ev").await.unwrap();
    assert_eq!(index.usage(DIR, "v/dead/").await.unwrap().objects, 0);
    assert_eq!(
        index.usage(DIR, "v/").await.unwrap().objects,
        2,
        "kept keys untouched"
    );
    let forced = index
        .begin_evict(
            DIR,
            &keys[..1],
            &ClaimTerms {
                owner: "ev2",
                deadline: 500,
                now: 100,
            },
            true,
        )
        .await
        .unwrap();
    assert!(
        matches!(forced[0], EvictDecision::Marked(_)),
        "force overrides leases"
    );
    index.release_claim(DIR, "v/live/1", "ev2").await.unwrap();
    assert_eq!(
        index.usage(DIR, "v/live/").await.unwrap().objects,
        1,
        "released: still cached"
    );
    index.release_claim(DIR, "v/busy/1", "warm").await.unwrap();
    clear(index, "v/").await;
    index.end_leases(DIR, "", 100).await.unwrap();
    remove_expired(index).await;
}

async fn remove_expired<I: CacheIndex>(index: &I) {
    for l in index.expired_leases(i64::MAX, 1_000).await.unwrap() {
        index.remove_lease_if_expired(&l, i64::MAX).await.unwrap();
    }
}

async fn usage_counts_cached_objects_only<I: CacheIndex>(index: &I) {
    put(
        index,
        &[entry("u/1", 10), entry("u/2", 20), entry("u/s/3", 30)],
    )
    .await;
    index
        .claim_copy(
            DIR,
            "u/pending",
            &ClaimTerms {
                owner: "w",
                deadline: 100,
                now: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        index.usage(DIR, "u/").await.unwrap(),
        Usage {
            objects: 3,
            bytes: 60,
            truncated: false
        }
    );
    // Bounded counting: truncated answers are lower bounds of at least the
    // limit; an answer not truncated is exact.
    let bounded = index.usage_up_to(DIR, "u/", 1).await.unwrap();
    if bounded.truncated {
        assert!((1..=3).contains(&bounded.objects), "{bounded:?}");
    } else {
        assert_eq!((bounded.objects, bounded.bytes), (3, 60));
    }
    assert_eq!(
        index.usage_up_to(DIR, "u/", 3).await.unwrap(),
        Usage {
            objects: 3,
            bytes: 60,
            truncated: false
        },
        "exactly the limit is not truncated"
    );
    assert_eq!(index.usage(DIR, "u/s/").await.unwrap().bytes, 30);
    index.release_claim(DIR, "u/pending", "w").await.unwrap();
    clear(index, "u/").await;
    assert_eq!(index.usage(DIR, "").await.unwrap(), Usage::default());
}

async fn runs_are_leased_fenced_and_taken_over<I: OperationLog>(log: &I) {
    let rec = OperationRecord {
        id: "run1".into(),
        request_id: None,
        request: warm_spec(None),
        owner: Some("CN=launcher,O=genomics".into()),
        state: phase_state("run1", false),
        created_at: 1,
        resumptions: 0,
        run: Some(run_lease("a", 1_000)),
    };
    log.create_operation(&rec).await.unwrap();
    let got = log.get_operation("run1").await.unwrap().unwrap();
    assert_eq!(got.run, rec.run, "the run lease round-trips");
    assert_eq!(got.owner, rec.owner, "the owner round-trips");
    let terms = |replica, now| RunTerms {
        replica,
        deadline: now + 1_000,
        now,
    };
    assert_eq!(
        log.take_over("run1", &terms("b", 999)).await.unwrap(),
        None,
        "a live run is not taken over"
    );
    assert_eq!(
        log.renew_run("run1", &ticket("a", 1), 1_500).await.unwrap(),
        Renewal::Held {
            cancel_requested: false
        }
    );
    assert_eq!(
        log.take_over("run1", &terms("b", 1_200)).await.unwrap(),
        None,
        "renewed: live until 1500"
    );
    let b = log
        .take_over("run1", &terms("b", 1_500))
        .await
        .unwrap()
        .expect("a lapsed run is taken over");
    assert_eq!(b.ticket, ticket("b", 2), "as the next attempt");
    assert_eq!(b.crashes, 1, "a run that lapsed counts as a crash");
    let mut state = phase_state("run1", false);
    state.counters.objects_copied = 9;
    assert!(
        !log.update_operation("run1", &ticket("a", 1), &state)
            .await
            .unwrap(),
        "the superseded runner cannot write (fencing)"
    );
    assert_eq!(
        log.renew_run("run1", &ticket("a", 1), 9_000).await.unwrap(),
        Renewal::Lost,
        "nor renew"
    );
    assert!(log
        .update_operation("run1", &b.ticket, &state)
        .await
        .unwrap());
    assert!(log.request_cancel("run1").await.unwrap());
    assert_eq!(
        log.renew_run("run1", &b.ticket, 3_000).await.unwrap(),
        Renewal::Held {
            cancel_requested: true
        },
        "the runner sees a cancel requested elsewhere"
    );
    log.release_run("run1", &b.ticket).await.unwrap();
    assert_eq!(
        log.renew_run("run1", &b.ticket, 9_000).await.unwrap(),
        Renewal::Lost,
        "a renewal landing after the release does not revive the run"
    );
    let c = log
        .take_over("run1", &terms("c", 1_600))
        .await
        .unwrap()
        .expect("a released run is taken over at once");
    assert_eq!(c.ticket.attempt, 3);
    assert_eq!(c.crashes, 1, "a released run is no crash");
    assert!(c.cancel_requested, "the takeover sees the cancel request");
    let d = log
        .take_over("run1", &terms("d", 2_600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.crashes, 2, "the release was used up");
    let epochs = |e: &str| vec![("a/".to_owned(), e.to_owned())];
    assert!(
        !log.finish_operation("run1", &c.ticket, &phase_state("run1", true), &epochs("c"))
            .await
            .unwrap(),
        "a superseded runner cannot finish the operation"
    );
    assert!(
        log.lease_epochs("run1").await.unwrap().is_empty(),
        "nor record its lease epochs"
    );
    assert!(log
        .finish_operation("run1", &d.ticket, &phase_state("run1", true), &epochs("d"))
        .await
        .unwrap());
    assert_eq!(
        log.lease_epochs("run1").await.unwrap(),
        epochs("d"),
        "finishing records the lease epochs with the final state"
    );
    assert_eq!(
        log.take_over("run1", &terms("e", 99_999)).await.unwrap(),
        None,
        "a finished operation has no run to take"
    );
    assert!(
        !log.update_operation("run1", &d.ticket, &state)
            .await
            .unwrap(),
        "nor any more writes"
    );
    assert!(!log.request_cancel("run1").await.unwrap());
    assert_eq!(log.get_operation("run1").await.unwrap().unwrap().run, None);
}

async fn operations_are_unique_per_request_id<I: OperationLog>(index: &I) {
    let op = |id: &str, rid: Option<&str>| OperationRecord {
        id: id.into(),
        request_id: rid.map(str::to_owned),
        request: warm_spec(rid),
        owner: None,
        state: OperationState::queued(id, 5),
        created_at: 5,
        resumptions: 0,
        run: Some(run_lease("r1", 1_000)),
    };
    assert_eq!(
        index
            .create_operation(&op("op1", Some("r1")))
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    match index
        .create_operation(&op("op2", Some("r1")))
        .await
        .unwrap()
    {
        CreateOutcome::Exists(existing) => assert_eq!(existing.id, "op1"),
        CreateOutcome::Created => panic!("a request id is owned by one operation"),
    }
    assert_eq!(
        index.create_operation(&op("op3", None)).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        index.create_operation(&op("op4", None)).await.unwrap(),
        CreateOutcome::Created,
        "operations without a request id never collide"
    );
    assert!(index.get_operation("op2").await.unwrap().is_none());
    let mut done = OperationState::queued("op1", 5).ended(Outcome::Succeeded, None);
    done.counters.objects_copied = 3;
    done.failures.push(KeyFailure {
        key: "k".into(),
        code: "AccessDenied".into(),
        message: "denied".into(),
    });
    assert!(index
        .update_operation("op1", &ticket("r1", 1), &done)
        .await
        .unwrap());
    let got = index.get_operation("op1").await.unwrap().unwrap();
    assert_eq!(got.state, done, "the state round-trips");
    assert_eq!(got.request, op("op1", Some("r1")).request);
}

async fn operations_list_newest_first_resume_and_purge<I: OperationLog>(index: &I) {
    use super::OpFilter;
    let rec = |id: &str, created_at: i64, done: bool| OperationRecord {
        id: id.into(),
        request_id: None,
        request: warm_spec(None),
        owner: None,
        state: phase_state(id, done),
        created_at,
        resumptions: 0,
        run: (!done).then(|| run_lease("r1", 1_000)),
    };
    for (id, t, done) in [
        ("l1", 100, true),
        ("l2", 200, false),
        ("l3", 300, true),
        ("l4", 300, false),
    ] {
        index.create_operation(&rec(id, t, done)).await.unwrap();
    }
    let ids = |v: Vec<OperationRecord>| {
        v.into_iter()
            .map(|r| r.id)
            .filter(|i| i.starts_with('l'))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(index
            .list_operations(OpFilter::All, None, 100)
            .await
            .unwrap()),
        ["l4", "l3", "l2", "l1"],
        "newest first, ties by id descending"
    );
    assert_eq!(
        ids(index
            .list_operations(OpFilter::Running, None, 100)
            .await
            .unwrap()),
        ["l4", "l2"]
    );
    assert_eq!(
        ids(index
            .list_operations(OpFilter::Finished, None, 100)
            .await
            .unwrap()),
        ["l3", "l1"]
    );
    let first = index.list_operations(OpFilter::All, None, 2).await.unwrap();
    let cursor = first.last().map(|r| (r.created_at, r.id.clone()));
    assert_eq!(
        ids(index
            .list_operations(OpFilter::All, cursor, 100)
            .await
            .unwrap()),
        ["l2", "l1"],
        "the cursor continues after the last row"
    );
    assert_eq!(index.mark_resumed("l2").await.unwrap(), 1);
    assert_eq!(index.mark_resumed("l2").await.unwrap(), 2);
    assert_eq!(
        index
            .get_operation("l2")
            .await
            .unwrap()
            .unwrap()
            .resumptions,
        2
    );
    assert!(index
        .update_operation("l2", &ticket("r1", 1), &phase_state("l2", true))
        .await
        .unwrap());
    assert_eq!(
        ids(index
            .list_operations(OpFilter::Running, None, 100)
            .await
            .unwrap()),
        ["l4"],
        "DONE progress finishes it"
    );
    let purged = index.purge_operations(i64::MAX).await.unwrap();
    assert!(purged >= 3, "finished operations are purged");
    assert_eq!(
        ids(index
            .list_operations(OpFilter::All, None, 100)
            .await
            .unwrap()),
        ["l4"],
        "running ones are kept"
    );
}

async fn a_later_attempt_takes_over_an_earlier_attempts_claims<I: CacheIndex>(index: &I) {
    use super::attempt_owner;
    let (first, second) = (attempt_owner("op", 1), attempt_owner("op", 2));
    let claim = |owner: String| async move {
        let terms = ClaimTerms {
            owner: &owner,
            deadline: 1_000,
            now: 0,
        };
        index.claim_copy(DIR, "at/k", &terms).await.unwrap()
    };
    assert_eq!(claim(first.clone()).await, ClaimOutcome::Claimed);
    assert_eq!(
        claim(attempt_owner("other", 2)).await,
        ClaimOutcome::Held(Claim {
            owner: first.clone(),
            kind: ClaimKind::Copy,
            deadline: 1_000
        }),
        "another operation's attempt waits"
    );
    assert_eq!(
        claim(second.clone()).await,
        ClaimOutcome::Claimed,
        "a later attempt of the same operation takes a live claim over"
    );
    assert!(
        matches!(claim(first.clone()).await, ClaimOutcome::Held(c) if c.owner == second),
        "an earlier attempt never takes a later one's claim"
    );
    assert_eq!(
        index
            .complete_copy(&entry("at/k", 1), &first)
            .await
            .unwrap(),
        Completion::ClaimLost,
        "the superseded attempt cannot record"
    );
    assert!(!index.renew_claim(DIR, "at/k", &first, 2_000).await.unwrap());
    assert_eq!(
        index
            .complete_copy(&entry("at/k", 1), &second)
            .await
            .unwrap(),
        Completion::Recorded
    );
    clear(index, "at/").await;
}

async fn completion_requires_the_copiers_claim<I: CacheIndex>(index: &I) {
    assert_eq!(
        index
            .complete_copy(&entry("cc/none", 1), "a")
            .await
            .unwrap(),
        Completion::ClaimLost,
        "an unclaimed key is not recorded"
    );
    assert!(
        index
            .records(DIR, &KeyRange::prefix("cc/"), 10)
            .await
            .unwrap()
            .is_empty(),
        "a lost completion writes nothing"
    );
    index
        .claim_copy(
            DIR,
            "cc/k",
            &ClaimTerms {
                owner: "a",
                deadline: 100,
                now: 0,
            },
        )
        .await
        .unwrap();
    // a's claim lapses and b takes the key over.
    index
        .claim_copy(
            DIR,
            "cc/k",
            &ClaimTerms {
                owner: "b",
                deadline: 300,
                now: 150,
            },
        )
        .await
        .unwrap();
    let mut newer = entry("cc/k", 9);
    newer.source_etag = "\"newer\"".into();
    let late = entry("cc/k", 1);
    assert!(
        !index.renew_claim(DIR, "cc/k", "a", 10_000).await.unwrap(),
        "a lost claim is not renewed"
    );
    assert!(index.renew_claim(DIR, "cc/k", "b", 400).await.unwrap());
    assert_eq!(
        index
            .records(DIR, &KeyRange::prefix("cc/"), 10)
            .await
            .unwrap()[0]
            .claim
            .as_ref()
            .map(|c| (c.owner.as_str(), c.deadline)),
        Some(("b", 400)),
        "the holder's renewal extends its deadline"
    );
    assert!(
        !index.renew_claim(DIR, "cc/free", "a", 400).await.unwrap(),
        "renewing never acquires a free key"
    );
    assert!(index
        .records(DIR, &KeyRange::prefix("cc/free"), 10)
        .await
        .unwrap()
        .is_empty());
    let both = index.complete_copies(&[newer.clone()], "b").await.unwrap();
    assert_eq!(both, [Completion::Recorded]);
    assert_eq!(
        index.complete_copy(&late, "a").await.unwrap(),
        Completion::ClaimLost,
        "a copier whose claim was taken over never overwrites the newer entry"
    );
    let rec = &index
        .records(DIR, &KeyRange::prefix("cc/"), 10)
        .await
        .unwrap()[0];
    assert_eq!(rec.entry.as_ref(), Some(&newer));
    clear(index, "cc/").await;
}

async fn leases_extended_together_are_each_extended<I: CacheIndex>(index: &I) {
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

async fn a_lease_changes_epoch_when_ended<I: CacheIndex>(index: &I) {
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

async fn a_failed_sweep_is_deferred_and_reported<I: CacheIndex>(index: &I) {
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

async fn an_abandoned_eviction_leaves_a_lapsed_evict_claim<I: CacheIndex>(index: &I) {
    put(index, &[entry("ab/k", 3)]).await;
    let keys = vec!["ab/k".to_owned()];
    index
        .begin_evict(
            DIR,
            &keys,
            &ClaimTerms {
                owner: "ev",
                deadline: 1_000,
                now: 0,
            },
            true,
        )
        .await
        .unwrap();
    index.abandon_evict(DIR, &keys, "other", 0).await.unwrap();
    let rec = &index
        .records(DIR, &KeyRange::prefix("ab/"), 10)
        .await
        .unwrap()[0];
    assert_eq!(
        (rec.claim.as_ref().map(|c| c.deadline), rec.unconfirmed),
        (Some(1_000), false),
        "only the holder abandons"
    );
    index.abandon_evict(DIR, &keys, "ev", 200).await.unwrap();
    let rec = &index
        .records(DIR, &KeyRange::prefix("ab/"), 10)
        .await
        .unwrap()[0];
    let claim = rec.claim.as_ref().expect("the evict claim stays");
    assert_eq!(claim.kind, ClaimKind::Evict);
    assert_eq!(
        claim.deadline, 200,
        "it lapses once a late delete cannot land"
    );
    assert!(
        rec.unconfirmed && rec.entry.is_some(),
        "the entry is untrusted"
    );
    assert_eq!(
        index
            .claim_copy(
                DIR,
                "ab/k",
                &ClaimTerms {
                    owner: "w",
                    deadline: 500,
                    now: 100
                }
            )
            .await
            .unwrap(),
        ClaimOutcome::Held(claim.clone()),
        "nobody copies while the delete may still land"
    );
    assert_eq!(
        index
            .claim_copy(
                DIR,
                "ab/k",
                &ClaimTerms {
                    owner: "w",
                    deadline: 500,
                    now: 300
                }
            )
            .await
            .unwrap(),
        ClaimOutcome::Claimed,
        "then a warm takes the key over"
    );
    index.release_claim(DIR, "ab/k", "w").await.unwrap();
    let rec = &index
        .records(DIR, &KeyRange::prefix("ab/"), 10)
        .await
        .unwrap()[0];
    assert!(
        rec.unconfirmed && rec.claim.is_none(),
        "a copy that gave up leaves the entry untrusted"
    );
    index
        .claim_copy(
            DIR,
            "ab/k",
            &ClaimTerms {
                owner: "w2",
                deadline: 900,
                now: 300,
            },
        )
        .await
        .unwrap();
    index.complete_copy(&entry("ab/k", 3), "w2").await.unwrap();
    let rec = &index
        .records(DIR, &KeyRange::prefix("ab/"), 10)
        .await
        .unwrap()[0];
    assert!(!rec.unconfirmed, "a recorded copy vouches again");
    // A lapsed evict claim (its evictor died) taken over by a copy marks
    // the entry untrusted too.
    index
        .begin_evict(
            DIR,
            &keys,
            &ClaimTerms {
                owner: "dead",
                deadline: 50,
                now: 0,
            },
            true,
        )
        .await
        .unwrap();
    index
        .claim_copy(
            DIR,
            "ab/k",
            &ClaimTerms {
                owner: "w3",
                deadline: 900,
                now: 60,
            },
        )
        .await
        .unwrap();
    index.release_claim(DIR, "ab/k", "w3").await.unwrap();
    let rec = &index
        .records(DIR, &KeyRange::prefix("ab/"), 10)
        .await
        .unwrap()[0];
    assert!(rec.unconfirmed);
    clear(index, "ab/").await;
}

async fn a_finished_operation_can_be_superseded_once<I: OperationLog>(index: &I) {
    let op = |id: &str, done: bool| OperationRecord {
        id: id.into(),
        request_id: Some("sup".into()),
        request: warm_spec(Some("sup")),
        owner: None,
        state: phase_state(id, done),
        created_at: 7,
        resumptions: 0,
        run: (!done).then(|| run_lease("r1", 1_000)),
    };
    index.create_operation(&op("s1", false)).await.unwrap();
    assert!(
        !index
            .supersede_operation("s1", &op("s2", false))
            .await
            .unwrap(),
        "a running operation keeps its request id"
    );
    assert!(index
        .update_operation("s1", &ticket("r1", 1), &op("s1", true).state)
        .await
        .unwrap());
    assert!(index
        .supersede_operation("s1", &op("s2", false))
        .await
        .unwrap());
    assert!(
        !index
            .supersede_operation("s1", &op("s3", false))
            .await
            .unwrap(),
        "only one resubmission takes the request id over"
    );
    match index.create_operation(&op("s4", false)).await.unwrap() {
        CreateOutcome::Exists(e) => assert_eq!(e.id, "s2", "the request id moved"),
        CreateOutcome::Created => panic!("request id must be held by s2"),
    }
    assert!(
        index.get_operation("s1").await.unwrap().is_some(),
        "the old operation stays readable by id"
    );
    assert!(index.get_operation("s3").await.unwrap().is_none());
    let epochs = vec![
        ("a/".to_owned(), "e1".to_owned()),
        ("b/".to_owned(), "e2".to_owned()),
    ];
    index.set_lease_epochs("s2", &epochs).await.unwrap();
    assert_eq!(index.lease_epochs("s2").await.unwrap(), epochs);
    index.set_lease_epochs("s2", &epochs[..1]).await.unwrap();
    assert_eq!(
        index.lease_epochs("s2").await.unwrap(),
        epochs[..1],
        "setting replaces"
    );
    assert!(index.lease_epochs("s1").await.unwrap().is_empty());
}
