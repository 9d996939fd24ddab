//! Dry runs (`WarmCacheRequest.dry_run`): the plan of a warm, per prefix
//! and priced, against moto through the real server; nothing is copied,
//! leased or recorded, and a failure is reported, not planned around.

// Whole warms run in these tests: their futures nest deep.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use common::{objects, rpc_error, Fixture};
use expresscache_client::{pb, ClientError, Outcome};
use expresscache_server::index::{OpFilter, OperationLog};
use expresscache_server::testing::{list_keys, put};

/// `a/` (25 objects of 16 bytes) warmed; `b/` (5) not.
async fn half_warm() -> Fixture {
    let mut data = objects("a/", 25);
    data.extend(objects("b/", 5));
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    // The fleet heartbeat (an index write) only at the start.
    let fx = Fixture::new_tuned(&refs, |d| {
        d.ops.adopt_every = std::time::Duration::from_secs(3600);
    })
    .await;
    let report = fx.warm(fx.request(&["a/"])).await;
    assert_eq!(report.outcome, Outcome::Succeeded);
    fx
}

fn prefix<'a>(plan: &'a pb::WarmPlan, p: &str) -> &'a pb::PrefixPlan {
    plan.prefixes.iter().find(|x| x.prefix == p).unwrap()
}

#[tokio::test]
async fn a_dry_run_plans_per_prefix_and_prices_both_ways_without_changing_anything() {
    let fx = half_warm().await;
    // A source change after the warm: the plan copies it again.
    put(&fx.s3, &fx.src, "a/007", b"changed, and longer".to_vec()).await;
    let ops_before = fx
        .server
        .index
        .inner()
        .list_operations(OpFilter::All, None, 100)
        .await
        .unwrap()
        .len();
    let writes_before = fx.server.index.writes();
    let copies_before = fx.server.store.calls.copy.load(Ordering::Relaxed);

    let mut updates = 0;
    let plan = fx
        .client()
        .await
        .plan(fx.request(&["a/", "b/"]), |_| updates += 1)
        .await
        .unwrap();

    let a = prefix(&plan, "a/");
    assert_eq!(
        (
            a.objects_to_copy,
            a.bytes_to_copy,
            a.objects_cached,
            a.bytes_cached
        ),
        (1, 19, 24, 24 * 16),
        "{a:?}"
    );
    let b = prefix(&plan, "b/");
    assert_eq!(
        (b.objects_to_copy, b.bytes_to_copy, b.objects_cached),
        (5, 5 * 16, 0),
        "{b:?}"
    );
    assert_eq!(plan.list_requests, 2, "one page per prefix");
    assert_eq!(plan.large_objects, 0);
    // The engine: 2 LISTs and 6 copies at the default prices.
    let engine = plan.engine.unwrap();
    let expected = 2.0 / 1000.0 * 0.005 + 6.0 / 1000.0 * 0.001_13;
    assert!((engine.usd - expected).abs() < 1e-12, "{engine:?}");
    // A Batch job adds its fee, 6 objects' fee and two PUTs.
    let batch = plan.batch.unwrap();
    let expected_batch = expected + 0.25 + 6.0 / 1e6 + 2.0 / 1000.0 * 0.005;
    assert!((batch.usd - expected_batch).abs() < 1e-12, "{batch:?}");
    assert!(batch.lines.iter().any(|l| l.item == "Batch Operations job"));
    assert!(
        plan.estimated_duration.is_some(),
        "the warm of a/ measured the copy rate"
    );
    assert!(plan.prices.contains("us-east-1"), "{}", plan.prices);
    assert!(updates >= 1, "the final message at least");

    assert!(
        list_keys(&fx.s3, &fx.dir, "b/").await.is_empty(),
        "nothing copied"
    );
    assert_eq!(
        fx.server.store.calls.copy.load(Ordering::Relaxed),
        copies_before
    );
    assert_eq!(
        fx.server.index.writes(),
        writes_before,
        "no lease, claim or record written"
    );
    assert_eq!(
        fx.server
            .index
            .inner()
            .list_operations(OpFilter::All, None, 100)
            .await
            .unwrap()
            .len(),
        ops_before,
        "no operation recorded"
    );
}

#[tokio::test]
async fn a_dry_run_whose_listing_fails_reports_the_failure_instead_of_a_plan() {
    let fx = half_warm().await;
    fx.deny_listings();
    let err = fx
        .client()
        .await
        .plan(fx.request(&["b/"]), |_| {})
        .await
        .unwrap_err();
    match err {
        ClientError::PlanFailed(msg) => assert!(msg.contains("AccessDenied"), "{msg}"),
        other => panic!("expected PlanFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dry_run_whose_index_read_fails_reports_the_failure() {
    let fx = half_warm().await;
    fx.server.index.fail("records", 100);
    let err = fx
        .client()
        .await
        .plan(fx.request(&["a/"]), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::PlanFailed(ref m) if m.contains("index") || m.contains("unavailable")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_dry_run_is_validated_like_a_warm() {
    let fx = half_warm().await;
    // The client crate validates too; send raw messages to test the server.
    let mut raw = expresscache::proto::v1::cache_service_client::CacheServiceClient::connect(
        fx.server.endpoint.clone(),
    )
    .await
    .unwrap();
    let status = raw
        .warm_cache(pb::WarmCacheRequest {
            bucket: "Not_A_Bucket".into(),
            prefixes: vec!["a".into()],
            directory_bucket: fx.dir.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut client = fx.client().await;
    let missing =
        expresscache_client::WarmRequest::new("no-such-bucket-here", &fx.dir).prefix("a/");
    let status = rpc_error(client.plan(missing, |_| {}).await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}
