//! Claims: exclusive until their deadline, taken over by a later attempt
//! of the same operation, required to record a copy, and how an eviction
//! claims, deletes and gives up keys.

use super::*;

pub(super) async fn claims_are_exclusive_until_their_deadline<I: CacheIndex>(index: &I) {
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

pub(super) async fn eviction_respects_leases_and_claims<I: CacheIndex>(index: &I) {
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

pub(super) async fn a_later_attempt_takes_over_an_earlier_attempts_claims<I: CacheIndex>(
    index: &I,
) {
    use crate::index::attempt_owner;
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

pub(super) async fn completion_requires_the_copiers_claim<I: CacheIndex>(index: &I) {
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

pub(super) async fn an_abandoned_eviction_leaves_a_lapsed_evict_claim<I: CacheIndex>(index: &I) {
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
