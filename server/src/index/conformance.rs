//! One conformance suite for every [`CacheIndex`] backend: each backend's
//! tests call [`run_all`] with a fresh, empty index. Assertions name the rule
//! they check, so a new backend learns the contract from its failures.

// Test support: a failed step must stop the test with its message.
#![allow(clippy::unwrap_used)]

use expresscache::proto::v1 as pb;

use super::{CacheIndex, CreateOutcome, Entry, Lease, OperationRecord, Usage};

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

fn lease(prefix: &str, expires_at: i64) -> Lease {
    Lease {
        directory_bucket: DIR.into(),
        prefix: prefix.into(),
        source_bucket: "src".into(),
        expires_at,
    }
}

/// Runs every check against `index`, which must start empty.
pub async fn run_all<I: CacheIndex>(index: &I) {
    leases_only_grow(index).await;
    covering_leases_are_live_ancestors(index).await;
    end_leases_removes_the_prefix_and_below(index).await;
    entries_are_key_ordered_ranges(index).await;
    usage_and_deletes(index).await;
    operations_are_unique_per_request_id(index).await;
}

async fn leases_only_grow<I: CacheIndex>(index: &I) {
    let l = index.extend_lease(&lease("grow/", 1000)).await.unwrap();
    assert_eq!(l.expires_at, 1000, "a new lease is stored as given");
    let l = index.extend_lease(&lease("grow/", 500)).await.unwrap();
    assert_eq!(
        l.expires_at, 1000,
        "a shorter extension never shortens a lease"
    );
    let l = index.extend_lease(&lease("grow/", 2000)).await.unwrap();
    assert_eq!(l.expires_at, 2000, "a longer extension wins");
    index.end_leases(DIR, "grow/").await.unwrap();
}

async fn covering_leases_are_live_ancestors<I: CacheIndex>(index: &I) {
    index.extend_lease(&lease("", 100)).await.unwrap();
    index.extend_lease(&lease("a/", 300)).await.unwrap();
    index.extend_lease(&lease("a/b/", 50)).await.unwrap();
    index.extend_lease(&lease("a/b/c/", 300)).await.unwrap();
    index.extend_lease(&lease("a0/", 300)).await.unwrap();
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
    assert!(
        index
            .covering_leases("other--use1-az4--x-s3", "a/", 0)
            .await
            .unwrap()
            .is_empty(),
        "leases belong to one directory bucket"
    );
    for p in ["", "a/", "a/b/", "a/b/c/", "a0/"] {
        index.end_leases(DIR, p).await.unwrap();
    }
}

async fn end_leases_removes_the_prefix_and_below<I: CacheIndex>(index: &I) {
    for p in ["x/", "x/y/", "x0/", "w/"] {
        index.extend_lease(&lease(p, 100)).await.unwrap();
    }
    assert_eq!(index.end_leases(DIR, "x/").await.unwrap(), 2);
    assert_eq!(
        index.covering_leases(DIR, "x0/", 0).await.unwrap().len(),
        1,
        "a sibling sharing a string prefix survives"
    );
    assert_eq!(index.end_leases(DIR, "").await.unwrap(), 2, "\"\" ends all");
}

async fn entries_are_key_ordered_ranges<I: CacheIndex>(index: &I) {
    let keys = ["r/a", "r/b", "r/c", "r/d", "r0", "q/z", "r/ü", "r/ z"];
    index
        .put_entries(&keys.iter().map(|k| entry(k, 1)).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = |v: Vec<Entry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        got(index.entries(DIR, "r/", None, None, 100).await.unwrap()),
        ["r/ z", "r/a", "r/b", "r/c", "r/d", "r/ü"],
        "byte order, the same order S3 lists in; only keys under the prefix"
    );
    assert_eq!(
        got(index
            .entries(DIR, "r/", Some("r/a"), Some("r/c"), 100)
            .await
            .unwrap()),
        ["r/b", "r/c"],
        "(after, upto] bounds"
    );
    assert_eq!(
        got(index.entries(DIR, "r/", None, None, 2).await.unwrap()),
        ["r/ z", "r/a"],
        "limit"
    );
    let mut replaced = entry("r/a", 7);
    replaced.source_etag = "\"new\"".into();
    index.put_entries(&[replaced.clone()]).await.unwrap();
    assert_eq!(
        index
            .entries(DIR, "r/", Some("r/ z"), Some("r/a"), 1)
            .await
            .unwrap(),
        [replaced],
        "put replaces an entry and keeps every field"
    );
    index
        .delete_entries(DIR, &keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
        .await
        .unwrap();
}

async fn usage_and_deletes<I: CacheIndex>(index: &I) {
    index
        .put_entries(&[entry("u/1", 10), entry("u/2", 20), entry("u/s/3", 30)])
        .await
        .unwrap();
    assert_eq!(
        index.usage(DIR, "u/").await.unwrap(),
        Usage {
            objects: 3,
            bytes: 60
        }
    );
    index
        .delete_entries(DIR, &["u/2".into(), "u/missing".into()])
        .await
        .unwrap();
    assert_eq!(
        index.usage(DIR, "u/").await.unwrap(),
        Usage {
            objects: 2,
            bytes: 40
        },
        "deleting a missing key is not an error"
    );
    index
        .delete_entries(DIR, &["u/1".into(), "u/s/3".into()])
        .await
        .unwrap();
    assert_eq!(index.usage(DIR, "").await.unwrap(), Usage::default());
}

async fn operations_are_unique_per_request_id<I: CacheIndex>(index: &I) {
    let op = |id: &str, rid: Option<&str>| OperationRecord {
        id: id.into(),
        request_id: rid.map(str::to_owned),
        request: pb::WarmCacheRequest {
            bucket: "src".into(),
            request_id: rid.unwrap_or_default().into(),
            ..Default::default()
        },
        progress: pb::WarmProgress {
            operation_id: id.into(),
            ..Default::default()
        },
        created_at: 5,
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
    let done = pb::WarmProgress {
        operation_id: "op1".into(),
        phase: pb::Phase::Done as i32,
        outcome: pb::Outcome::Succeeded as i32,
        ..Default::default()
    };
    index.update_operation("op1", &done).await.unwrap();
    let got = index.get_operation("op1").await.unwrap().unwrap();
    assert_eq!(got.progress, done, "progress round-trips");
    assert_eq!(got.request, op("op1", Some("r1")).request);
}
