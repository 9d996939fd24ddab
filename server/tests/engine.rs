//! The copy engine against S3 (moto): multipart copies of large objects,
//! and no incomplete upload left behind when one fails.

mod common;

use std::sync::atomic::Ordering;

use common::Fixture;
use expresscache_client::Outcome;
use expresscache_server::store::{Op, StoreError};
use expresscache_server::testing::{get, list_keys};

const MIB: usize = 1024 * 1024;

fn big_body() -> Vec<u8> {
    (0..12 * MIB + 3).map(|i| (i % 251) as u8).collect()
}

async fn open_uploads(fx: &Fixture) -> usize {
    fx.s3
        .list_multipart_uploads()
        .bucket(&fx.dir)
        .send()
        .await
        .expect("list uploads")
        .uploads()
        .len()
}

async fn fixture() -> (Fixture, Vec<u8>) {
    let body = big_body();
    let fx = Fixture::new_tuned(
        &[("big/blob.bin", &body), ("big/small.txt", b"small")],
        |d| {
            d.warm.engine.multipart_threshold = 5 * MIB as u64;
            d.warm.engine.part_size = 5 * MIB as u64;
        },
    )
    .await;
    (fx, body)
}

#[tokio::test]
async fn objects_above_the_threshold_are_copied_in_parts() {
    let (fx, body) = fixture().await;

    let report = fx.warm(fx.request(&["big/"])).await;

    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(report.counters.objects_copied, 2);
    assert_eq!(
        fx.server.store.calls.part_copy.load(Ordering::Relaxed),
        3,
        "12 MiB in 5 MiB parts"
    );
    assert_eq!(
        fx.server.store.calls.copy.load(Ordering::Relaxed),
        1,
        "the small one is a CopyObject"
    );
    assert_eq!(get(&fx.s3, &fx.dir, "big/blob.bin").await, body);
    assert_eq!(open_uploads(&fx).await, 0);
    let again = fx.warm(fx.request(&["big/"])).await;
    assert_eq!(
        again.counters.objects_hit, 2,
        "a multipart copy is cached like any other"
    );
}

#[tokio::test]
async fn a_failed_part_fails_the_key_and_leaves_no_incomplete_upload() {
    let (fx, _) = fixture().await;
    fx.server.store.fail(
        Op::PartCopy,
        None,
        StoreError::AccessDenied("injected".into()),
        None,
    );

    let report = fx.warm(fx.request(&["big/"])).await;

    assert_eq!(report.outcome, Outcome::PartiallyFailed);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(
        (
            report.failures[0].key.as_str(),
            report.failures[0].code.as_str()
        ),
        ("big/blob.bin", "AccessDenied")
    );
    assert_eq!(open_uploads(&fx).await, 0, "the upload was aborted");
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await, ["big/small.txt"]);
}

#[tokio::test]
async fn a_multipart_copy_keeps_the_sources_content_headers_and_metadata() {
    let (fx, body) = fixture().await;
    // The source again, with what a CopyObject would carry over.
    fx.s3
        .put_object()
        .bucket(&fx.src)
        .key("big/blob.bin")
        .body(body.clone().into())
        .content_type("application/x-hdf5")
        .cache_control("max-age=60")
        .metadata("sample", "NA12878")
        .send()
        .await
        .unwrap();

    let report = fx.warm(fx.request(&["big/"])).await;

    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert!(fx.server.store.calls.part_copy.load(Ordering::Relaxed) > 1);
    let head = fx
        .s3
        .head_object()
        .bucket(&fx.dir)
        .key("big/blob.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/x-hdf5"));
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("sample"))
            .map(String::as_str),
        Some("NA12878")
    );
}
