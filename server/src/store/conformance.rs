//! One conformance suite for every [`ObjectStore`] backend: each backend's
//! tests call [`run_all`] with the store, a [`Seed`] that creates buckets and
//! writes objects behind the store's back, and the backend's
//! [`Capabilities`]. Assertions name the case and the rule they check, so a
//! new backend (or a new version of moto) learns the contract from its
//! failures.
//!
//! Sources are general-purpose buckets and destinations directory buckets,
//! as in production. Listings are only checked on general-purpose buckets:
//! S3 Express directory buckets do not list in key order.

// Test support: a failed step must stop the test with its message.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;

use super::{
    CopyRequest, DeleteTarget, ListQuery, MemoryStore, ObjectMeta, ObjectStore, PartCopy,
    StoreError,
};

/// What the endpoint behind a store does where S3-compatible endpoints
/// differ.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// The endpoint honours the ETag in DeleteObjects: a fenced delete of a
    /// changed object keeps it and reports `PreconditionFailed`, and one of
    /// a missing key reports `NoSuchKey`. S3 Express does; moto ignores the
    /// ETag and deletes unconditionally.
    pub fenced_delete: bool,
    /// The endpoint honours `x-amz-copy-source-if-match` on CopyObject and
    /// UploadPartCopy: a copy of a source whose ETag changed is refused with
    /// `PreconditionFailed`. S3 does; moto (5.2) ignores the header and
    /// copies whatever version is current.
    pub copy_if_match: bool,
}

/// Which kind of bucket [`Seed::bucket`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketKind {
    /// A general-purpose bucket: where objects are copied from.
    Source,
    /// An S3 Express directory bucket (`…--x-s3`): the cache.
    Cache,
}

/// Setup the suite needs and [`ObjectStore`] does not offer.
#[async_trait::async_trait]
pub trait Seed: Send + Sync {
    /// Creates a new, empty bucket of `kind`; returns its name, unique to
    /// this call.
    async fn bucket(&self, kind: BucketKind) -> String;

    /// Writes `body` as `bucket`/`key`, replacing any object there; returns
    /// the new object's ETag.
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> String;
}

/// The in-memory double seeds itself; bodies only count for their length.
#[async_trait::async_trait]
impl Seed for MemoryStore {
    async fn bucket(&self, kind: BucketKind) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = match kind {
            BucketKind::Source => format!("src-{}", &id[..12]),
            BucketKind::Cache => format!("cache-{}--use1-az4--x-s3", &id[..12]),
        };
        self.create_bucket(&name);
        name
    }

    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> String {
        MemoryStore::put(self, bucket, key, body.len() as u64)
    }
}

/// Runs every case against `store`; `seed` writes to the same buckets.
pub async fn run_all<S: ObjectStore>(store: &S, seed: &dyn Seed, caps: Capabilities) {
    listing(store, seed).await;
    delimited_listing(store, seed).await;
    check_bucket(store, seed).await;
    copy_object(store, seed, caps).await;
    multipart(store, seed, caps).await;
    delete_objects(store, seed, caps).await;
    head_object(store, seed).await;
}

/// `key` as a listing of `bucket` shows it, if it is there. The other cases
/// check presence this way so that they do not depend on `head_object`'s
/// classification of a missing key, which has its own case.
async fn listed<S: ObjectStore>(store: &S, bucket: &str, key: &str) -> Option<ObjectMeta> {
    let mut token = None;
    loop {
        let page = store
            .list_page(bucket, &ListQuery::prefix(key), token.take())
            .await
            .unwrap_or_else(|e| panic!("listing {bucket} for {key:?}: {e}"));
        if let Some(o) = page.objects.into_iter().find(|o| o.key == key) {
            return Some(o);
        }
        token = Some(page.next?);
    }
}

/// S3's page size limit: more keys than this span at least two pages on
/// every backend.
use crate::core::limits::KEYS_PER_REQUEST as S3_PAGE;
use crate::core::limits::MIN_PART;

fn missing_bucket() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("missing-{}", &id[..12])
}

/// Keys whose bytes need escaping somewhere on the way (URLs, XML,
/// `x-amz-copy-source`) and that sort differently by bytes than by
/// characters or case.
const ODD: [&str; 9] = [
    "a b.txt",
    "quote\"d'",
    "plus+sign",
    "per%cent%2F",
    "ümlaut",
    "日本語/キー",
    "Zebra",
    "tilde~_-.",
    "x/../y",
];

/// `listing`: keys in ascending byte order, pages chained by the token, odd
/// keys intact, the prefix filtering, `next` only on pages that are not the
/// last, and `NoSuchBucket` for a missing bucket.
async fn listing<S: ObjectStore>(store: &S, seed: &dyn Seed) {
    let bucket = seed.bucket(BucketKind::Source).await;
    let mut expected: Vec<String> = (0..S3_PAGE + 3)
        .map(|i| format!("list/fill-{i:05}"))
        .chain(ODD.iter().map(|k| format!("list/{k}")))
        .collect();
    // Outside the prefix, on both sides of it in byte order.
    let outside = ["lisa", "list", "list0", "list.x", "lisu/x", "other/list/x"];
    let all: Vec<String> = expected
        .iter()
        .cloned()
        .chain(outside.iter().map(|k| (*k).to_owned()))
        .collect();
    let b = bucket.as_str();
    let etags: Vec<(String, String)> = futures::stream::iter(all)
        .map(|k| async move {
            // Bodies of different lengths, so sizes are checked per key.
            let body = vec![b'l'; k.len()];
            let etag = seed.put(b, &k, body).await;
            (k, etag)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    expected.sort();

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut token = None;
    loop {
        let page = store
            .list_page(&bucket, &ListQuery::prefix("list/"), token.take())
            .await
            .unwrap_or_else(|e| panic!("listing: page {pages} of an existing bucket: {e}"));
        pages += 1;
        assert!(
            page.objects.len() <= S3_PAGE,
            "listing: a page holds at most {S3_PAGE} keys, got {}",
            page.objects.len()
        );
        seen.extend(page.objects);
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
        assert!(pages < 10_000, "listing: the pages never end");
    }
    assert!(
        pages >= 2,
        "listing: {} keys span more than one page, got {pages}",
        expected.len()
    );
    let keys: Vec<&str> = seen.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys.len(),
        expected.len(),
        "listing: every key under the prefix exactly once, nothing outside it"
    );
    for (i, (got, want)) in keys.iter().zip(&expected).enumerate() {
        assert_eq!(
            got, want,
            "listing: key {i} in ascending byte order, odd characters intact"
        );
    }
    for o in &seen {
        let (_, etag) = etags.iter().find(|(k, _)| *k == o.key).unwrap();
        assert_eq!(
            &o.etag, etag,
            "listing: {:?} shows the ETag its write returned",
            o.key
        );
        assert_eq!(
            o.size,
            o.key.len() as u64,
            "listing: {:?} shows its size",
            o.key
        );
    }

    let page = store
        .list_page(&bucket, &ListQuery::prefix("list/ü"), None)
        .await
        .unwrap_or_else(|e| panic!("listing: a non-ASCII prefix: {e}"));
    let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["list/ümlaut"], "listing: a non-ASCII prefix filters");
    assert_eq!(page.next, None, "listing: next is None on the last page");

    let page = store
        .list_page(&bucket, &ListQuery::prefix("nothing/"), None)
        .await
        .unwrap_or_else(|e| panic!("listing: a prefix with no keys: {e}"));
    assert!(
        page.objects.is_empty() && page.next.is_none(),
        "listing: a prefix with no keys is one empty last page, got {page:?}"
    );

    let missing = missing_bucket();
    assert_eq!(
        store
            .list_page(&missing, &ListQuery::prefix(""), None)
            .await
            .err(),
        Some(StoreError::NoSuchBucket(missing.clone())),
        "listing: a missing bucket is NoSuchBucket"
    );
}

/// Every page of `query`: its objects' keys and its common prefixes.
async fn list_all<S: ObjectStore>(
    store: &S,
    bucket: &str,
    query: &ListQuery<'_>,
) -> (Vec<String>, Vec<String>) {
    let (mut keys, mut common) = (Vec::new(), Vec::new());
    let mut token = None;
    for _ in 0..10_000 {
        let page = store
            .list_page(bucket, query, token.take())
            .await
            .unwrap_or_else(|e| panic!("listing {query:?}: {e}"));
        keys.extend(page.objects.into_iter().map(|o| o.key));
        common.extend(page.common_prefixes);
        match page.next {
            Some(next) => token = Some(next),
            None => return (keys, common),
        }
    }
    panic!("listing {query:?}: the pages never end");
}

/// `delimited_listing`: the direct children of a prefix (objects and common
/// prefixes, each once, across pages), and `start_after` skipping what
/// sorts before it: what the parallel listing of a tree relies on.
async fn delimited_listing<S: ObjectStore>(store: &S, seed: &dyn Seed) {
    let bucket = seed.bucket(BucketKind::Source).await;
    // Wide enough that the common prefixes span pages: 1,005 directories.
    let mut keys: Vec<String> = (0..S3_PAGE + 5)
        .map(|i| format!("tree/dir-{i:05}/x"))
        .collect();
    keys.extend(
        [
            "tree/a.txt",
            "tree/dir-00001/y/z",
            "tree/dir-00001.txt",
            "tree/z",
            "tree/",
            "tree",
            "treetop/x",
        ]
        .map(str::to_owned),
    );
    futures::stream::iter(keys.clone())
        .map(|k| {
            let b = bucket.as_str();
            async move { seed.put(b, &k, vec![b'd']).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (objects, common) = list_all(store, &bucket, &ListQuery::prefix("tree/").delimited()).await;
    assert_eq!(
        objects,
        ["tree/", "tree/a.txt", "tree/dir-00001.txt", "tree/z"],
        "delimited listing: the direct objects only"
    );
    let want: Vec<String> = (0..S3_PAGE + 5)
        .map(|i| format!("tree/dir-{i:05}/"))
        .collect();
    assert_eq!(
        common, want,
        "delimited listing: each common prefix once, in order, across pages"
    );
    let (objects, common) = list_all(
        store,
        &bucket,
        &ListQuery::prefix("tree/").start_after("tree/dir-01003"),
    )
    .await;
    assert!(common.is_empty(), "undelimited: no common prefixes");
    assert_eq!(
        objects,
        ["tree/dir-01003/x", "tree/dir-01004/x", "tree/z"],
        "start_after: only keys after it, under the prefix"
    );
    let (objects, _) = list_all(
        store,
        &bucket,
        &ListQuery::prefix("tree/dir-00001/").start_after("tree/"),
    )
    .await;
    assert_eq!(
        objects,
        ["tree/dir-00001/x", "tree/dir-00001/y/z"],
        "start_after before the prefix: the whole prefix"
    );
}

/// `check_bucket`: Ok for existing buckets of both kinds, `NoSuchBucket` for
/// a missing one.
async fn check_bucket<S: ObjectStore>(store: &S, seed: &dyn Seed) {
    for kind in [BucketKind::Source, BucketKind::Cache] {
        let bucket = seed.bucket(kind).await;
        assert_eq!(
            store.check_bucket(&bucket).await,
            Ok(()),
            "check_bucket: an existing {kind:?} bucket is Ok"
        );
    }
    let missing = missing_bucket();
    assert_eq!(
        store.check_bucket(&missing).await,
        Err(StoreError::NoSuchBucket(missing.clone())),
        "check_bucket: a missing bucket is NoSuchBucket"
    );
}

/// `copy_object`: a copy with the current ETag lands with the source's size;
/// with a stale ETag it is `PreconditionFailed` and changes nothing (with
/// [`Capabilities::copy_if_match`]; without, the suite pins what the
/// endpoint does instead); a missing source is `NoSuchKey`.
async fn copy_object<S: ObjectStore>(store: &S, seed: &dyn Seed, caps: Capabilities) {
    let src = seed.bucket(BucketKind::Source).await;
    let dest = seed.bucket(BucketKind::Cache).await;
    let key = "copy/odd key+\"q\"%20ü.bin";
    let v1 = seed.put(&src, key, vec![1; 10]).await;
    let req = CopyRequest {
        source_bucket: &src,
        source_key: key,
        source_etag: &v1,
        dest_bucket: &dest,
        dest_key: key,
    };
    let copied = store
        .copy_object(&req)
        .await
        .unwrap_or_else(|e| panic!("copy_object: a copy with the current ETag: {e}"));
    let head = store
        .head_object(&dest, key)
        .await
        .unwrap_or_else(|e| panic!("copy_object: head of the copy: {e}"));
    assert_eq!(head.size, 10, "copy_object: the copy has the source's size");
    assert_eq!(
        head.etag, copied.etag,
        "copy_object: the copy's ETag is the one the copy returned"
    );

    // The source changes after it was listed.
    let v2 = seed.put(&src, key, vec![2; 20]).await;
    assert_ne!(v1, v2, "copy_object: a new body gets a new ETag");
    let stale = store.copy_object(&req).await;
    let after = store
        .head_object(&dest, key)
        .await
        .unwrap_or_else(|e| panic!("copy_object: head after the stale copy: {e}"));
    if caps.copy_if_match {
        assert_eq!(
            stale,
            Err(StoreError::PreconditionFailed),
            "copy_object: a copy with a stale ETag is PreconditionFailed"
        );
        assert_eq!(
            (after.size, &after.etag),
            (10, &head.etag),
            "copy_object: a refused copy leaves the destination unchanged"
        );
    } else {
        // The endpoint ignores `x-amz-copy-source-if-match`. If this starts
        // failing, it learned the condition: run the suite with
        // `copy_if_match: true` instead.
        let copied = stale.unwrap_or_else(|e| {
            panic!("copy_object: without copy_if_match a stale copy still copies: {e}")
        });
        assert_eq!(
            (after.size, &after.etag),
            (20, &copied.etag),
            "copy_object: without copy_if_match a stale copy lands the current source"
        );
    }

    let gone = "copy/never-written";
    assert_eq!(
        store
            .copy_object(&CopyRequest {
                source_key: gone,
                dest_key: gone,
                ..req
            })
            .await,
        Err(StoreError::NoSuchKey(gone.into())),
        "copy_object: a missing source is NoSuchKey"
    );
    assert_eq!(
        listed(store, &dest, gone).await,
        None,
        "copy_object: a failed copy of a missing source writes nothing"
    );
}

/// `multipart`: two ranges copied as parts complete into an object of the
/// full size; an aborted upload leaves nothing behind and cannot complete.
async fn multipart<S: ObjectStore>(store: &S, seed: &dyn Seed, caps: Capabilities) {
    let src = seed.bucket(BucketKind::Source).await;
    let dest = seed.bucket(BucketKind::Cache).await;
    let key = "multi/big ü.bin";
    let size = MIN_PART + 1234;
    let etag = seed.put(&src, key, vec![7; size as usize]).await;
    let copy = CopyRequest {
        source_bucket: &src,
        source_key: key,
        source_etag: &etag,
        dest_bucket: &dest,
        dest_key: key,
    };

    let upload = store
        .create_multipart(&copy)
        .await
        .unwrap_or_else(|e| panic!("multipart: create: {e}"));
    let mut parts = Vec::new();
    for (n, first, last) in [(1, 0, MIN_PART - 1), (2, MIN_PART, size - 1)] {
        let part = PartCopy {
            copy: copy.clone(),
            upload_id: &upload,
            part_number: n,
            first_byte: first,
            last_byte: last,
        };
        let etag = store
            .upload_part_copy(&part)
            .await
            .unwrap_or_else(|e| panic!("multipart: part {n} ({first}..={last}): {e}"));
        parts.push((n, etag));
    }
    let done = store
        .complete_multipart(&dest, key, &upload, &parts)
        .await
        .unwrap_or_else(|e| panic!("multipart: complete: {e}"));
    let head = store
        .head_object(&dest, key)
        .await
        .unwrap_or_else(|e| panic!("multipart: head of the completed object: {e}"));
    assert_eq!(
        head.size, size,
        "multipart: the completed object has the full size"
    );
    assert_eq!(
        head.etag, done.etag,
        "multipart: the object's ETag is the one complete returned"
    );

    // The source changes while an upload copies it.
    let upload = store
        .create_multipart(&copy)
        .await
        .unwrap_or_else(|e| panic!("multipart: create of the stale upload: {e}"));
    let newer = seed.put(&src, key, vec![8; size as usize + 1]).await;
    assert_ne!(newer, etag, "multipart: a new body gets a new ETag");
    let stale = store
        .upload_part_copy(&PartCopy {
            copy: copy.clone(),
            upload_id: &upload,
            part_number: 1,
            first_byte: 0,
            last_byte: MIN_PART - 1,
        })
        .await;
    if caps.copy_if_match {
        assert_eq!(
            stale,
            Err(StoreError::PreconditionFailed),
            "multipart: a part copy with a stale ETag is PreconditionFailed"
        );
    } else {
        assert!(
            stale.is_ok(),
            "multipart: without copy_if_match a stale part copy still copies, got {stale:?}"
        );
    }
    store
        .abort_multipart(&dest, key, &upload)
        .await
        .unwrap_or_else(|e| panic!("multipart: abort of the stale upload: {e}"));
    let head = store
        .head_object(&dest, key)
        .await
        .unwrap_or_else(|e| panic!("multipart: head after the stale upload: {e}"));
    assert_eq!(
        (head.size, &head.etag),
        (size, &done.etag),
        "multipart: an aborted upload leaves the completed object as it was"
    );

    let aborted_key = "multi/aborted";
    let to_abort = CopyRequest {
        dest_key: aborted_key,
        source_etag: &newer,
        ..copy.clone()
    };
    let upload = store
        .create_multipart(&to_abort)
        .await
        .unwrap_or_else(|e| panic!("multipart: create of the upload to abort: {e}"));
    let part = PartCopy {
        copy: to_abort.clone(),
        upload_id: &upload,
        part_number: 1,
        first_byte: 0,
        last_byte: 99,
    };
    let part_etag = store
        .upload_part_copy(&part)
        .await
        .unwrap_or_else(|e| panic!("multipart: part of the upload to abort: {e}"));
    // A second upload of a neighbour, and one of a key the first is a
    // prefix of: only the key's own uploads are its unfinished ones.
    let neighbour = store
        .create_multipart(&CopyRequest {
            dest_key: "multi/aborted-not",
            ..copy.clone()
        })
        .await
        .unwrap_or_else(|e| panic!("multipart: create of a neighbour's upload: {e}"));
    let dest_ref = dest.as_str();
    let unfinished = |k: &'static str| async move {
        store
            .unfinished_uploads(dest_ref, k)
            .await
            .unwrap_or_else(|e| panic!("multipart: unfinished uploads of {k}: {e}"))
    };
    assert_eq!(
        unfinished(aborted_key).await,
        vec![upload.clone()],
        "multipart: the unfinished uploads of a key are its own, not its neighbours'"
    );
    assert_eq!(unfinished("multi/big ü.bin").await, Vec::<String>::new());
    store
        .abort_multipart(&dest, "multi/aborted-not", &neighbour)
        .await
        .unwrap_or_else(|e| panic!("multipart: abort of the neighbour's upload: {e}"));
    store
        .abort_multipart(&dest, aborted_key, &upload)
        .await
        .unwrap_or_else(|e| panic!("multipart: abort: {e}"));
    let completed = store
        .complete_multipart(&dest, aborted_key, &upload, &[(1, part_etag)])
        .await;
    assert!(
        completed.is_err(),
        "multipart: complete after abort fails, got {completed:?}"
    );
    assert_eq!(
        listed(store, &dest, aborted_key).await,
        None,
        "multipart: an aborted upload leaves no object"
    );
    assert_eq!(
        unfinished(aborted_key).await,
        Vec::<String>::new(),
        "multipart: an aborted upload is no longer unfinished"
    );
}

/// `delete_objects`: unconditional deletes remove present keys and succeed
/// for missing ones; a fenced delete with the current ETag removes the
/// object. With [`Capabilities::fenced_delete`], a fenced delete with a
/// stale ETag keeps the object and fails with `PreconditionFailed`, and one
/// of a missing key fails with `NoSuchKey`; without it the suite pins what
/// the endpoint does instead.
async fn delete_objects<S: ObjectStore>(store: &S, seed: &dyn Seed, caps: Capabilities) {
    let dest = seed.bucket(BucketKind::Cache).await;
    let unfenced = |k: &str| DeleteTarget {
        key: k.into(),
        etag: None,
    };
    let fenced = |k: &str, etag: &str| DeleteTarget {
        key: k.into(),
        etag: Some(etag.into()),
    };
    let present = |k: &'static str| {
        let dest = &dest;
        async move { listed(store, dest, k).await.map(|o| o.etag) }
    };

    assert_eq!(
        store.delete_objects(&dest, &[]).await,
        Ok(vec![]),
        "delete_objects: an empty batch is a no-op"
    );

    seed.put(&dest, "del/a", vec![1]).await;
    seed.put(&dest, "del/b c", vec![2]).await;
    assert_eq!(
        store
            .delete_objects(&dest, &[unfenced("del/a"), unfenced("del/b c")])
            .await,
        Ok(vec![]),
        "delete_objects: unconditional deletes of present keys succeed"
    );
    assert_eq!(
        (present("del/a").await, present("del/b c").await),
        (None, None),
        "delete_objects: unconditionally deleted keys are gone"
    );

    assert_eq!(
        store
            .delete_objects(&dest, &[unfenced("del/never-written")])
            .await,
        Ok(vec![]),
        "delete_objects: an unconditional delete of a missing key succeeds, as on S3"
    );

    let current = seed.put(&dest, "del/current", vec![3]).await;
    assert_eq!(
        store
            .delete_objects(&dest, &[fenced("del/current", &current)])
            .await,
        Ok(vec![]),
        "delete_objects: a fenced delete with the current ETag succeeds"
    );
    assert_eq!(
        present("del/current").await,
        None,
        "delete_objects: a fenced delete with the current ETag removes the object"
    );

    // A newer copy landed after the one the caller saw.
    let stale = seed.put(&dest, "del/rewritten", vec![4]).await;
    let newer = seed.put(&dest, "del/rewritten", vec![5, 5]).await;
    assert_ne!(stale, newer, "delete_objects: a new body gets a new ETag");
    let failures = store
        .delete_objects(&dest, &[fenced("del/rewritten", &stale)])
        .await
        .unwrap_or_else(|e| panic!("delete_objects: a fenced delete with a stale ETag: {e}"));
    let after = present("del/rewritten").await;

    let missing_failures = store
        .delete_objects(&dest, &[fenced("del/never-written", &stale)])
        .await
        .unwrap_or_else(|e| panic!("delete_objects: a fenced delete of a missing key: {e}"));

    if caps.fenced_delete {
        let codes: Vec<(&str, &str)> = failures
            .iter()
            .map(|f| (f.key.as_str(), f.code.as_str()))
            .collect();
        assert_eq!(
            codes,
            [("del/rewritten", "PreconditionFailed")],
            "delete_objects: a fenced delete with a stale ETag fails for that key"
        );
        assert_eq!(
            after,
            Some(newer),
            "delete_objects: a fenced delete with a stale ETag keeps the newer object"
        );
        let codes: Vec<(&str, &str)> = missing_failures
            .iter()
            .map(|f| (f.key.as_str(), f.code.as_str()))
            .collect();
        assert_eq!(
            codes,
            [("del/never-written", "NoSuchKey")],
            "delete_objects: a fenced delete of a missing key fails with NoSuchKey \
             (S3 Express answers 404 for that key)"
        );
    } else {
        // The endpoint ignores the ETag. If these start failing, the
        // endpoint learned fenced deletes: run the suite with
        // `fenced_delete: true` instead.
        assert_eq!(
            (failures, after),
            (vec![], None),
            "delete_objects: without fenced deletes, a stale ETag is ignored and the object \
             deleted"
        );
        assert_eq!(
            missing_failures,
            vec![],
            "delete_objects: without fenced deletes, a fenced delete of a missing key succeeds"
        );
    }
}

/// `head_object`: a present object shows its size and ETag; a missing key
/// is `NoSuchKey`. HeadObject answers carry no body, so an S3 backend sees a
/// bare 404 (the SDK calls it `NotFound`) and must map it itself. (Nor can
/// it tell a missing key from a missing bucket, so that is not checked.)
async fn head_object<S: ObjectStore>(store: &S, seed: &dyn Seed) {
    for kind in [BucketKind::Source, BucketKind::Cache] {
        let bucket = seed.bucket(kind).await;
        let key = "head/a b+ü";
        let etag = seed.put(&bucket, key, vec![9; 42]).await;
        let head = store
            .head_object(&bucket, key)
            .await
            .unwrap_or_else(|e| panic!("head_object: a present key in a {kind:?} bucket: {e}"));
        assert_eq!(
            (head.key.as_str(), head.size, &head.etag),
            (key, 42, &etag),
            "head_object: a present key shows its size and ETag"
        );
        assert_eq!(
            store.head_object(&bucket, "head/missing").await,
            Err(StoreError::NoSuchKey("head/missing".into())),
            "head_object: a missing key in a {kind:?} bucket is NoSuchKey"
        );
    }
}
