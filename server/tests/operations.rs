//! Operations outlive their calls: a dropped stream does not stop a warm,
//! anyone can watch, cancel and list operations.

// Whole warms run in these tests: their futures nest deep.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)]

mod common;

use expresscache_server::index::Records;
use std::time::Duration;

use common::{as_refs, rpc_error, Fixture};
use expresscache_client::{pb, Client, Outcome};
use expresscache_server::store::Op;
use expresscache_server::testing::list_keys;
use tonic::Code;

fn many(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("m/{i:03}"), vec![b'x'; 64]))
        .collect()
}

async fn slow_fixture(n: usize, delay_ms: u64) -> Fixture {
    let data = many(n);
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    // Few copies in flight, so a cancel lands while most are still to do.
    let fx = Fixture::new_tuned(&refs, |d| d.warm.engine.max_concurrency = 4).await;
    fx.server
        .store
        .delay(Op::Copy, Duration::from_millis(delay_ms));
    fx
}

/// Starts a warm and returns its id after the first progress message; the
/// stream is dropped.
async fn start_and_drop(fx: &Fixture) -> String {
    let mut client = fx.client().await;
    let mut stream = client.warm(fx.request(&["m/"])).await.unwrap();
    let first = stream.message().await.unwrap().expect("a first message");
    first.operation_id
}

#[tokio::test]
async fn a_dropped_stream_does_not_stop_the_warm_and_a_watcher_sees_it_finish() {
    let fx = slow_fixture(40, 40).await;
    let id = start_and_drop(&fx).await;

    let mut watcher = Client::connect(fx.server.endpoint.clone()).await.unwrap();
    let mut seen = 0;
    let report = watcher.watch_and_wait(&id, |_| seen += 1).await.unwrap();

    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(report.counters.objects_copied, 40);
    assert!(
        seen >= 2,
        "the watcher got the current state and then updates"
    );
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 40);
    // A finished operation can still be watched: one final message.
    let mut again = 0;
    let replay = watcher.watch_and_wait(&id, |_| again += 1).await.unwrap();
    assert_eq!((again, replay.outcome), (1, Outcome::Succeeded));
}

#[tokio::test]
async fn cancel_mid_warm_ends_cancelled_and_leaves_index_and_bucket_consistent() {
    let fx = slow_fixture(80, 60).await;
    let mut client = fx.client().await;
    let mut stream = client.warm(fx.request(&["m/"])).await.unwrap();
    let mut id = String::new();
    while let Some(p) = stream.message().await.unwrap() {
        id.clone_from(&p.operation_id);
        if p.counters.unwrap_or_default().objects_copied >= 5 {
            break;
        }
    }

    let status = fx.client().await.cancel(&id).await.unwrap();

    let last = status.progress.unwrap();
    assert_eq!(last.outcome, Outcome::Cancelled as i32);
    let copied = last.counters.unwrap().objects_copied;
    assert!(
        (5..80).contains(&copied),
        "stopped promptly: {copied} copied"
    );
    // The original stream ends with the same final message.
    let mut final_seen = None;
    while let Some(p) = stream.message().await.unwrap() {
        final_seen = Some(p);
    }
    assert_eq!(final_seen.unwrap().outcome, Outcome::Cancelled as i32);
    // Every recorded entry's object is there, every copied object is
    // recorded, and no claim is left behind.
    let in_bucket = list_keys(&fx.s3, &fx.dir, "").await;
    let records = {
        use expresscache_server::index::KeyRange;
        fx.server
            .index
            .records(&fx.dir, &KeyRange::prefix(""), 1000)
            .await
            .unwrap()
    };
    let recorded: Vec<String> = records
        .iter()
        .filter(|r| r.entry.is_some())
        .map(|r| r.key.clone())
        .collect();
    assert!(
        records.iter().all(|r| r.claim.is_none()),
        "claims left: {records:?}"
    );
    assert_eq!(recorded, in_bucket);
    assert_eq!(recorded.len() as u64, copied);
    // Cancelling again is harmless and reports the same end.
    let again = fx.client().await.cancel(&id).await.unwrap();
    assert_eq!(again.progress.unwrap().outcome, Outcome::Cancelled as i32);
    // A new warm copies the rest.
    let rest = fx.warm(fx.request(&["m/"])).await;
    assert_eq!(
        (rest.counters.objects_hit, rest.counters.objects_copied),
        (copied, 80 - copied)
    );
}

#[tokio::test]
async fn operations_are_listed_newest_first_in_pages_with_a_state_filter() {
    let fx = slow_fixture(3, 0).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = fx
            .warm(fx.request(&["m/"]).request_id(format!("list-{i}")))
            .await;
        ids.push(r.operation_id);
        // Creation times order the list; the test clock only moves on demand.
        fx.server.clock.advance(1);
    }
    let mut client = fx.client().await;
    let first = client
        .list_operations(pb::OperationFilter::Unspecified, 2, "")
        .await
        .unwrap();
    assert_eq!(first.operations.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_operations(
            pb::OperationFilter::Unspecified,
            2,
            first.next_page_token.clone(),
        )
        .await
        .unwrap();
    let listed: Vec<String> = first
        .operations
        .iter()
        .chain(&second.operations)
        .map(|o| o.operation_id.clone())
        .collect();
    ids.reverse();
    assert_eq!(listed, ids, "newest first, every operation once");
    assert!(second.next_page_token.is_empty());
    let running = client
        .list_operations(pb::OperationFilter::Running, 10, "")
        .await
        .unwrap();
    assert!(running.operations.is_empty());
    let finished = client
        .list_operations(pb::OperationFilter::Finished, 10, "")
        .await
        .unwrap();
    assert_eq!(finished.operations.len(), 3);
    assert_eq!(
        finished.operations[0].request.as_ref().unwrap().request_id,
        "list-2"
    );
}

#[tokio::test]
async fn unknown_operations_and_bad_pages_get_precise_codes() {
    let fx = slow_fixture(1, 0).await;
    let mut client = fx.client().await;
    assert_eq!(
        rpc_error(client.watch("nope").await.unwrap_err()).code(),
        Code::NotFound
    );
    assert_eq!(
        rpc_error(client.cancel("nope").await.unwrap_err()).code(),
        Code::NotFound
    );
    assert_eq!(
        rpc_error(client.cancel("").await.unwrap_err()).code(),
        Code::InvalidArgument
    );
    let bad = client
        .list_operations(pb::OperationFilter::Unspecified, 5000, "junk")
        .await
        .unwrap_err();
    assert_eq!(rpc_error(bad).code(), Code::InvalidArgument);
}

/// An Evict whose caller hangs up midway still finishes: its deletions are
/// recorded, so no entry is left claiming an object it deleted (issue case
/// 1: it used to run inline in the handler and stop with the call).
#[tokio::test]
async fn an_evict_whose_caller_hangs_up_still_records_what_it_deleted() {
    let data = many(30);
    let fx = Fixture::new(&as_refs(&data)).await;
    fx.warm(fx.request(&["m/"])).await;
    fx.server
        .store
        .delay(Op::Delete, Duration::from_millis(500));
    let mut client = fx.client().await;
    let call = client.evict(fx.dir.clone(), vec!["m/".into()], false);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err(),
        "the caller gave up before the delete answered"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = fx
            .client()
            .await
            .prefix_status(&fx.dir, vec!["m/".into()])
            .await
            .unwrap();
        if status[0].cached_objects == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the eviction did not finish: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(list_keys(&fx.s3, &fx.dir, "").await.is_empty());
    let again = fx.warm(fx.request(&["m/"])).await;
    assert_eq!(again.counters.objects_copied, 30);
}
