//! Limits on what callers can take: running warms (the rest wait QUEUED),
//! a full queue refused with a retry hint, request size, and bounded work
//! for GetStatus.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{finish, objects, outcome, rpc_error, Fixture, Stream};
use expresscache_client::{pb, Outcome};
use expresscache_server::store::Op;
use expresscache_server::testing::list_keys;
use tonic::Code;
use tonic_types::StatusExt;

/// Objects under `m/` and `n/`, copies slowed so a warm runs for a while,
/// and a server that runs `max_running` warms and queues `max_queued`.
async fn fixture(max_running: usize, max_queued: usize) -> Fixture {
    let mut data = objects("m/", 10);
    data.extend(objects("n/", 10));
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new_tuned(&refs, |d| {
        d.warm.engine.max_concurrency = 2;
        d.ops.max_running = max_running;
        d.ops.max_queued = max_queued;
    })
    .await;
    fx.server.store.delay(Op::Copy, Duration::from_millis(60));
    fx
}

async fn start(fx: &Fixture, prefix: &str, request_id: Option<&str>) -> (Stream, pb::WarmProgress) {
    let mut req = fx.request(&[prefix]);
    if let Some(id) = request_id {
        req = req.request_id(id);
    }
    let mut stream = fx.client().await.warm(req).await.unwrap();
    let first = stream.message().await.unwrap().expect("a first message");
    (stream, first)
}

fn phase(p: &pb::WarmProgress) -> pb::Phase {
    pb::Phase::try_from(p.phase).unwrap()
}

#[tokio::test]
async fn a_warm_past_the_running_limit_waits_queued_and_starts_when_a_slot_frees() {
    let fx = fixture(1, 4).await;
    let (first, _) = start(&fx, "m/", None).await;
    let (mut second, opening) = start(&fx, "n/", None).await;
    assert_eq!(phase(&opening), pb::Phase::Queued);

    let first_done = tokio::spawn(finish(first));
    // The queued warm copies nothing until the running one has ended.
    let mut last = opening;
    while phase(&last) == pb::Phase::Queued {
        assert_eq!(last.counters.unwrap_or_default().objects_copied, 0);
        last = second.message().await.unwrap().expect("more progress");
    }
    // The slot frees when the first warm's work ends (its final record
    // may still be on its way to its caller).
    assert_eq!(
        list_keys(&fx.s3, &fx.dir, "m/").await.len(),
        10,
        "the second warm left QUEUED while the first still copied"
    );
    let first = first_done.await.unwrap();
    assert_eq!(outcome(&first), pb::Outcome::Succeeded);
    let second = finish(second).await;
    assert_eq!(outcome(&second), pb::Outcome::Succeeded);
    assert_eq!(second.counters.unwrap_or_default().objects_copied, 10);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "").await.len(), 20);
}

#[tokio::test]
async fn a_full_queue_refuses_new_warms_with_a_retry_hint_but_lets_a_caller_reattach() {
    let fx = fixture(1, 0).await;
    let (first, opening) = start(&fx, "m/", Some("job-1")).await;

    let refused = fx
        .client()
        .await
        .warm(fx.request(&["n/"]))
        .await
        .map(|_| ())
        .map_err(rpc_error)
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-running-warms"),
        "{refused:?}"
    );
    assert!(refused.get_details_retry_info().is_some(), "retry hint");
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "SERVER_BUSY"
    );

    // Resubmitting the running request attaches to it: no new work.
    let (again, reopened) = start(&fx, "m/", Some("job-1")).await;
    assert_eq!(reopened.operation_id, opening.operation_id);
    assert_eq!(outcome(&finish(again).await), pb::Outcome::Succeeded);
    assert_eq!(outcome(&finish(first).await), pb::Outcome::Succeeded);
    assert!(list_keys(&fx.s3, &fx.dir, "n/").await.is_empty());
}

#[tokio::test]
async fn a_queued_warm_can_be_cancelled_and_copies_nothing() {
    let fx = fixture(1, 4).await;
    let (first, _) = start(&fx, "m/", None).await;
    let (second, opening) = start(&fx, "n/", None).await;
    assert_eq!(phase(&opening), pb::Phase::Queued);

    fx.client()
        .await
        .cancel(&opening.operation_id)
        .await
        .unwrap();
    let second = finish(second).await;
    assert_eq!(outcome(&second), pb::Outcome::Cancelled);
    assert_eq!(outcome(&finish(first).await), pb::Outcome::Succeeded);
    assert!(list_keys(&fx.s3, &fx.dir, "n/").await.is_empty());
    let status = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["n/".into()])
        .await
        .unwrap();
    assert!(
        status[0].leases.is_empty(),
        "a cancelled queued warm leased nothing"
    );
}

#[tokio::test]
async fn a_request_above_the_size_limit_is_resource_exhausted_with_the_sizes() {
    let fx = Fixture::new_tuned(&[("a/1", b"x")], |d| d.max_request_size = 300).await;
    let prefixes: Vec<String> = (0..20).map(|i| format!("prefix-number-{i:02}/")).collect();
    let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let e = fx
        .client()
        .await
        .warm(fx.request(&refs))
        .await
        .map(|_| ())
        .map_err(rpc_error)
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "REQUEST_TOO_LARGE");
    assert_eq!(info.metadata["limit"], "300");
    assert!(e.message().contains("--max-request-size"), "{e:?}");
    assert!(
        e.get_details_retry_info().is_none(),
        "waiting does not help"
    );
    // A small request still goes through.
    let ok = fx.warm(fx.request(&["a/"])).await;
    assert_eq!(ok.outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn get_status_counts_at_most_its_limit_per_call_and_says_so() {
    let mut data = objects("m/", 8);
    data.extend(objects("n/", 3));
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new_tuned(&refs, |d| d.status_count_limit = 5).await;
    fx.warm(fx.request(&["m/", "n/"])).await;

    let status = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["n/".into(), "m/".into()])
        .await
        .unwrap();
    // n/ fits within the limit: exact. m/ gets what is left: a lower bound.
    assert_eq!(
        (status[0].cached_objects, status[0].counts_truncated),
        (3, false)
    );
    assert!(status[1].counts_truncated, "{status:?}");
    assert!(status[1].cached_objects >= 2 && status[1].cached_objects < 8);

    let alone = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["n/".into()])
        .await
        .unwrap();
    assert_eq!((alone[0].cached_objects, alone[0].cached_bytes), (3, 48));
    assert!(!alone[0].counts_truncated);
}

#[tokio::test]
async fn a_principal_at_its_limit_is_refused_while_others_still_warm() {
    use expresscache_client::{Client, Credentials, Endpoints};
    use expresscache_server::auth::{load_tokens, token_line_hash, Authenticator};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "team-a {}\nteam-b {}\n",
            token_line_hash("tok-a"),
            token_line_hash("tok-b")
        ),
    )
    .unwrap();
    let registered = load_tokens(&tokens).unwrap();
    let mut data = objects("m/", 10);
    data.extend(objects("n/", 10));
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new_tuned(&refs, |d| {
        d.warm.engine.max_concurrency = 2;
        d.ops.max_per_principal = 1;
        d.auth = Arc::new(Authenticator::new(registered, false));
    })
    .await;
    fx.server.store.delay(Op::Copy, Duration::from_millis(60));
    let client = |token: &str| {
        let endpoints = Endpoints::parse(&fx.server.endpoint)
            .unwrap()
            .with_credentials(Credentials::default().with_token(token).unwrap());
        Client::connect_to(Arc::new(endpoints))
    };
    let mut a = client("tok-a").await.unwrap();
    let mut running = a.warm(fx.request(&["m/"])).await.unwrap();
    running.message().await.unwrap().expect("started");

    let refused = a
        .warm(fx.request(&["n/"]))
        .await
        .map(|_| ())
        .map_err(rpc_error)
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "PRINCIPAL_LIMIT"
    );
    assert!(refused.get_details_retry_info().is_some());

    let other = client("tok-b")
        .await
        .unwrap()
        .warm_and_wait(fx.request(&["n/"]), |_| {})
        .await
        .unwrap();
    assert_eq!(
        other.outcome,
        Outcome::Succeeded,
        "another principal is not held up"
    );
    assert_eq!(outcome(&finish(running).await), pb::Outcome::Succeeded);
}
