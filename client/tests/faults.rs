//! The faults real S3 and real networks produce, end to end: the real
//! server binary and CLI talk to moto through the project's fault proxy,
//! which loses replies after forwarding, hangs requests, serves empty
//! truncated listing pages and injects throttles. Each test is one case of
//! "SUCCEEDED means present and current" that once failed
//! (doc/SEMANTICS.md names them).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{buckets, int, json_lines, Server};
use expresscache_server::testing::list_keys;
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use serde_json::Value;

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn warm_args<'a>(src: &'a str, dir: &'a str, prefix: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "warm",
        "--bucket",
        src,
        "--prefix",
        prefix,
        "--directory-bucket",
        dir,
        "--ttl",
        "1h",
        "--output",
        "json",
    ];
    a.extend_from_slice(extra);
    a
}

/// The final JSON line of a warm, after checking its exit code.
fn last_line(out: &std::process::Output, code: i32) -> Value {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(out).pop().expect("progress lines")
}

const LIMIT: Duration = Duration::from_secs(120);

/// Case 1: S3 applies a DeleteObjects but the reply is lost. The eviction
/// cannot know, so the next warm must copy those objects again instead of
/// counting them as hits.
// Multi-threaded: the proxy runs in this process and must keep serving
// while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delete_reply_does_not_turn_the_next_warm_into_false_hits() {
    let ks = keys("d/", 50);
    let (moto, s3, src, dir) = buckets(&refs(&ks)).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let server = Server::start_on(&proxy.endpoint, &[], &[]);
    let first = last_line(&server.run(&warm_args(&src, &dir, "d/", &[])), 0);
    assert_eq!(int(&first["counters"]["objects_copied"]), Some(50));

    proxy.add(Rule::always(
        Match::delete_objects().bucket(&dir),
        Fault::LoseReply,
    ));
    let evict = server.run(&["evict", "--directory-bucket", &dir, "--prefix", "d/"]);
    assert_ne!(
        evict.status.code(),
        Some(0),
        "the evict cannot claim success"
    );
    assert!(proxy.injected() >= 1);
    assert!(
        list_keys(&s3, &dir, "").await.is_empty(),
        "S3 did delete them"
    );
    proxy.clear();

    let again = last_line(&server.run(&warm_args(&src, &dir, "d/", &[])), 0);
    assert_eq!(again["outcome"], "OUTCOME_SUCCEEDED");
    assert_eq!(
        (
            int(&again["counters"]["objects_hit"]),
            int(&again["counters"]["objects_copied"])
        ),
        (Some(0), Some(50)),
        "{again}"
    );
    assert_eq!(list_keys(&s3, &dir, "").await, ks, "ready means present");
}

/// Case 2: a listing page with no keys and a continuation token is not the
/// end of the listing.
// Multi-threaded: the proxy runs in this process and must keep serving
// while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_truncated_listing_page_does_not_end_the_listing() {
    let ks = keys("e/", 30);
    let (moto, s3, src, dir) = buckets(&refs(&ks)).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    proxy.add(Rule::times(
        Match::list_objects().bucket(&src),
        Fault::EmptyTruncatedPage,
        2,
    ));
    let server = Server::start_on(&proxy.endpoint, &[], &[]);
    let last = last_line(&server.run(&warm_args(&src, &dir, "e/", &[])), 0);
    assert_eq!(proxy.injected(), 2, "two empty pages were served");
    assert_eq!(
        (
            int(&last["counters"]["objects_listed"]),
            int(&last["counters"]["objects_copied"])
        ),
        (Some(30), Some(30)),
        "{last}"
    );
    assert_eq!(list_keys(&s3, &dir, "").await, ks);
}

/// Case 3: a job requeued with the same request_id after its data expired
/// and was swept gets a new warm, not the old SUCCEEDED.
// Multi-threaded: the proxy runs in this process and must keep serving
// while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_after_the_lease_was_swept_starts_a_new_warm() {
    let ks = keys("r/", 20);
    let (moto, s3, src, dir) = buckets(&refs(&ks)).await;
    let server = Server::start_with(
        &moto,
        &["--sweep-interval", "200ms", "--clock-skew-margin", "0s"],
        &[],
    );
    let args = |ttl: &'static str| {
        let mut a = warm_args(&src, &dir, "r/", &["--request-id", "job-42"]);
        a[8] = ttl;
        a
    };
    let first = last_line(&server.run(&args("1s")), 0);
    assert_eq!(int(&first["counters"]["objects_copied"]), Some(20));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !list_keys(&s3, &dir, "").await.is_empty() {
        assert!(Instant::now() < deadline, "the sweeper did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let again = last_line(&server.run(&args("1s")), 0);
    assert_eq!(again["outcome"], "OUTCOME_SUCCEEDED");
    assert_ne!(
        again["operation_id"], first["operation_id"],
        "a new operation"
    );
    assert_eq!(again["superseded_operation_id"], first["operation_id"]);
    assert_eq!(
        int(&again["counters"]["objects_copied"]),
        Some(20),
        "{again}"
    );
    assert_eq!(list_keys(&s3, &dir, "").await, ks, "ready means present");

    // While the new operation's lease is live, the same id attaches to it.
    let attached = last_line(&server.run(&args("1s")), 0);
    assert_eq!(attached["operation_id"], again["operation_id"]);
}

/// Case 4: an expired lease whose directory bucket refuses deletion (gone,
/// or denied) is retried with backoff and reported; every other lease is
/// still swept.
// Multi-threaded: the proxy runs in this process and must keep serving
// while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_that_cannot_be_swept_does_not_stop_the_others() {
    let ks = keys("s/", 20);
    let (moto, s3, src, stuck) = buckets(&refs(&ks)).await;
    let dir = expresscache_server::testing::unique_directory_bucket();
    expresscache_server::testing::create_directory_bucket(&s3, &dir).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let server = Server::start_on(
        &proxy.endpoint,
        &["--sweep-interval", "200ms", "--clock-skew-margin", "0s"],
        &[],
    );
    let warm_into = |d: &str| {
        let mut a = warm_args(&src, d, "s/", &[]);
        a[8] = "1s";
        server.run(&a)
    };
    // The stuck bucket's lease expires first: it is first on every pass.
    last_line(&warm_into(&stuck), 0);
    proxy.add(Rule::always(
        Match::delete_objects().bucket(&stuck),
        Fault::Status {
            status: 404,
            code: "NoSuchBucket".into(),
        },
    ));
    last_line(&warm_into(&dir), 0);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !list_keys(&s3, &dir, "").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the other lease was never swept; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list_keys(&s3, &stuck, "").await.len(), 20, "kept: refused");
    let status = server.run(&[
        "status",
        "--directory-bucket",
        &stuck,
        "--prefix",
        "s/",
        "--output",
        "json",
    ]);
    let v = &json_lines(&status)[0];
    let failures = v["sweep_failures"].as_array().expect("sweep_failures");
    assert_eq!(failures.len(), 1, "{v}");
    assert!(failures[0]["attempts"].as_u64() >= Some(1));
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{v}"
    );
    assert!(server.log().contains("could not sweep an expired lease"));
}

/// Case 5: every throttle reaches the engine (the SDK's own retries do not
/// swallow them), so the adaptive limit sees them and the report counts
/// them.
// Multi-threaded: the proxy runs in this process and must keep serving
// while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_throttle_reaches_the_engine() {
    let ks = keys("t/", 100);
    let (moto, s3, src, dir) = buckets(&refs(&ks)).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    proxy.add(Rule::every(
        Match::copy_object().bucket(&dir),
        Fault::Status {
            status: 503,
            code: "SlowDown".into(),
        },
        5,
    ));
    let server = Server::start_on(&proxy.endpoint, &[], &[]);
    let last = last_line(&server.run(&warm_args(&src, &dir, "t/", &[])), 0);
    let injected = proxy.injected();
    assert!(injected >= 20, "about 20% of copies throttled: {injected}");
    assert_eq!(int(&last["counters"]["objects_copied"]), Some(100));
    assert_eq!(
        int(&last["counters"]["copy_retries"]),
        Some(injected),
        "{last}"
    );
    assert_eq!(
        int(&last["counters"]["throttle_events"]),
        Some(injected),
        "{last}"
    );
    assert_eq!(list_keys(&s3, &dir, "").await.len(), 100);
}

/// Case 6: a request that never answers is timed out and retried; the warm
/// ends instead of staying RUNNING.
// Multi-threaded: the proxy runs in this process and must keep serving
// while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_answers_is_retried_not_waited_for() {
    let ks = keys("h/", 10);
    let (moto, s3, src, dir) = buckets(&refs(&ks)).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    proxy.add(Rule::times(
        Match::head_bucket().bucket(&src),
        Fault::Hang,
        1,
    ));
    proxy.add(Rule::times(
        Match::list_objects().bucket(&src),
        Fault::Hang,
        1,
    ));
    proxy.add(Rule::times(
        Match::copy_object().bucket(&dir),
        Fault::Hang,
        2,
    ));
    let server = Server::start_on(&proxy.endpoint, &["--s3-request-timeout", "1s"], &[]);
    let t0 = Instant::now();
    let last = last_line(
        &server.run_within(&warm_args(&src, &dir, "h/", &[]), LIMIT),
        0,
    );
    assert_eq!(proxy.injected(), 4);
    assert_eq!(int(&last["counters"]["objects_copied"]), Some(10), "{last}");
    assert_eq!(int(&last["counters"]["copy_retries"]), Some(2), "{last}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert_eq!(list_keys(&s3, &dir, "").await.len(), 10);
}

/// A CopyObject whose reply is lost after S3 made the copy: the engine
/// retries it (same source ETag condition, same result) and records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_copy_reply_is_retried_and_recorded() {
    let ks = keys("c/", 20);
    let (moto, s3, src, dir) = buckets(&refs(&ks)).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    proxy.add(Rule::times(
        Match::copy_object().bucket(&dir),
        Fault::LoseReply,
        3,
    ));
    proxy.add(Rule::times(
        Match::list_objects().bucket(&src),
        Fault::Status {
            status: 503,
            code: "SlowDown".into(),
        },
        1,
    ));
    let server = Server::start_on(&proxy.endpoint, &[], &[]);
    let last = last_line(
        &server.run_within(&warm_args(&src, &dir, "c/", &[]), LIMIT),
        0,
    );
    assert_eq!(
        proxy.injected(),
        4,
        "3 lost copy replies, 1 throttled listing"
    );
    assert_eq!(int(&last["counters"]["objects_copied"]), Some(20), "{last}");
    assert_eq!(int(&last["counters"]["copy_retries"]), Some(3), "{last}");
    assert_eq!(list_keys(&s3, &dir, "").await, ks);
    let again = last_line(&server.run(&warm_args(&src, &dir, "c/", &[])), 0);
    assert_eq!(
        int(&again["counters"]["objects_hit"]),
        Some(20),
        "recorded as cached"
    );
}

/// A DeleteObjects that is throttled, then never answers: the eviction
/// retries past both and records what it deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evict_whose_delete_is_throttled_then_hangs_still_finishes() {
    let ks = keys("x/", 5);
    let (moto, s3, src, dir) = buckets(&refs(&ks)).await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let server = Server::start_on(&proxy.endpoint, &["--s3-request-timeout", "1s"], &[]);
    last_line(&server.run(&warm_args(&src, &dir, "x/", &[])), 0);
    proxy.add(Rule::times(
        Match::delete_objects().bucket(&dir),
        Fault::Status {
            status: 503,
            code: "SlowDown".into(),
        },
        1,
    ));
    proxy.add(Rule::times(
        Match::delete_objects().bucket(&dir),
        Fault::Hang,
        1,
    ));
    let out = server.run_within(
        &[
            "evict",
            "--directory-bucket",
            &dir,
            "--prefix",
            "x/",
            "--output",
            "json",
        ],
        LIMIT,
    );
    let v = last_line(&out, 0);
    assert_eq!(proxy.injected(), 2);
    assert_eq!(int(&v["objects_deleted"]), Some(5), "{v}");
    assert!(list_keys(&s3, &dir, "").await.is_empty());
    let again = last_line(&server.run(&warm_args(&src, &dir, "x/", &[])), 0);
    assert_eq!(
        int(&again["counters"]["objects_copied"]),
        Some(5),
        "no false hits"
    );
}
