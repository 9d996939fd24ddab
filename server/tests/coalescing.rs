//! Job arrays: identical warms arriving together join the one running
//! instead of listing again, and every guarantee holds for each of them.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{finish, objects, outcome, Fixture, Stream};
use expresscache_client::{pb, Outcome};
use expresscache_server::core::clock::Clock;
use expresscache_server::index::{OperationLog, ReplicaRegistry};
use expresscache_server::store::Op;
use expresscache_server::testing::{get, list_keys, put, TestIndex, TestStore};

/// `n` objects under `m/`, copies slowed so a warm runs for a while.
async fn fixture(n: usize, delay_ms: u64) -> Fixture {
    let data = objects("m/", n);
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new_tuned(&refs, |d| d.warm.engine.max_concurrency = 4).await;
    fx.server
        .store
        .delay(Op::Copy, Duration::from_millis(delay_ms));
    fx
}

/// Starts a warm of `prefixes` and reads until `until` holds.
async fn start_until(
    fx: &Fixture,
    prefixes: &[&str],
    until: impl Fn(&pb::WarmProgress) -> bool,
) -> (Stream, pb::WarmProgress) {
    let mut stream = fx.client().await.warm(fx.request(prefixes)).await.unwrap();
    loop {
        let p = stream.message().await.unwrap().expect("more progress");
        if until(&p) {
            return (stream, p);
        }
    }
}

#[tokio::test]
async fn a_warm_that_arrives_mid_listing_leads_the_next_round_and_sees_changes_and_later_ones_join_it(
) {
    let fx = fixture(40, 40).await;
    let (leader, first) = start_until(&fx, &["m/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 5
    })
    .await;
    // The source changes after the running warm listed it.
    put(&fx.s3, &fx.src, "m/003", b"changed".to_vec()).await;
    put(&fx.s3, &fx.src, "m/new", b"added".to_vec()).await;
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);

    // Too late to join (that warm's listing predates this request): it
    // waits for that round, then lists itself.
    let (next, opening) = start_until(&fx, &["m/"], |_| true).await;
    assert!(opening.joined_operation_id.is_empty(), "{opening:?}");
    // A warm arriving while that one waits joins it.
    let (joiner, joined_first) = start_until(&fx, &["m/"], |p| {
        p.phase != pb::Phase::Queued as i32 || !p.joined_operation_id.is_empty()
    })
    .await;
    assert_eq!(
        joined_first.joined_operation_id, opening.operation_id,
        "{joined_first:?}"
    );

    assert_eq!(outcome(&finish(leader).await), pb::Outcome::Succeeded);
    let next = finish(next).await;
    assert_eq!(outcome(&next), pb::Outcome::Succeeded, "{next:?}");
    let joined = finish(joiner).await;
    assert_eq!(outcome(&joined), pb::Outcome::Succeeded, "{joined:?}");
    assert_eq!(joined.joined_operation_id, opening.operation_id);
    // Present and current for both: the change and the addition landed.
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 41);
    assert_eq!(get(&fx.s3, &fx.dir, "m/003").await, b"changed");
    assert_eq!(get(&fx.s3, &fx.dir, "m/new").await, b"added");
    assert_eq!(
        fx.server.store.calls.list.load(Ordering::Relaxed) - lists,
        1,
        "one listing for the round, none for its joiner"
    );
    // The joiner's own lease stands for the data.
    let status = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["m/".into()])
        .await
        .unwrap();
    assert!(!status[0].leases.is_empty());
    let _ = first;
}

#[tokio::test]
async fn cancelling_the_first_caller_leaves_the_others_to_finish_the_work() {
    let fx = fixture(60, 40).await;
    let (leader, first) = start_until(&fx, &["m/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 3
    })
    .await;
    let (a, a_first) = start_until(&fx, &["m/"], |_| true).await;
    let (b, _) = start_until(&fx, &["m/"], |p| !p.joined_operation_id.is_empty()).await;

    fx.client().await.cancel(&first.operation_id).await.unwrap();
    assert_eq!(outcome(&finish(leader).await), pb::Outcome::Cancelled);
    let (a, b) = tokio::join!(finish(a), finish(b));
    assert_eq!(outcome(&a), pb::Outcome::Succeeded, "{a:?}");
    assert_eq!(outcome(&b), pb::Outcome::Succeeded, "{b:?}");
    assert_eq!(b.joined_operation_id, a_first.operation_id);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 60);
}

#[tokio::test]
async fn a_joiner_whose_leader_fails_fails_with_the_reason() {
    // One warm runs at a time: the leader waits (joinable) behind another.
    let mut data = objects("m/", 10);
    data.extend(objects("n/", 20));
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new_tuned(&refs, |d| {
        d.warm.engine.max_concurrency = 2;
        d.ops.max_running = 1;
    })
    .await;
    fx.server.store.delay(Op::Copy, Duration::from_millis(40));
    let (blocker, _) = start_until(&fx, &["n/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 1
    })
    .await;
    // From now on every listing is refused.
    fx.deny_listings();
    let (leader, led_first) = start_until(&fx, &["m/"], |_| true).await;
    let (joiner, joined_first) =
        start_until(&fx, &["m/"], |p| !p.joined_operation_id.is_empty()).await;
    assert_eq!(joined_first.joined_operation_id, led_first.operation_id);
    assert_eq!(outcome(&finish(blocker).await), pb::Outcome::Succeeded);
    let led = finish(leader).await;
    assert_eq!(outcome(&led), pb::Outcome::Failed, "{led:?}");
    let joined = finish(joiner).await;
    assert_eq!(outcome(&joined), pb::Outcome::Failed, "{joined:?}");
    assert!(
        joined.error.contains(&led_first.operation_id) && joined.error.contains("AccessDenied"),
        "the leader's reason, named: {}",
        joined.error
    );
}

/// `m/` (10), `n/` (20) and `p/` (10) objects; one warm runs at a time,
/// so a warm waits, joinable, behind a running one.
async fn one_at_a_time() -> Fixture {
    one_at_a_time_tuned(|_| {}).await
}

async fn one_at_a_time_tuned(
    tune: impl FnOnce(&mut expresscache_server::server::Deps<TestStore, TestIndex>),
) -> Fixture {
    let mut data = objects("m/", 10);
    data.extend(objects("n/", 20));
    data.extend(objects("p/", 10));
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new_tuned(&refs, |d| {
        d.warm.engine.max_concurrency = 2;
        d.ops.max_running = 1;
        tune(d);
    })
    .await;
    fx.server.store.delay(Op::Copy, Duration::from_millis(40));
    fx
}

#[tokio::test]
async fn a_partly_covered_warm_joins_for_those_prefixes_and_warms_only_the_rest() {
    let fx = one_at_a_time().await;
    let (blocker, _) = start_until(&fx, &["n/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 1
    })
    .await;
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);
    let (leader, led_first) = start_until(&fx, &["m/"], |_| true).await;
    let (both, both_first) =
        start_until(&fx, &["m/", "p/"], |p| !p.joined_operation_id.is_empty()).await;
    assert_eq!(
        both_first.joined_operation_id, led_first.operation_id,
        "it says which warm does part of its work"
    );
    assert_eq!(outcome(&finish(blocker).await), pb::Outcome::Succeeded);
    assert_eq!(outcome(&finish(leader).await), pb::Outcome::Succeeded);
    let both = finish(both).await;
    assert_eq!(outcome(&both), pb::Outcome::Succeeded, "{both:?}");
    assert_eq!(both.joined_operation_id, led_first.operation_id);
    let c = both.counters.unwrap_or_default();
    assert_eq!(
        (c.objects_listed, c.objects_copied),
        (20, 20),
        "its report counts both parts: {c:?}"
    );
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 10);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "p/").await.len(), 10);
    assert_eq!(
        fx.server.store.calls.list.load(Ordering::Relaxed) - lists,
        2,
        "m/ listed once (by the warm it joined), p/ once (by itself)"
    );
    // Its own leases stand for both parts.
    let status = fx
        .client()
        .await
        .prefix_status(&fx.dir, vec!["m/".into(), "p/".into()])
        .await
        .unwrap();
    assert!(status.iter().all(|s| !s.leases.is_empty()), "{status:?}");
}

#[tokio::test]
async fn a_partly_joined_warm_that_is_cancelled_leaves_its_part_to_the_joiner() {
    let fx = one_at_a_time().await;
    let (blocker, _) = start_until(&fx, &["n/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 1
    })
    .await;
    let (leader, led_first) = start_until(&fx, &["m/"], |_| true).await;
    let (both, _) = start_until(&fx, &["m/", "p/"], |p| !p.joined_operation_id.is_empty()).await;
    fx.client()
        .await
        .cancel(&led_first.operation_id)
        .await
        .unwrap();
    assert_eq!(outcome(&finish(leader).await), pb::Outcome::Cancelled);
    assert_eq!(outcome(&finish(blocker).await), pb::Outcome::Succeeded);
    let both = finish(both).await;
    assert_eq!(outcome(&both), pb::Outcome::Succeeded, "{both:?}");
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 10);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "p/").await.len(), 10);
}

#[tokio::test]
async fn a_queued_leader_is_offered_in_the_log_and_lists_only_once_the_offer_is_withdrawn() {
    let fx = one_at_a_time_tuned(|d| d.ops.adopt_every = Duration::from_millis(50)).await;
    // Another replica shares the index: queued leaders are offered to it.
    let index = fx.server.index.inner();
    let far = fx.server.clock.now() + 3_600_000;
    index.heartbeat("peer", far).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (blocker, _) = start_until(&fx, &["n/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 1
    })
    .await;
    let (leader, led_first) = start_until(&fx, &["m/"], |_| true).await;
    let t0 = std::time::Instant::now();
    while !index
        .get_operation(&led_first.operation_id)
        .await
        .unwrap()
        .and_then(|r| r.run)
        .is_some_and(|r| r.joinable)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the queued leader was never offered in the log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first writes that would withdraw the offer fail: listing now
    // could answer a warm that joined from elsewhere after the listing
    // began, and failing would fail the warms that joined it. It waits,
    // queued, retrying.
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);
    fx.server.index.fail("withdraw_join", 3);
    assert_eq!(outcome(&finish(blocker).await), pb::Outcome::Succeeded);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        fx.server.store.calls.list.load(Ordering::Relaxed),
        lists,
        "nothing listed while the withdrawal fails"
    );
    let led = finish(leader).await;
    assert_eq!(outcome(&led), pb::Outcome::Succeeded, "{led:?}");
    assert_eq!(
        fx.server.store.calls.list.load(Ordering::Relaxed),
        lists + 1,
        "listed once the withdrawal was recorded"
    );
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 10);
    index.leave("peer").await.unwrap();
}

#[tokio::test]
async fn lost_replies_of_the_offer_and_its_withdrawal_neither_hide_nor_skip_them() {
    let fx = one_at_a_time_tuned(|d| d.ops.adopt_every = Duration::from_millis(50)).await;
    let index = fx.server.index.inner();
    let far = fx.server.clock.now() + 3_600_000;
    index.heartbeat("peer", far).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (blocker, _) = start_until(&fx, &["n/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 1
    })
    .await;
    // Both writes take effect; their replies are lost on the way back.
    fx.server.index.lose_reply("offer_join", 1);
    fx.server.index.lose_reply("withdraw_join", 1);
    let (leader, led_first) = start_until(&fx, &["m/"], |_| true).await;
    let joinable = || async {
        index
            .get_operation(&led_first.operation_id)
            .await
            .unwrap()
            .and_then(|r| r.run)
            .is_some_and(|r| r.joinable)
    };
    let t0 = std::time::Instant::now();
    while !joinable().await {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the offer whose reply was lost is in the log all the same"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);
    assert_eq!(outcome(&finish(blocker).await), pb::Outcome::Succeeded);
    let led = finish(leader).await;
    assert_eq!(outcome(&led), pb::Outcome::Succeeded, "{led:?}");
    assert_eq!(
        fx.server.store.calls.list.load(Ordering::Relaxed),
        lists + 1,
        "listed once, after the withdrawal (retried) was recorded"
    );
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 10);
    index.leave("peer").await.unwrap();
}

#[tokio::test]
async fn a_final_state_whose_reply_is_lost_still_reaches_the_caller_as_recorded() {
    let fx = one_at_a_time().await;
    // Recorded, then the reply lost: the runner cannot tell; the caller's
    // stream reads the log and gets the state that was recorded.
    fx.server.index.lose_reply("finish_operation", 1);
    let (stream, _) = start_until(&fx, &["m/"], |_| true).await;
    let last = finish(stream).await;
    assert_eq!(outcome(&last), pb::Outcome::Succeeded, "{last:?}");
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 10);
    let again = fx.warm(fx.request(&["m/"])).await;
    assert_eq!(again.counters.objects_hit, 10, "{again:?}");
}

#[tokio::test]
async fn a_hundred_identical_warms_list_the_source_at_most_twice_per_page() {
    // Copies slow enough that every submission arrives while the first
    // round still runs, on a loaded machine too.
    let fx = fixture(50, 60).await;
    let mut one = fx.client().await;
    // A bucket found to exist is not asked again for a while: the herd
    // below costs no HeadBucket for the source once one warm checked it.
    let first = one
        // An empty prefix: it only has the bucket checked (allowed empty).
        .warm_and_wait(fx.request(&["x/"]).allow_empty(true), |_| {})
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::Succeeded);
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);
    // Page size 1000: one page per prefix. The first warm lists; those
    // arriving after its listing began form one more round, listing once.
    let calls = futures::future::join_all((0..100).map(|_| {
        let fx = &fx;
        async move {
            fx.client()
                .await
                .warm_and_wait(fx.request(&["m/"]), |_| {})
                .await
                .unwrap()
        }
    }))
    .await;
    assert!(calls.iter().all(|r| r.outcome == Outcome::Succeeded));
    let listed = fx.server.store.calls.list.load(Ordering::Relaxed) - lists;
    let joined = calls
        .iter()
        .filter(|r| r.joined_operation_id.is_some())
        .count();
    assert!((1..=2).contains(&listed), "{listed} listings");
    assert_eq!(
        joined,
        100 - listed as usize,
        "every other warm joined a round"
    );
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 50);
    // A warm that forces copies never joins.
    let forced = one
        .warm_and_wait(fx.request(&["m/"]).force_copy(true), |_| {})
        .await
        .unwrap();
    assert!(forced.joined_operation_id.is_none());
}

/// A cold warm of `m/` to completion; its report.
async fn warm_once(fx: &Fixture, staleness: Duration) -> expresscache_client::WarmReport {
    fx.client()
        .await
        .warm_and_wait(fx.request(&["m/"]).max_staleness(staleness), |_| {})
        .await
        .unwrap()
}

#[tokio::test]
async fn within_max_staleness_a_recent_success_answers_without_listing() {
    let fx = fixture(20, 0).await;
    let first = warm_once(&fx, Duration::ZERO).await;
    assert_eq!(first.outcome, Outcome::Succeeded);
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);

    let fresh = warm_once(&fx, Duration::from_secs(60)).await;
    assert_eq!(fresh.outcome, Outcome::Succeeded);
    assert_eq!(
        fresh.fresh_from_operation_id.as_deref(),
        Some(first.operation_id.as_str())
    );
    assert_eq!(fresh.counters.objects_hit, 20, "all of it, as found then");
    assert_eq!(
        fx.server.store.calls.list.load(Ordering::Relaxed),
        lists,
        "nothing listed"
    );
    assert!(
        fresh.lease_expires_at.is_some(),
        "its own leases were written"
    );

    // Without the window it lists (and finds everything cached).
    let listed = warm_once(&fx, Duration::ZERO).await;
    assert!(listed.fresh_from_operation_id.is_none());
    assert_eq!(listed.counters.objects_hit, 20);
    assert!(fx.server.store.calls.list.load(Ordering::Relaxed) > lists);

    // Past the window: the recent warms are too old; it lists.
    fx.server.clock.advance(120_000);
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);
    let old = warm_once(&fx, Duration::from_secs(60)).await;
    assert!(old.fresh_from_operation_id.is_none(), "{old:?}");
    assert!(fx.server.store.calls.list.load(Ordering::Relaxed) > lists);

    // Answers never chain: only a warm that listed itself answers, and
    // its age counts from its start.
    fx.server.clock.advance(40_000);
    let second = warm_once(&fx, Duration::from_secs(60)).await;
    assert_eq!(
        second.fresh_from_operation_id.as_deref(),
        Some(old.operation_id.as_str())
    );
    fx.server.clock.advance(30_000);
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);
    let third = warm_once(&fx, Duration::from_secs(60)).await;
    assert!(
        third.fresh_from_operation_id.is_none(),
        "the last listing is 70 s old, whatever answered since: {third:?}"
    );
    assert!(fx.server.store.calls.list.load(Ordering::Relaxed) > lists);
}

#[tokio::test]
async fn an_evicted_success_is_not_an_answer_and_force_copy_refuses_a_window() {
    let fx = fixture(10, 0).await;
    warm_once(&fx, Duration::ZERO).await;
    let mut client = fx.client().await;
    client
        .evict(fx.dir.clone(), vec!["m/".into()], false)
        .await
        .unwrap();
    // Its leases ended: it no longer stands for the data.
    let after = warm_once(&fx, Duration::from_secs(3600)).await;
    assert!(after.fresh_from_operation_id.is_none(), "{after:?}");
    assert_eq!(after.counters.objects_copied, 10, "copied again");
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 10);

    let refused = client
        .warm(
            fx.request(&["m/"])
                .force_copy(true)
                .max_staleness(Duration::from_secs(5)),
        )
        .await
        .map(|_| ());
    assert!(
        matches!(refused, Err(expresscache_client::ClientError::Invalid(_))),
        "validated before sending: {refused:?}"
    );
}

#[tokio::test]
async fn an_evict_during_a_joiners_wait_ends_it_cancelled_with_the_reason() {
    let mut data = objects("m/", 10);
    data.extend(objects("n/", 20));
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new_tuned(&refs, |d| {
        d.warm.engine.max_concurrency = 2;
        d.ops.max_running = 1;
    })
    .await;
    fx.server.store.delay(Op::Copy, Duration::from_millis(40));
    let (blocker, _) = start_until(&fx, &["n/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 1
    })
    .await;
    let (leader, led_first) = start_until(&fx, &["m/"], |_| true).await;
    let (joiner, _) = start_until(&fx, &["m/"], |p| !p.joined_operation_id.is_empty()).await;
    // The joiner's own lease (written when it joined) is ended now.
    fx.client()
        .await
        .evict(fx.dir.clone(), vec!["m/".into()], false)
        .await
        .unwrap();
    assert_eq!(outcome(&finish(blocker).await), pb::Outcome::Succeeded);
    let led = finish(leader).await;
    assert_eq!(outcome(&led), pb::Outcome::Succeeded, "{led:?}");
    let joined = finish(joiner).await;
    assert_eq!(outcome(&joined), pb::Outcome::Cancelled, "{joined:?}");
    assert!(joined.error.contains("lease"), "{}", joined.error);
    let _ = led_first;
}

#[tokio::test]
async fn an_index_failure_while_answering_from_a_recent_warm_falls_back_to_listing() {
    let fx = fixture(10, 0).await;
    warm_once(&fx, Duration::ZERO).await;
    let lists = fx.server.store.calls.list.load(Ordering::Relaxed);
    // The lease write of the answer fails (an unreachable index): no
    // answer is given on a lease that may not exist; the warm lists.
    fx.server.index.fail("extend_leases", 1);
    let report = warm_once(&fx, Duration::from_secs(3600)).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert!(report.fresh_from_operation_id.is_none(), "{report:?}");
    assert!(fx.server.store.calls.list.load(Ordering::Relaxed) > lists);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "m/").await.len(), 10);
}

#[tokio::test]
async fn a_joiner_keeps_its_lease_while_a_live_leader_waits_without_moving_its_counters() {
    // A joiner renews its own lease while the warm it joined is alive,
    // judged by that warm's published state (its keeper runs), not by its
    // counters: here the leader waits a few seconds in the queue, counters
    // still, while the joiner's lease lasts one second.
    let fx = one_at_a_time_tuned(|d| {
        d.warm.stall_limit = Duration::from_millis(500);
        d.ops.publish_interval = Duration::from_millis(100);
    })
    .await;
    // Copies slow enough that the blocker holds the one running slot for
    // about three seconds.
    fx.server.store.delay(Op::Copy, Duration::from_millis(300));
    let (blocker, _) = start_until(&fx, &["n/"], |p| {
        p.counters.unwrap_or_default().objects_copied >= 1
    })
    .await;
    let (leader, led_first) = start_until(&fx, &["m/"], |_| true).await;
    let mut client = fx.client().await;
    let short = fx.request(&["m/"]).ttl(Duration::from_secs(1));
    let joiner = tokio::spawn(async move { client.warm_and_wait(short, |_| {}).await });
    assert_eq!(outcome(&finish(blocker).await), pb::Outcome::Succeeded);
    assert_eq!(outcome(&finish(leader).await), pb::Outcome::Succeeded);
    let joined = joiner.await.unwrap().unwrap();
    assert_eq!(
        joined.joined_operation_id.as_deref(),
        Some(led_first.operation_id.as_str()),
        "{joined:?}"
    );
    assert_eq!(
        joined.outcome,
        Outcome::Succeeded,
        "its lease was kept while it waited: {joined:?}"
    );
}
