//! End-to-end: the real gRPC service, in process, copying through the AWS SDK
//! into a moto S3 server the test starts on a free port.

mod common;

use std::time::Duration;

use common::{as_refs, data_set, rpc_error, Fixture};
use expresscache_client::{pb, Outcome, WarmRequest};
use expresscache_server::testing::{get, list_keys, put};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn first_warm_copies_every_object_with_identical_content() {
    let objects = data_set(25);
    let mut all = as_refs(&objects);
    all.push(("other/skip.bin", b"not requested"));
    let fx = Fixture::new(&all).await;

    let (report, updates) = fx.warm_counting(fx.request(&["data/"])).await;

    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert!(updates.len() >= 2, "progress is streamed: {updates:?}");
    assert!(updates
        .iter()
        .all(|u| u.operation_id == report.operation_id));
    let c = &report.counters;
    assert_eq!(
        (
            c.objects_listed,
            c.objects_hit,
            c.objects_copied,
            c.objects_failed
        ),
        (25, 0, 25, 0)
    );
    let total: u64 = objects.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(c.bytes_copied, total);
    assert_eq!(
        list_keys(&fx.s3, &fx.dir, "").await.len(),
        25,
        "only data/ is copied"
    );
    for (k, body) in &objects {
        assert_eq!(&get(&fx.s3, &fx.dir, k).await, body, "content of {k}");
    }
}

#[tokio::test]
async fn second_warm_copies_nothing_and_leaves_destination_untouched() {
    let objects = data_set(20);
    let fx = Fixture::new(&as_refs(&objects)).await;
    fx.warm(fx.request(&["data/"])).await;
    let before = fx.dest_versions().await;
    // LastModified has one-second resolution: make a rewrite visible.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let report = fx.warm(fx.request(&["data/"])).await;

    assert_eq!(report.outcome, Outcome::Succeeded);
    let c = &report.counters;
    assert_eq!(
        (
            c.objects_listed,
            c.objects_hit,
            c.objects_to_copy,
            c.objects_copied
        ),
        (20, 20, 0, 0)
    );
    assert_eq!(
        fx.dest_versions().await,
        before,
        "destination objects were rewritten"
    );
}

#[tokio::test]
async fn changed_source_objects_are_recopied_and_only_they() {
    let objects = data_set(10);
    let fx = Fixture::new(&as_refs(&objects)).await;
    fx.warm(fx.request(&[""])).await;
    put(
        &fx.s3,
        &fx.src,
        "data/part-0003.bin",
        b"new content".to_vec(),
    )
    .await;
    put(
        &fx.s3,
        &fx.src,
        "data/part-0007.bin",
        b"also new, and longer".to_vec(),
    )
    .await;
    put(&fx.s3, &fx.src, "data/zz-added.bin", b"added".to_vec()).await;

    let report = fx.warm(fx.request(&[""])).await;

    let c = &report.counters;
    assert_eq!(
        (c.objects_listed, c.objects_hit, c.objects_copied),
        (11, 8, 3)
    );
    assert_eq!(
        get(&fx.s3, &fx.dir, "data/part-0003.bin").await,
        b"new content"
    );
    assert_eq!(
        get(&fx.s3, &fx.dir, "data/part-0007.bin").await,
        b"also new, and longer"
    );
    assert_eq!(get(&fx.s3, &fx.dir, "data/zz-added.bin").await, b"added");
}

#[tokio::test]
async fn force_copy_recopies_everything() {
    let objects = data_set(12);
    let fx = Fixture::new(&as_refs(&objects)).await;
    fx.warm(fx.request(&["data/"])).await;

    let report = fx.warm(fx.request(&["data/"]).force_copy(true)).await;

    let c = &report.counters;
    assert_eq!((c.objects_hit, c.objects_copied), (0, 12));
    assert_eq!(report.outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn evict_removes_objects_and_entries() {
    let mut objects = data_set(6);
    objects.push(("keep/a.bin".into(), b"keep".to_vec()));
    let fx = Fixture::new(&as_refs(&objects)).await;
    fx.warm(fx.request(&["data/", "keep/"])).await;
    let mut client = fx.client().await;

    let resp = client
        .evict(&fx.dir, vec!["data/".into()], false)
        .await
        .expect("evict");

    assert_eq!(resp.objects_deleted, 6);
    assert_eq!(resp.leases_ended, 1);
    assert!(resp.failures.is_empty());
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await, ["keep/a.bin"]);
    let status = client
        .prefix_status(&fx.dir, vec!["data/".into(), "keep/".into()])
        .await
        .expect("status");
    assert_eq!((status[0].cached_objects, status[0].leases.len()), (0, 0));
    assert_eq!((status[1].cached_objects, status[1].leases.len()), (1, 1));
    // With the entries gone, the next warm copies again.
    let report = fx.warm(fx.request(&["data/"])).await;
    assert_eq!(report.counters.objects_copied, 6);
}

#[tokio::test]
async fn odd_key_names_round_trip() {
    let long = format!("odd/{}.bin", "k".repeat(1000));
    let keys = [
        "odd/with space.txt",
        "odd/quote\"double.txt",
        "odd/quote'single.txt",
        "odd/plus+sign.txt",
        "odd/percent%20literal.txt",
        "odd/ünïcødé/日本語/файл.txt",
        "odd/emoji 🚀.txt",
        "odd/amp&eq=q?.txt",
        "odd/tilde~hash#.txt",
        long.as_str(),
    ];
    let objects: Vec<(&str, &[u8])> = keys.iter().map(|k| (*k, k.as_bytes())).collect();
    let fx = Fixture::new(&objects).await;

    let report = fx.warm(fx.request(&["odd/"])).await;

    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(report.counters.objects_copied, keys.len() as u64);
    for k in keys {
        assert_eq!(
            get(&fx.s3, &fx.dir, k).await,
            k.as_bytes(),
            "content of {k:?}"
        );
    }
    let again = fx.warm(fx.request(&["odd/"])).await;
    assert_eq!(
        again.counters.objects_hit,
        keys.len() as u64,
        "odd keys must hit"
    );
}

#[tokio::test]
async fn listing_and_index_merge_across_pages() {
    // More than one ListObjectsV2 page (1,000 keys) exercises the paged merge.
    let fx = Fixture::new(&[]).await;
    let n = 1100;
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..n {
        let (s3, src) = (fx.s3.clone(), fx.src.clone());
        puts.spawn(async move { put(&s3, &src, &format!("many/{i:05}"), vec![b'x'; 16]).await });
        if puts.len() >= 32 {
            puts.join_next().await;
        }
    }
    puts.join_all().await;
    fx.warm(fx.request(&["many/"])).await;
    put(&fx.s3, &fx.src, "many/01050", b"changed".to_vec()).await;

    let report = fx.warm(fx.request(&["many/"])).await;

    let c = &report.counters;
    assert_eq!(
        (c.objects_listed, c.objects_hit, c.objects_copied),
        (n, n - 1, 1)
    );
}

#[tokio::test]
async fn overlapping_prefixes_in_one_request_list_each_key_once() {
    let objects = data_set(5);
    let fx = Fixture::new(&as_refs(&objects)).await;
    let report = fx.warm(fx.request(&["data/", ""])).await;
    assert_eq!(
        (
            report.counters.objects_listed,
            report.counters.objects_copied
        ),
        (5, 5)
    );
}

#[tokio::test]
async fn bad_requests_get_precise_codes_and_field_details() {
    let fx = Fixture::new(&[("data/a", b"a")]).await;
    let mut client = fx.client().await;

    // The client crate validates too; send raw messages to test the server.
    let mut raw = expresscache::proto::v1::cache_service_client::CacheServiceClient::connect(
        fx.server.endpoint.clone(),
    )
    .await
    .expect("connect");
    let status = raw
        .warm_cache(pb::WarmCacheRequest {
            bucket: "Not_A_Bucket".into(),
            prefixes: vec!["data".into(), "x/".into(), "x/".into()],
            directory_bucket: "plain-bucket".into(),
            ttl: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            force_copy: false,
            request_id: String::new(),
            destination_prefix: String::new(),
            max_staleness: Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
            dry_run: false,
            batch_operations: false,
            allow_empty: false,
            include: vec![],
            exclude: vec![],
            keys: vec![],
        })
        .await
        .expect_err("invalid request accepted");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "bucket",
            "prefixes[0]",
            "prefixes[2]",
            "directory_bucket",
            "ttl",
            "max_staleness"
        ]
    );

    let too_long = raw
        .warm_cache(pb::WarmCacheRequest {
            bucket: fx.src.clone(),
            prefixes: vec!["data/".into()],
            directory_bucket: fx.dir.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 400 * 24 * 3600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("ttl above the maximum accepted");
    assert_eq!(too_long.code(), Code::InvalidArgument);

    let empty_status = raw
        .get_status(pb::GetStatusRequest { target: None })
        .await
        .expect_err("status without target accepted");
    assert_eq!(empty_status.code(), Code::InvalidArgument);

    let missing_src = rpc_error(
        client
            .warm(WarmRequest::new("no-such-source-bucket", &fx.dir).prefix("data/"))
            .await
            .expect_err("missing source accepted"),
    );
    assert_eq!(missing_src.code(), Code::NotFound);
    let info = missing_src
        .get_details_resource_info()
        .expect("ResourceInfo");
    assert_eq!(info.resource_name, "no-such-source-bucket");

    let missing_dir = rpc_error(
        client
            .warm(WarmRequest::new(&fx.src, "absent--use1-az4--x-s3").prefix("data/"))
            .await
            .expect_err("missing directory bucket accepted"),
    );
    assert_eq!(missing_dir.code(), Code::NotFound);

    let unknown_op = rpc_error(client.operation_status("no-such-op").await.unwrap_err());
    assert_eq!(unknown_op.code(), Code::NotFound);

    let evict_bad = rpc_error(
        client
            .evict(&fx.dir, vec!["no-slash".into()], false)
            .await
            .unwrap_err(),
    );
    assert_eq!(evict_bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn request_id_makes_submission_idempotent() {
    let fx = Fixture::new(&[("data/a", b"a"), ("data/b", b"b")]).await;
    let req = fx.request(&["data/"]).request_id("job-42");

    let first = fx.warm(req.clone()).await;
    let second = fx.warm(req.clone()).await;

    assert_eq!(first.operation_id, second.operation_id);
    assert_eq!(
        second.counters.objects_copied, 2,
        "the same operation's report"
    );
    let conflict = rpc_error(
        fx.client()
            .await
            .warm(req.force_copy(true))
            .await
            .expect_err("different request under the same id accepted"),
    );
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let status = fx
        .client()
        .await
        .operation_status(&first.operation_id)
        .await
        .expect("status");
    assert_eq!(
        status.progress.expect("progress").outcome,
        Outcome::Succeeded as i32
    );
}

#[tokio::test]
async fn a_refused_bucket_is_permission_denied_naming_the_bucket() {
    let fx = Fixture::new(&[("data/a", b"a")]).await;
    fx.server.store.fail(
        expresscache_server::store::Op::CheckBucket,
        Some(&fx.src),
        expresscache_server::store::StoreError::AccessDenied("Access Denied".into()),
        None,
    );
    let status = rpc_error(
        fx.client()
            .await
            .warm(fx.request(&["data/"]))
            .await
            .expect_err("a refused bucket was accepted"),
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(info.resource_name, fx.src);
    assert!(status.message().contains("bucket"), "{}", status.message());
}
