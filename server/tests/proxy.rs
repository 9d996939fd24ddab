//! The HTTP fault-injection proxy (`testing::proxy`) against a real moto:
//! pass-through, and each fault as the AWS SDK sees it.

// Tests: a failed step must stop the test with its message.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::{
    create_bucket, create_directory_bucket, get, list_keys, put, s3_client, unique,
    unique_directory_bucket, Moto,
};

/// An SDK client for `endpoint` that never retries (so each fault reaches the
/// caller as is), with an operation timeout if given.
fn client(endpoint: &str, timeout: Option<Duration>) -> aws_sdk_s3::Client {
    let mut conf = s3_client(endpoint)
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled());
    if let Some(t) = timeout {
        conf = conf.timeout_config(TimeoutConfig::builder().operation_timeout(t).build());
    }
    aws_sdk_s3::Client::from_conf(conf.build())
}

/// The HTTP status of the reply behind an SDK error, if there was one.
fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn delete(keys: &[&str]) -> Delete {
    Delete::builder()
        .set_objects(Some(
            keys.iter()
                .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
                .collect(),
        ))
        .build()
        .unwrap()
}

async fn copy(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    from: &str,
    to: &str,
) -> Result<(), SdkError<aws_sdk_s3::operation::copy_object::CopyObjectError>> {
    s3.copy_object()
        .bucket(bucket)
        .key(to)
        .copy_source(format!("{bucket}/{from}"))
        .send()
        .await
        .map(drop)
}

#[tokio::test]
async fn proxy_passes_requests_through() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("proxy");
    let big = vec![7u8; 300_000];

    create_bucket(&s3, &bucket).await;
    put(&s3, &bucket, "a/one", b"hello".to_vec()).await;
    put(&s3, &bucket, "a/two with space+plus", big.clone()).await;
    assert_eq!(
        list_keys(&s3, &bucket, "a/").await,
        ["a/one", "a/two with space+plus"]
    );
    copy(&s3, &bucket, "a/one", "b/copy").await.unwrap();
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key("b/copy")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(5));
    assert_eq!(get(&s3, &bucket, "b/copy").await, b"hello");
    assert_eq!(get(&s3, &bucket, "a/two with space+plus").await, big);

    // A one-part multipart copy: UploadPartCopy is not CopyObject.
    let upload = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("b/multi")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let part = s3
        .upload_part_copy()
        .bucket(&bucket)
        .key("b/multi")
        .upload_id(upload_id)
        .part_number(1)
        .copy_source(format!("{bucket}/a/one"))
        .send()
        .await
        .unwrap();
    let etag = part.copy_part_result().and_then(|r| r.e_tag()).unwrap();
    s3.complete_multipart_upload()
        .bucket(&bucket)
        .key("b/multi")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().e_tag(etag).part_number(1).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get(&s3, &bucket, "b/multi").await, b"hello");

    s3.head_bucket().bucket(&bucket).send().await.unwrap();
    s3.delete_object()
        .bucket(&bucket)
        .key("b/copy")
        .send()
        .await
        .unwrap();
    s3.delete_objects()
        .bucket(&bucket)
        .delete(delete(&["a/one"]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        list_keys(&moto.s3(), &bucket, "").await,
        ["a/two with space+plus", "b/multi"]
    );

    let count = |m: Match| proxy.count(&m);
    assert_eq!(count(Match::copy_object()), 1);
    assert_eq!(count(Match::upload_part_copy()), 1);
    assert_eq!(count(Match::create_multipart_upload()), 1);
    assert_eq!(count(Match::complete_multipart_upload()), 1);
    assert_eq!(count(Match::put_object()), 2);
    assert_eq!(count(Match::get_object()), 3);
    assert_eq!(count(Match::head_object()), 1);
    assert_eq!(count(Match::head_bucket()), 1);
    assert_eq!(count(Match::list_objects()), 1);
    assert_eq!(count(Match::delete_objects()), 1);
    assert_eq!(count(Match::create_session()), 0);
    assert_eq!(count(Match::copy_object().bucket("some-other-bucket")), 0);
    assert_eq!(count(Match::copy_object().bucket(&bucket)), 1);
    // + CreateBucket and DeleteObject.
    assert_eq!(count(Match::any()), 15);
    assert_eq!(proxy.injected(), 0);
}

/// For a directory bucket the SDK first calls CreateSession
/// (`GET /bucket?session`): only `any` and `create_session` count it, so a
/// rule on a named operation never faults the session.
#[tokio::test]
async fn proxy_directory_bucket_session_is_not_a_named_operation() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, None);
    let src = unique("proxy");
    let dir = unique_directory_bucket();
    create_bucket(&s3, &src).await;
    create_directory_bucket(&s3, &dir).await;
    put(&s3, &src, "k", b"x".to_vec()).await;

    // Fault every named operation except the ones this test needs; the
    // session must still go through.
    for m in [
        Match::head_bucket(),
        Match::upload_part_copy(),
        Match::delete_objects(),
        Match::put_object().bucket("nothing-here"),
    ] {
        proxy.add(Rule::always(m, Fault::status(500, "InternalError")));
    }
    copy_between(&s3, &src, &dir, "k").await;
    assert_eq!(list_keys(&s3, &dir, "").await, ["k"]);
    assert_eq!(get(&s3, &dir, "k").await, b"x");

    let sessions = proxy.count(&Match::create_session().bucket(&dir));
    assert!(sessions >= 1, "no CreateSession seen");
    assert_eq!(proxy.count(&Match::copy_object().bucket(&dir)), 1);
    assert_eq!(proxy.count(&Match::list_objects().bucket(&dir)), 1);
    assert_eq!(proxy.count(&Match::get_object().bucket(&dir)), 1);
    assert_eq!(proxy.count(&Match::head_bucket()), 0);
    let named = [
        Match::copy_object(),
        Match::upload_part_copy(),
        Match::put_object(),
        Match::get_object(),
        Match::head_object(),
        Match::delete_objects(),
        Match::list_objects(),
        Match::head_bucket(),
        Match::create_multipart_upload(),
        Match::complete_multipart_upload(),
        Match::abort_multipart_upload(),
    ];
    let named_on_dir: u64 = named
        .iter()
        .map(|m| proxy.count(&m.clone().bucket(&dir)))
        .sum();
    // CreateBucket, the copy, the listing, the get: only the sessions are
    // left for `any`.
    assert_eq!(named_on_dir, 3);
    assert_eq!(
        proxy.count(&Match::any().bucket(&dir)),
        named_on_dir + 1 + sessions
    );
    assert_eq!(proxy.injected(), 0);
}

async fn copy_between(s3: &aws_sdk_s3::Client, from_bucket: &str, to_bucket: &str, key: &str) {
    s3.copy_object()
        .bucket(to_bucket)
        .key(key)
        .copy_source(format!("{from_bucket}/{key}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("copy {from_bucket}/{key} to {to_bucket}: {e:?}"));
}

#[tokio::test]
async fn proxy_lose_reply_on_delete_objects_applies_it() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("proxy");
    create_bucket(&s3, &bucket).await;
    put(&s3, &bucket, "x", b"1".to_vec()).await;
    put(&s3, &bucket, "y", b"2".to_vec()).await;

    proxy.add(Rule::times(Match::delete_objects(), Fault::LoseReply, 1));
    let err = s3
        .delete_objects()
        .bucket(&bucket)
        .delete(delete(&["x", "y"]))
        .send()
        .await
        .unwrap_err();
    eprintln!("SDK error for a lost reply: {err:?}");
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "{err:?}"
    );
    // The effect was applied all the same.
    assert!(list_keys(&moto.s3(), &bucket, "").await.is_empty());
    assert_eq!(proxy.injected(), 1);
    assert_eq!(proxy.count(&Match::delete_objects()), 1);

    // The rule is used up, and the proxy (and the SDK's pool) carry on.
    s3.delete_objects()
        .bucket(&bucket)
        .delete(delete(&["x", "y"]))
        .send()
        .await
        .unwrap();
    assert_eq!(proxy.count(&Match::delete_objects()), 2);
    assert_eq!(proxy.injected(), 1);
}

#[tokio::test]
async fn proxy_hang_times_out_and_keeps_serving() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, Some(Duration::from_millis(500)));
    let bucket = unique("proxy");
    create_bucket(&s3, &bucket).await;

    proxy.add(Rule::times(Match::head_bucket(), Fault::Hang, 2));
    let start = Instant::now();
    let err = s3.head_bucket().bucket(&bucket).send().await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A second hung request stays hung while others are served.
    let slow = client(&proxy.endpoint, Some(Duration::from_secs(3)));
    let hung = tokio::spawn({
        let bucket = bucket.clone();
        async move {
            let start = Instant::now();
            let res = slow.head_bucket().bucket(&bucket).send().await;
            (res.map(drop), start.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No timeout here: on a loaded machine moto itself may take longer than
    // the short one above, and this part is about being served at all.
    let others = client(&proxy.endpoint, None);
    put(&others, &bucket, "k", b"v".to_vec()).await;
    assert_eq!(list_keys(&others, &bucket, "").await, ["k"]);
    others.head_bucket().bucket(&bucket).send().await.unwrap();
    assert!(!hung.is_finished(), "the hung request was answered");
    let (res, took) = hung.await.unwrap();
    assert!(matches!(res, Err(SdkError::TimeoutError(_))), "{res:?}");
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert_eq!(proxy.injected(), 2);
    assert_eq!(proxy.count(&Match::head_bucket()), 3);
}

#[tokio::test]
async fn proxy_delay_then_forwards() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("proxy");
    create_bucket(&s3, &bucket).await;

    proxy.add(Rule::times(
        Match::put_object(),
        Fault::Delay(Duration::from_millis(300)),
        1,
    ));
    let start = Instant::now();
    put(&s3, &bucket, "k", b"v".to_vec()).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(get(&moto.s3(), &bucket, "k").await, b"v");
    assert_eq!(proxy.injected(), 1);
}

#[tokio::test]
async fn proxy_empty_truncated_page_resumes_listing() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("proxy");
    create_bucket(&moto.s3(), &bucket).await;
    let keys: Vec<String> = (0..7).map(|i| format!("k{i:02}")).collect();
    for k in &keys {
        put(&moto.s3(), &bucket, k, b"v".to_vec()).await;
    }

    // The first page is empty but truncated; following tokens lists every
    // key once.
    proxy.add(Rule::times(
        Match::list_objects(),
        Fault::EmptyTruncatedPage,
        1,
    ));
    let first = s3
        .list_objects_v2()
        .bucket(&bucket)
        .max_keys(3)
        .send()
        .await
        .unwrap();
    assert_eq!(first.key_count(), Some(0));
    assert!(first.contents().is_empty());
    assert_eq!(first.is_truncated(), Some(true));
    assert_eq!(first.name(), Some(bucket.as_str()));
    let mut token = first.next_continuation_token().map(str::to_owned);
    assert!(token.is_some());
    let mut listed = Vec::new();
    let mut pages = 0;
    while let Some(t) = token {
        let page = s3
            .list_objects_v2()
            .bucket(&bucket)
            .max_keys(3)
            .continuation_token(t)
            .send()
            .await
            .unwrap();
        pages += 1;
        listed.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        token = page
            .is_truncated()
            .unwrap_or(false)
            .then(|| page.next_continuation_token().unwrap().to_owned());
    }
    assert_eq!(listed, keys);
    assert_eq!(pages, 3);
    assert_eq!(proxy.injected(), 1);

    // Mid-listing, with the SDK's paginator: every second page is empty, so
    // empty pages carry real moto tokens too.
    proxy.clear();
    proxy.add(Rule::every(
        Match::list_objects().bucket(&bucket),
        Fault::EmptyTruncatedPage,
        2,
    ));
    let before = proxy.count(&Match::list_objects());
    let mut paginator = s3
        .list_objects_v2()
        .bucket(&bucket)
        .max_keys(2)
        .into_paginator()
        .send();
    let mut listed = Vec::new();
    let mut sizes = Vec::new();
    while let Some(page) = paginator.next().await {
        let page = page.unwrap();
        sizes.push(page.contents().len());
        listed.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
    }
    assert_eq!(listed, keys);
    assert_eq!(sizes, [2, 0, 2, 0, 2, 0, 1]);
    assert_eq!(proxy.count(&Match::list_objects()) - before, 7);
    assert_eq!(proxy.injected(), 4);
}

#[tokio::test]
async fn proxy_status_slowdown_on_copy_object_counts_and_every() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("proxy");
    create_bucket(&s3, &bucket).await;
    put(&s3, &bucket, "src", b"v".to_vec()).await;

    proxy.add(Rule::times(
        Match::copy_object(),
        Fault::status(503, "SlowDown"),
        1,
    ));
    let err = copy(&s3, &bucket, "src", "dst").await.unwrap_err();
    assert_eq!(err.code(), Some("SlowDown"), "{err:?}");
    assert_eq!(err.message(), Some("injected by FaultProxy"));
    assert_eq!(status(&err), Some(503));
    // Not forwarded: the copy did not happen.
    assert!(moto
        .s3()
        .head_object()
        .bucket(&bucket)
        .key("dst")
        .send()
        .await
        .is_err());
    assert_eq!(proxy.count(&Match::copy_object()), 1);
    assert_eq!(proxy.injected(), 1);
    copy(&s3, &bucket, "src", "dst").await.unwrap();
    assert_eq!(proxy.count(&Match::copy_object()), 2);
    assert_eq!(proxy.injected(), 1);

    proxy.clear();
    proxy.add(Rule::every(
        Match::copy_object(),
        Fault::status(503, "SlowDown"),
        3,
    ));
    let mut failed = Vec::new();
    for i in 0..9 {
        if let Err(e) = copy(&s3, &bucket, "src", &format!("dst{i}")).await {
            assert_eq!(e.code(), Some("SlowDown"), "{e:?}");
            failed.push(i);
        }
    }
    assert_eq!(failed, [2, 5, 8]);
    assert_eq!(proxy.count(&Match::copy_object()), 11);
    assert_eq!(proxy.injected(), 4);
    assert_eq!(
        list_keys(&moto.s3(), &bucket, "dst").await,
        ["dst", "dst0", "dst1", "dst3", "dst4", "dst6", "dst7"]
    );
}

/// Other S3 errors, and how the SDK reports an error on a HEAD request,
/// whose reply has no body to carry the code.
#[tokio::test]
async fn proxy_status_other_codes() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("proxy");
    create_bucket(&s3, &bucket).await;
    put(&s3, &bucket, "k", b"v".to_vec()).await;

    proxy.add(Rule::times(
        Match::list_objects(),
        Fault::status(404, "NoSuchBucket"),
        1,
    ));
    proxy.add(Rule::times(
        Match::get_object(),
        Fault::status(403, "AccessDenied"),
        1,
    ));
    proxy.add(Rule::times(
        Match::delete_objects(),
        Fault::status(500, "InternalError"),
        1,
    ));
    proxy.add(Rule::times(
        Match::head_bucket(),
        Fault::status(404, "NoSuchBucket"),
        1,
    ));

    let err = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), status(&err)),
        (Some("NoSuchBucket"), Some(404))
    );
    assert!(err.into_service_error().is_no_such_bucket());

    let err = s3
        .get_object()
        .bucket(&bucket)
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), status(&err)),
        (Some("AccessDenied"), Some(403))
    );

    let err = s3
        .delete_objects()
        .bucket(&bucket)
        .delete(delete(&["k"]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), status(&err)),
        (Some("InternalError"), Some(500))
    );

    let err = s3.head_bucket().bucket(&bucket).send().await.unwrap_err();
    eprintln!("SDK error for an injected 404 on HEAD: {err:?}");
    assert_eq!(status(&err), Some(404));
    assert_eq!(err.code(), Some("NotFound"));
    assert!(err.into_service_error().is_not_found());

    assert_eq!(proxy.injected(), 4);
    // All used up: everything works again, and nothing was applied.
    assert_eq!(list_keys(&s3, &bucket, "").await, ["k"]);
    assert_eq!(get(&s3, &bucket, "k").await, b"v");
    s3.head_bucket().bucket(&bucket).send().await.unwrap();
}

#[tokio::test]
async fn in_copy_cost_mode_copies_are_charged_their_bytes_learned_from_listings_and_ranges() {
    use expresscache_server::testing::proxy::CopyRates;
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    // Fast enough not to slow the test: the charge is counted either way.
    proxy.charge_copies(CopyRates {
        per_request: 1e12,
        aggregate: 1e12,
    });
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("cost");
    create_bucket(&s3, &bucket).await;
    // Straight to moto: the proxy has not seen this object's size.
    let direct = client(&moto.endpoint, None);
    put(&direct, &bucket, "src/listed", vec![1u8; 300_000]).await;
    put(&direct, &bucket, "src/unseen", vec![2u8; 1_000]).await;
    copy(&s3, &bucket, "src/unseen", "dst/unseen")
        .await
        .unwrap();
    assert_eq!(
        proxy.copy_charges().uncharged,
        1,
        "a copy of a size never seen"
    );
    // A listing through the proxy tells it both sizes.
    assert_eq!(list_keys(&s3, &bucket, "src/").await.len(), 2);
    copy(&s3, &bucket, "src/listed", "dst/listed")
        .await
        .unwrap();
    let upload = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("dst/part")
        .send()
        .await
        .unwrap();
    s3.upload_part_copy()
        .bucket(&bucket)
        .key("dst/part")
        .upload_id(upload.upload_id().unwrap())
        .part_number(1)
        .copy_source(format!("{bucket}/src/listed"))
        .copy_source_range("bytes=0-99999")
        .send()
        .await
        .unwrap();
    let c = proxy.copy_charges();
    assert_eq!(
        (c.requests, c.bytes, c.uncharged),
        (2, 300_000 + 100_000, 1)
    );
}

#[tokio::test]
async fn virtual_part_copies_land_the_whole_source_with_one_copy_upstream() {
    use expresscache_server::testing::proxy::CopyRates;
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    proxy.charge_copies(CopyRates {
        per_request: 1e12,
        aggregate: 1e12,
    });
    proxy.virtualize_part_copies(s3_client(&moto.endpoint));
    let s3 = client(&proxy.endpoint, None);
    let bucket = unique("vparts");
    create_bucket(&s3, &bucket).await;
    let body: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    put(&s3, &bucket, "src/big", body.clone()).await;
    let upload = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("dst/big")
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    let mut done = Vec::new();
    for (n, range) in [(1, "bytes=0-5242879"), (2, "bytes=5242880-5999999")] {
        let part = s3
            .upload_part_copy()
            .bucket(&bucket)
            .key("dst/big")
            .upload_id(id)
            .part_number(n)
            .copy_source(format!("{bucket}/src/big"))
            .copy_source_range(range)
            .send()
            .await
            .unwrap();
        let etag = part.copy_part_result().unwrap().e_tag().unwrap().to_owned();
        done.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
    }
    assert_eq!(
        proxy.count(&Match::upload_part_copy()),
        2,
        "both parts reached the proxy"
    );
    s3.complete_multipart_upload()
        .bucket(&bucket)
        .key("dst/big")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        get(&s3, &bucket, "dst/big").await,
        body,
        "the same bytes landed"
    );
    let open = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(open.uploads().is_empty(), "the upstream upload was aborted");
    assert_eq!(
        proxy.copy_charges().bytes,
        6_000_000,
        "and charged as S3 would"
    );
}
