//! Three replicas on one DynamoDB index, with real server binaries and the
//! CLI, where a fault proxy stands between the replicas and DynamoDB (moto):
//! a share of calls throttled, write replies lost after the write took
//! effect, the first writes hanging, a brownout of the whole index. Warms
//! and evicts must end as they would on a quiet table (every object there,
//! a re-warm that copies nothing, an evict that deletes everything), and no
//! replica may exit because the index is slow. doc/FLEET.md describes the
//! mechanisms.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{buckets, int, json_lines, Server, SharedIndex};
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::{list_keys, Moto};

/// Short run leases so takeovers happen within seconds.
const FAST: &[&str] = &["--run-lease-ttl", "5s", "--clock-skew-margin", "1s"];

struct World {
    replicas: Vec<Server>,
    /// Between the replicas and DynamoDB.
    dynamo: FaultProxy,
    s3: aws_sdk_s3::Client,
    src: String,
    dir: String,
    _index: SharedIndex,
    _moto: Moto,
}

/// moto with `n` objects under d/, the index tables created, a DynamoDB
/// proxy with `rules` from the start, and three replicas reaching DynamoDB
/// through it.
async fn world(n: usize, rules: Vec<Rule>) -> World {
    world_with(n, rules, &[]).await
}

/// [`world`], the replicas started with `extra` arguments too.
async fn world_with(n: usize, rules: Vec<Rule>, extra: &[&str]) -> World {
    let names: Vec<String> = (0..n).map(|i| format!("d/{i:05}")).collect();
    let (moto, s3, src, dir) = buckets(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let index = SharedIndex::dynamo(&moto);
    let dynamo = FaultProxy::start(&moto.endpoint).await;
    for r in rules {
        dynamo.add(r);
    }
    let mut env = index.server_env();
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL_DYNAMODB");
    env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), dynamo.endpoint.clone()));
    let env = common::env_refs(&env);
    let replicas = (1..=3)
        .map(|i| {
            let id = format!("replica-{i}");
            let mut args = vec!["--replica-id", id.as_str()];
            args.extend_from_slice(FAST);
            args.extend_from_slice(extra);
            Server::start_on(&moto.endpoint, &args, &env)
        })
        .collect();
    World {
        replicas,
        dynamo,
        s3,
        src,
        dir,
        _index: index,
        _moto: moto,
    }
}

impl World {
    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {} ---\n{}", i + 1, r.log()))
            .collect()
    }

    /// `expresscache warm` of d/ through replica `i`; its exit code and
    /// final JSON line.
    fn warm(&self, i: usize) -> (i32, serde_json::Value) {
        let out = self.replicas[i].run_within(
            &[
                "warm",
                "--bucket",
                &self.src,
                "--prefix",
                "d/",
                "--directory-bucket",
                &self.dir,
                "--ttl",
                "1h",
                "--output",
                "json",
            ],
            Duration::from_secs(180),
        );
        self.last(&out)
    }

    fn evict(&self, i: usize) -> (i32, serde_json::Value) {
        let out = self.replicas[i].run_within(
            &[
                "evict",
                "--directory-bucket",
                &self.dir,
                "--prefix",
                "d/",
                "--output",
                "json",
            ],
            Duration::from_secs(180),
        );
        self.last(&out)
    }

    fn last(&self, out: &Output) -> (i32, serde_json::Value) {
        let code = out.status.code().unwrap_or(-1);
        let last = json_lines(out).pop().unwrap_or_else(|| {
            panic!(
                "no output (exit {code}); stderr: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            )
        });
        (code, last)
    }

    /// Every replica process is still running.
    fn all_running(&mut self) -> bool {
        self.replicas.iter_mut().all(Server::is_running)
    }
}

fn counter(v: &serde_json::Value, name: &str) -> u64 {
    int(&v["counters"][name]).unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

/// The warm, re-warm and evict every case must get right.
async fn warm_rewarm_evict(w: &mut World, n: usize) {
    let (code, last) = w.warm(0);
    assert_eq!(code, 0, "warm: {last}\n{}", w.logs());
    assert_eq!(last["outcome"], "OUTCOME_SUCCEEDED", "{last}");
    assert_eq!(list_keys(&w.s3, &w.dir, "d/").await.len(), n);
    let (code, again) = w.warm(1);
    assert_eq!(code, 0, "re-warm: {again}\n{}", w.logs());
    assert_eq!(counter(&again, "objects_copied"), 0, "{again}");
    assert_eq!(counter(&again, "objects_hit"), n as u64, "{again}");
    let (code, evicted) = w.evict(2);
    assert_eq!(code, 0, "evict: {evicted}\n{}", w.logs());
    assert_eq!(
        list_keys(&w.s3, &w.dir, "d/").await.len(),
        0,
        "evicted: {evicted}"
    );
    assert!(w.all_running(), "a replica exited:\n{}", w.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_warm_and_evict_with_a_quarter_of_dynamodb_calls_throttled() {
    let rules = vec![Rule::share(
        Match::dynamo_any(),
        Fault::DynamoThrottle,
        0.25,
        25,
    )];
    let mut w = world(400, rules).await;
    warm_rewarm_evict(&mut w, 400).await;
    assert!(
        w.dynamo.injected() > 50,
        "{} throttles",
        w.dynamo.injected()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_warm_and_evict_with_write_replies_lost_after_the_write() {
    let rules = vec![Rule::share(
        Match::dynamo_writes(),
        Fault::LoseReplyAs500,
        0.15,
        15,
    )];
    let mut w = world(400, rules).await;
    warm_rewarm_evict(&mut w, 400).await;
    assert!(
        w.dynamo.injected() > 20,
        "{} replies lost",
        w.dynamo.injected()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_first_index_writes_hang_start_and_serve_once_it_answers() {
    // The first 12 writes (heartbeats, the registry) never answer: each
    // replica's start meets a hung index.
    let rules = vec![Rule::times(Match::dynamo_writes(), Fault::Hang, 12)];
    let mut w = world(100, rules).await;
    assert!(w.all_running(), "a replica exited:\n{}", w.logs());
    warm_rewarm_evict(&mut w, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_running_through_an_index_brownout_and_serve_after_it() {
    let mut w = world(50, vec![]).await;
    let (code, last) = w.warm(0);
    assert_eq!(code, 0, "{last}");
    // Every DynamoDB call hangs for a while: heartbeats, adoption scans
    // and the sweeper all meet it.
    w.dynamo.add(Rule::always(Match::dynamo_any(), Fault::Hang));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        assert!(
            w.all_running(),
            "a replica exited mid-brownout:\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    w.dynamo.clear();
    let (code, again) = w.warm(1);
    assert_eq!(code, 0, "after the brownout: {again}\n{}", w.logs());
    assert_eq!(counter(&again, "objects_hit"), 50, "{again}");
    assert!(w.all_running(), "{}", w.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evict_the_index_cannot_confirm_reports_its_prefix_unconfirmed_not_unavailable() {
    // A retry budget of 2 s, so an index that throttles everything
    // exhausts it within the test.
    let mut w = world_with(40, vec![], &["--index-retry-budget", "2s"]).await;
    let (code, last) = w.warm(0);
    assert_eq!(code, 0, "{last}");
    w.dynamo
        .add(Rule::always(Match::dynamo_any(), Fault::DynamoThrottle));
    let (code, report) = w.evict(1);
    assert_eq!(
        code, 1,
        "unconfirmed is a failure, not 'unreachable': {report}"
    );
    let prefixes = report["prefixes"].as_array().unwrap();
    assert_eq!(prefixes.len(), 1, "{report}");
    assert_eq!(prefixes[0]["prefix"], "d/");
    assert_eq!(prefixes[0]["state"], "UNCONFIRMED", "{report}");
    assert!(
        !prefixes[0]["error"].as_str().unwrap().is_empty(),
        "{report}"
    );
    // Once the index answers, evicting again finishes it.
    w.dynamo.clear();
    let (code, again) = w.evict(2);
    assert_eq!(code, 0, "{again}\n{}", w.logs());
    assert_eq!(again["prefixes"][0]["state"], "DONE", "{again}");
    assert!(
        list_keys(&w.s3, &w.dir, "d/").await.is_empty(),
        "every object deleted"
    );
    assert!(w.all_running(), "{}", w.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_is_ahead_of_s3s_warms_but_neither_evicts_nor_sweeps() {
    let names: Vec<String> = (0..3).map(|i| format!("d/{i}")).collect();
    let (moto, s3, src, dir) = buckets(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    // S3 answers with a Date a minute behind this host's clock.
    let proxy = FaultProxy::start(&moto.endpoint).await;
    proxy.add(Rule::always(Match::any(), Fault::ShiftDate(-60)));
    let server = Server::start_on(
        &proxy.endpoint,
        &["--sweep-interval", "1s", "--min-ttl", "1s"],
        &[],
    );
    let warm = server.run(&[
        "warm",
        "--bucket",
        &src,
        "--prefix",
        "d/",
        "--directory-bucket",
        &dir,
        "--ttl",
        "2s",
    ]);
    assert_eq!(
        warm.status.code(),
        Some(0),
        "warms do not judge by the clock: {}\n{}",
        String::from_utf8_lossy(&warm.stderr),
        server.log()
    );
    let status = server.run(&["status", "--directory-bucket", &dir, "--prefix", "d/"]);
    let said = String::from_utf8_lossy(&status.stderr);
    assert!(
        said.contains("warning: this replica's clock is") && said.contains("ahead of S3's"),
        "status says why: {said}"
    );
    let evict = server.run(&["evict", "--directory-bucket", &dir, "--prefix", "d/"]);
    let said = String::from_utf8_lossy(&evict.stderr);
    assert_ne!(evict.status.code(), Some(0), "{said}");
    assert!(
        said.contains("FAILED_PRECONDITION") && said.contains("clock"),
        "{said}"
    );
    // The lease (2 s) has expired by this clock long since; the sweeper
    // runs every second and must not act on it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        list_keys(&s3, &dir, "d/").await.len(),
        3,
        "nothing deleted by a fast clock\n{}",
        server.log()
    );
    assert!(
        server.log().contains("clock skew beyond the margin"),
        "{}",
        server.log()
    );
}
