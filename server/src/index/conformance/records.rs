//! Records: key-ordered ranges of entries and claims, and usage counts.

use super::*;

pub(super) async fn records_are_key_ordered_ranges<I: CacheIndex>(index: &I) {
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

pub(super) async fn usage_counts_cached_objects_only<I: CacheIndex>(index: &I) {
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
