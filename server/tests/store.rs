//! `S3Store` against moto through the real AWS SDK: the shared
//! `ObjectStore` conformance suite, with general-purpose buckets as sources
//! and directory buckets (`--x-s3`) as the cache, as in production; and,
//! with the fault proxy between the SDK and moto, how S3Store classifies
//! error answers, hangs and lost replies.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream;
use expresscache_server::store::conformance::{run_all, BucketKind, Capabilities, Seed};
use expresscache_server::store::{CopyRequest, ListQuery, ObjectStore, S3Store, StoreError};
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::{
    create_bucket, create_directory_bucket, put, s3_client, unique, unique_directory_bucket, Moto,
};

/// Creates buckets and writes objects with a plain SDK client.
#[derive(Debug)]
struct MotoSeed {
    s3: aws_sdk_s3::Client,
}

#[async_trait::async_trait]
impl Seed for MotoSeed {
    async fn bucket(&self, kind: BucketKind) -> String {
        match kind {
            BucketKind::Source => {
                let name = unique("src");
                create_bucket(&self.s3, &name).await;
                name
            }
            BucketKind::Cache => {
                let name = unique_directory_bucket();
                create_directory_bucket(&self.s3, &name).await;
                name
            }
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> String {
        let out = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
        out.e_tag().unwrap_or_default().to_owned()
    }
}

#[tokio::test]
async fn s3_store_on_moto_conforms() {
    let moto = Moto::start();
    let seed = MotoSeed { s3: moto.s3() };
    let store = S3Store::new(moto.s3());
    // Where moto differs from S3 the suite pins what moto does, so a moto
    // upgrade that closes a gap shows up here:
    // - moto ignores the ETag in DeleteObjects and deletes unconditionally
    //   (S3 Express honours it: PreconditionFailed, or NoSuchKey when the
    //   key is gone);
    // - moto ignores `x-amz-copy-source-if-match` on CopyObject and
    //   UploadPartCopy and copies the current version (S3 answers 412).
    let caps = Capabilities {
        fenced_delete: false,
        copy_if_match: false,
    };
    run_all(&store, &seed, caps).await;
}

/// How long an operation through the proxy may take before the SDK gives
/// up; moto answers in milliseconds.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// moto with the fault proxy in front, an `S3Store` whose SDK client talks
/// to the proxy without retries (so each injected fault reaches the
/// classification), a source bucket holding `KEYS` and a directory bucket.
struct Faulty {
    _moto: Moto,
    proxy: FaultProxy,
    store: S3Store,
    src: String,
    dir: String,
    etags: Vec<String>,
}

const KEYS: [&str; 3] = ["f/1", "f/2", "f/3"];

impl Faulty {
    async fn start() -> Self {
        let moto = Moto::start();
        let direct = moto.s3();
        let src = unique("src");
        let dir = unique_directory_bucket();
        create_bucket(&direct, &src).await;
        create_directory_bucket(&direct, &dir).await;
        let mut etags = Vec::new();
        for k in KEYS {
            put(&direct, &src, k, k.as_bytes().to_vec()).await;
            let head = direct
                .head_object()
                .bucket(&src)
                .key(k)
                .send()
                .await
                .unwrap();
            etags.push(head.e_tag().unwrap().to_owned());
        }
        let proxy = FaultProxy::start(&moto.endpoint).await;
        let conf = s3_client(&proxy.endpoint)
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .build();
        let store = S3Store::new(aws_sdk_s3::Client::from_conf(conf));
        Self {
            _moto: moto,
            proxy,
            store,
            src,
            dir,
            etags,
        }
    }

    fn copy(&self, i: usize) -> CopyRequest<'_> {
        CopyRequest {
            source_bucket: &self.src,
            source_key: KEYS[i],
            source_etag: &self.etags[i],
            dest_bucket: &self.dir,
            dest_key: KEYS[i],
        }
    }

    /// Injects `fault` into the next copy and returns what that copy gave.
    async fn copy_once_with(&self, fault: Fault) -> Result<(), StoreError> {
        let before = self.proxy.injected();
        self.proxy
            .add(Rule::times(Match::copy_object(), fault.clone(), 1));
        let got = self.store.copy_object(&self.copy(0)).await.map(|_| ());
        assert_eq!(
            self.proxy.injected(),
            before + 1,
            "the proxy injected {fault:?} into the copy"
        );
        got
    }
}

#[tokio::test]
async fn error_answers_are_classified() {
    let f = Faulty::start().await;

    let slow = f
        .copy_once_with(Fault::status(503, "SlowDown"))
        .await
        .unwrap_err();
    assert!(
        matches!(slow, StoreError::Throttled(_)) && slow.is_retryable(),
        "503 SlowDown is Throttled and retryable, got {slow:?}"
    );
    f.store
        .copy_object(&f.copy(0))
        .await
        .unwrap_or_else(|e| panic!("the same copy succeeds once the fault is used up: {e}"));

    let internal = f
        .copy_once_with(Fault::status(500, "InternalError"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &internal,
            StoreError::Service { code, status: 500, .. } if code == "InternalError"
        ) && internal.is_retryable(),
        "500 InternalError is a retryable Service error, got {internal:?}"
    );

    let denied = f
        .copy_once_with(Fault::status(403, "AccessDenied"))
        .await
        .unwrap_err();
    assert!(
        matches!(denied, StoreError::AccessDenied(_)) && !denied.is_retryable(),
        "403 AccessDenied is AccessDenied and not retryable, got {denied:?}"
    );

    f.proxy.add(Rule::times(
        Match::list_objects().bucket(f.src.as_str()),
        Fault::status(404, "NoSuchBucket"),
        1,
    ));
    let missing = f
        .store
        .list_page(&f.src, &ListQuery::prefix("f/"), None)
        .await
        .unwrap_err();
    assert_eq!(
        missing,
        StoreError::NoSuchBucket(f.src.clone()),
        "404 NoSuchBucket on a listing is NoSuchBucket"
    );
    assert!(!missing.is_retryable(), "NoSuchBucket is not retryable");
}

#[tokio::test]
async fn no_answer_is_a_retryable_transport_error() {
    let f = Faulty::start().await;

    f.proxy.add(Rule::times(
        Match::list_objects().bucket(f.src.as_str()),
        Fault::Hang,
        1,
    ));
    let started = Instant::now();
    let hung = f
        .store
        .list_page(&f.src, &ListQuery::prefix("f/"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(hung, StoreError::Transport(_)) && hung.is_retryable(),
        "a hang that hits the operation timeout is a retryable Transport error, got {hung:?}"
    );
    assert!(
        started.elapsed() < OPERATION_TIMEOUT * 5,
        "the operation timeout ends a hang, took {:?}",
        started.elapsed()
    );

    // The copy happens upstream but its answer never arrives.
    let lost = f.copy_once_with(Fault::LoseReply).await.unwrap_err();
    assert!(
        matches!(lost, StoreError::Transport(_)) && lost.is_retryable(),
        "a lost reply is a retryable Transport error, got {lost:?}"
    );
    let landed = f
        .store
        .head_object(&f.dir, KEYS[0])
        .await
        .unwrap_or_else(|e| panic!("the copy whose reply was lost still landed: {e}"));
    assert_eq!(landed.size, KEYS[0].len() as u64);
}

#[tokio::test]
async fn an_empty_truncated_page_is_followed() {
    let f = Faulty::start().await;
    f.proxy.add(Rule::times(
        Match::list_objects().bucket(f.src.as_str()),
        Fault::EmptyTruncatedPage,
        1,
    ));
    let empty = f
        .store
        .list_page(&f.src, &ListQuery::prefix("f/"), None)
        .await
        .unwrap();
    assert!(
        empty.objects.is_empty(),
        "the injected page has no objects: {empty:?}"
    );
    let next = empty
        .next
        .unwrap_or_else(|| panic!("an empty page that is truncated still has a next token"));
    let rest = f
        .store
        .list_page(&f.src, &ListQuery::prefix("f/"), Some(next))
        .await
        .unwrap();
    let keys: Vec<&str> = rest.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, KEYS, "following the token lists the rest");
    assert_eq!(rest.next, None, "and that is the last page");
}

/// A multipart copy first reads the source's headers (HeadObject), then
/// starts the upload: a throttled, hung or refused read starts nothing and
/// is classified like any other call (retried or not), and a source gone
/// since its listing is NoSuchKey, not retried.
#[tokio::test]
async fn a_multipart_copy_heads_the_source_first_and_a_failed_head_starts_no_upload() {
    let f = Faulty::start().await;
    let no_upload = |why: String| {
        let (store, dir) = (&f.store, f.dir.clone());
        async move {
            let open = store.unfinished_uploads(&dir, KEYS[0]).await.unwrap();
            assert!(
                open.is_empty(),
                "{why}: no upload was started, found {open:?}"
            );
        }
    };
    for (fault, retryable) in [
        (Fault::status(503, "SlowDown"), true),
        (Fault::Hang, true),
        (Fault::status(403, "AccessDenied"), false),
    ] {
        f.proxy.add(Rule::times(
            Match::head_object().bucket(f.src.as_str()),
            fault.clone(),
            1,
        ));
        let e = f.store.create_multipart(&f.copy(0)).await.unwrap_err();
        assert_eq!(e.is_retryable(), retryable, "{fault:?} gave {e:?}");
        no_upload(format!("{fault:?}")).await;
    }
    // Once the faults are used up the same call starts the upload.
    let id = f.store.create_multipart(&f.copy(0)).await.unwrap();
    f.store.abort_multipart(&f.dir, KEYS[0], &id).await.unwrap();

    moto_delete(&f, KEYS[1]).await;
    let gone = f.store.create_multipart(&f.copy(1)).await.unwrap_err();
    assert!(
        matches!(gone, StoreError::NoSuchKey(_)) && !gone.is_retryable(),
        "a source deleted since its listing is NoSuchKey, got {gone:?}"
    );
}

async fn moto_delete(f: &Faulty, key: &str) {
    s3_client(&f.proxy.endpoint)
        .delete_object()
        .bucket(&f.src)
        .key(key)
        .send()
        .await
        .unwrap();
}
