//! Several replicas on one shared index, with real server binaries and the
//! CLI against moto: a replica killed mid-warm is taken over and its
//! launcher reattaches; overlapping warms on two replicas copy each object
//! once; a cancel sent to one replica stops a warm running on another; a
//! replica paused past its run lease cannot write after it was taken over.
//! doc/FLEET.md describes the mechanisms.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{buckets, Kind, Server, SharedIndex};
use expresscache_client::{pb, Client};
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::{list_keys, Moto};

/// Short leases so a takeover happens within seconds: run lease 5 s (five
/// renewals: a replica starved of CPU by the parallel tests must not lose
/// its run), skew margin 1 s, and a replica looks for orphans every 2 s
/// (the defaults give 17 s).
const FAST: &[&str] = &["--run-lease-ttl", "5s", "--clock-skew-margin", "1s"];

/// Where the replicas keep their shared index.
struct Fleet {
    replicas: Vec<Server>,
    _index: SharedIndex,
}

impl Fleet {
    fn start(n: usize, s3_endpoint: &str, index: SharedIndex, extra: &[&str]) -> Self {
        let env = index.server_env();
        let env = common::env_refs(&env);
        let replicas = (1..=n)
            .map(|i| {
                let id = format!("replica-{i}");
                let mut args = vec!["--replica-id", id.as_str()];
                args.extend_from_slice(FAST);
                args.extend_from_slice(extra);
                Server::start_on(s3_endpoint, &args, &env)
            })
            .collect();
        Self {
            replicas,
            _index: index,
        }
    }

    /// Every replica's endpoint, comma-separated, starting with replica `first`.
    fn endpoints_from(&self, first: usize) -> String {
        let n = self.replicas.len();
        (0..n)
            .map(|i| self.replicas[(first + i) % n].endpoint.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {} ---\n{}", i + 1, r.log()))
            .collect()
    }
}

/// A fleet test's world: moto holding `names` in a source bucket, an empty
/// directory bucket, the shared index, and the proxy the replicas reach S3
/// through, delaying every CopyObject by `copy_delay` (so warms overlap,
/// and can be caught mid-copy).
struct Setup {
    s3: aws_sdk_s3::Client,
    src: String,
    dir: String,
    index: SharedIndex,
    proxy: FaultProxy,
    _moto: Moto,
}

async fn setup(kind: Kind, names: &[String], copy_delay: Duration) -> Setup {
    let (moto, s3, src, dir) = buckets(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let index = kind.index(&moto);
    let proxy = FaultProxy::start(&moto.endpoint).await;
    if !copy_delay.is_zero() {
        proxy.add(Rule::always(Match::copy_object(), Fault::Delay(copy_delay)));
    }
    Setup {
        s3,
        src,
        dir,
        index,
        proxy,
        _moto: moto,
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("d/{i:05}")).collect()
}

/// Starts `expresscache warm` of `d/` in the background.
fn start_warm(endpoints: &str, src: &str, dir: &str, request_id: &str) -> Child {
    start_warm_of("d/", endpoints, src, dir, request_id)
}

fn start_warm_of(prefix: &str, endpoints: &str, src: &str, dir: &str, request_id: &str) -> Child {
    Command::new(common::cli())
        .args(["--endpoint", endpoints, "warm", "--bucket", src])
        .args(["--prefix", prefix, "--directory-bucket", dir, "--ttl", "1h"])
        .args(["--request-id", request_id, "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit within `limit`; its exit code and output.
/// Its output is read while it runs: a CLI that prints a JSON line per
/// progress message fills a pipe nobody reads within a long warm, and
/// then blocks on its next write instead of finishing.
fn finish(mut child: Child, limit: Duration, fleet: &Fleet) -> (i32, String) {
    fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let out = stdout.join().unwrap();
            panic!(
                "warm still running after {limit:?}\nstderr: {}\nlast stdout: {}\n{}",
                stderr.join().unwrap(),
                out.lines().last().unwrap_or_default(),
                fleet.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    (
        status.code().unwrap_or(-1),
        format!(
            "stdout: {}\nstderr: {}",
            stdout.join().unwrap(),
            stderr.join().unwrap()
        ),
    )
}

/// The one operation in the shared log, once `ready` holds for it.
async fn wait_for_operation(
    endpoint: &str,
    limit: Duration,
    ready: impl Fn(&pb::OperationStatus) -> bool,
) -> pb::OperationStatus {
    let t0 = Instant::now();
    let mut client = Client::connect(endpoint).await.unwrap();
    loop {
        let page = client
            .list_operations(pb::OperationFilter::Unspecified, 10, String::new())
            .await
            .unwrap();
        if let Some(op) = page.operations.into_iter().find(&ready) {
            return op;
        }
        assert!(t0.elapsed() < limit, "no operation got there in {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copied(op: &pb::OperationStatus) -> u64 {
    op.progress
        .as_ref()
        .and_then(|p| p.counters)
        .map_or(0, |c| c.objects_copied)
}

fn is_done(op: &pb::OperationStatus) -> bool {
    op.progress
        .as_ref()
        .is_some_and(|p| p.phase == pb::Phase::Done as i32)
}

/// Three replicas; the one running a 2,000-object warm is killed with
/// SIGKILL mid-copy. Another takes the operation over, the CLI (given all
/// three endpoints) reattaches by request id and exits 0, every object is
/// present, and no object is copied twice: the proxy lets the first 500
/// CopyObjects through and holds every later one unanswered and
/// unforwarded, so when the replica dies exactly the 500 recorded copies
/// have reached S3 (a copy S3 applied but the dead replica had not yet
/// recorded would be copied again: the takeover cannot tell it apart from
/// a stale object).
async fn a_killed_replicas_warm_is_taken_over(kind: Kind) {
    let Setup {
        s3,
        src,
        dir,
        index,
        proxy,
        // Bound, not `..`: moto must live as long as the test.
        _moto,
    } = setup(kind, &keys(2000), Duration::ZERO).await;
    proxy.add(Rule::after(Match::copy_object(), Fault::Hang, 500));
    let mut fleet = Fleet::start(3, &proxy.endpoint, index, &[]);
    let warm = start_warm(&fleet.endpoints_from(0), &src, &dir, "job-kill");
    // Replica 1 (the first endpoint) runs it; wait until it has recorded
    // the 500 copies that get through and checkpointed them.
    let op = wait_for_operation(
        &fleet.replicas[1].endpoint,
        Duration::from_secs(120),
        |op| copied(op) >= 500,
    )
    .await;
    fleet.replicas[0].kill9();
    proxy.clear();
    let (code, out) = finish(warm, Duration::from_secs(120), &fleet);
    assert_eq!(code, 0, "{out}\n{}", fleet.logs());
    let listed = list_keys(&s3, &dir, "d/").await;
    assert_eq!(listed.len(), 2000, "every object is present");
    let forwarded = proxy.count(&Match::copy_object()) - proxy.injected();
    assert_eq!(forwarded, 2000, "each object copied once\n{}", fleet.logs());
    let mut client = Client::connect(&fleet.replicas[2].endpoint).await.unwrap();
    let s = client.operation_status(op.operation_id).await.unwrap();
    assert_eq!(s.resumptions, 1, "resumed once, by another replica");
    let p = s.progress.unwrap();
    assert_eq!(p.outcome, pb::Outcome::Succeeded as i32);
    let c = p.counters.unwrap();
    assert_eq!(
        (c.objects_hit, c.objects_copied),
        (500, 1500),
        "the new attempt found the recorded copies and copied the rest"
    );
}

/// Two replicas receive overlapping warms of the same prefix at the same
/// moment (different request ids): each object is copied exactly once.
async fn overlapping_warms_on_two_replicas_copy_each_object_once(kind: Kind) {
    let names = keys(300);
    // Slow copies, so the two warms really overlap.
    let Setup {
        s3,
        src,
        dir,
        index,
        proxy,
        // Bound, not `..`: moto must live as long as the test.
        _moto,
    } = setup(kind, &names, Duration::from_millis(20)).await;
    let fleet = Fleet::start(2, &proxy.endpoint, index, &["--max-concurrency", "8"]);
    let a = start_warm(&fleet.replicas[0].endpoint, &src, &dir, "job-a");
    let b = start_warm(&fleet.replicas[1].endpoint, &src, &dir, "job-b");
    let (code_a, out_a) = finish(a, Duration::from_secs(120), &fleet);
    let (code_b, out_b) = finish(b, Duration::from_secs(120), &fleet);
    assert_eq!((code_a, code_b), (0, 0), "{out_a}\n{out_b}");
    assert_eq!(list_keys(&s3, &dir, "d/").await.len(), 300);
    assert_eq!(
        proxy.count(&Match::copy_object()),
        300,
        "each object copied once across both replicas\n{}",
        fleet.logs()
    );
}

/// Two replicas with `--max-concurrency 8` each, both warming (different
/// prefixes) into one directory bucket: together they never have more than
/// 8 CopyObjects in flight, because the live replicas split each bucket's
/// budget.
async fn replicas_share_a_buckets_request_budget(kind: Kind) {
    let mut names = keys(200);
    names.extend((0..200).map(|i| format!("e/{i:05}")));
    let Setup {
        s3,
        src,
        dir,
        index,
        proxy,
        // Bound, not `..`: moto must live as long as the test.
        _moto,
    } = setup(kind, &names, Duration::from_millis(50)).await;
    let copies = proxy.track(Match::copy_object());
    let fleet = Fleet::start(2, &proxy.endpoint, index, &["--max-concurrency", "8"]);
    // Both have heartbeated since the second joined (every 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = start_warm_of("d/", &fleet.replicas[0].endpoint, &src, &dir, "job-a");
    let b = start_warm_of("e/", &fleet.replicas[1].endpoint, &src, &dir, "job-b");
    let (code_a, out_a) = finish(a, Duration::from_secs(120), &fleet);
    let (code_b, out_b) = finish(b, Duration::from_secs(120), &fleet);
    assert_eq!((code_a, code_b), (0, 0), "{out_a}\n{out_b}");
    assert_eq!(list_keys(&s3, &dir, "").await.len(), 400);
    assert!(
        copies.peak() <= 8,
        "two replicas stayed within one budget of 8: peak {}\n{}",
        copies.peak(),
        fleet.logs()
    );
    assert!(
        copies.peak() > 4,
        "both replicas were copying at once (peak {}), so the bound was tested",
        copies.peak()
    );
}

/// A cancel sent to replica B stops a warm running on replica A.
async fn a_cancel_sent_to_another_replica_stops_the_warm(kind: Kind) {
    let Setup {
        src,
        dir,
        index,
        proxy,
        // Bound, not `..`: moto must live as long as the test.
        _moto,
        ..
    } = setup(kind, &keys(400), Duration::from_millis(100)).await;
    let fleet = Fleet::start(2, &proxy.endpoint, index, &["--max-concurrency", "4"]);
    let warm = start_warm(&fleet.replicas[0].endpoint, &src, &dir, "job-cancel");
    let op = wait_for_operation(&fleet.replicas[1].endpoint, Duration::from_secs(60), |op| {
        !is_done(op)
    })
    .await;
    let t0 = Instant::now();
    let out = fleet.replicas[1].run(&["cancel", &op.operation_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CANCELLED"),
        "the cancel answers once the warm stopped: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the runner saw the cancel within its renewal period: {:?}",
        t0.elapsed()
    );
    let (code, out) = finish(warm, Duration::from_secs(60), &fleet);
    assert_eq!(code, 4, "the launcher's warm ends CANCELLED\n{out}");
    assert!(
        proxy.count(&Match::copy_object()) < 400,
        "it stopped copying"
    );
}

/// A replica paused (SIGSTOP) past its run lease is taken over; once it
/// continues (SIGCONT) it learns it lost the run and writes nothing more:
/// the operation's record stays the new runner's.
async fn a_paused_replica_cannot_write_after_it_was_taken_over(kind: Kind) {
    let names = keys(600);
    let Setup {
        s3,
        src,
        dir,
        index,
        proxy,
        // Bound, not `..`: moto must live as long as the test.
        _moto,
    } = setup(kind, &names, Duration::from_millis(50)).await;
    let fleet = Fleet::start(2, &proxy.endpoint, index, &["--max-concurrency", "4"]);
    let warm = start_warm(&fleet.replicas[0].endpoint, &src, &dir, "job-pause");
    let op = wait_for_operation(&fleet.replicas[1].endpoint, Duration::from_secs(60), |op| {
        !is_done(op)
    })
    .await;
    // Mid-copy: 600 copies at 4 in flight and 50 ms each take 7.5 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.replicas[0].signal("STOP");
    let paused_at = std::time::SystemTime::now();
    let mut client = Client::connect(&fleet.replicas[1].endpoint).await.unwrap();
    let stopped = client
        .operation_status(op.operation_id.clone())
        .await
        .unwrap();
    assert!(
        !is_done(&stopped),
        "the warm must still run when its replica is paused"
    );
    // Replica 2 takes it over once the paused one's run lapses, and
    // finishes it.
    let done = wait_for_operation(&fleet.replicas[1].endpoint, Duration::from_secs(120), |o| {
        o.operation_id == op.operation_id && is_done(o)
    })
    .await;
    let direct = client
        .operation_status(op.operation_id.clone())
        .await
        .unwrap();
    assert!(
        done.resumptions >= 1 && direct.resumptions == done.resumptions,
        "taken over\nlisted: {done:?}\ndirect: {direct:?}\n{}",
        fleet.logs()
    );
    assert_eq!(
        done.progress.as_ref().unwrap().outcome,
        pb::Outcome::Succeeded as i32
    );
    // Those the new runner sent (all signed after the pause) are counted
    // by now.
    let signed_after_pause = Match::copy_object().signed_after(paused_at);
    let new_runners = proxy.count(&signed_after_pause);
    fleet.replicas[0].signal("CONT");
    // The woken replica renews, learns it lost the run, and stops; give it
    // the chance to write (a checkpoint, its final state) if it still could.
    let t0 = Instant::now();
    while !fleet.replicas[0].log().contains("lost the operation's run") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the woken replica never noticed\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = client
        .operation_status(op.operation_id.clone())
        .await
        .unwrap();
    assert_eq!(
        after.progress, done.progress,
        "the woken replica did not overwrite the new runner's record"
    );
    // Its copies check the run's deadline before each request: woken
    // past it, it builds none. One it had built and signed before the
    // pause may still go out on waking (no check can stop a request the
    // pause caught on its way to the socket; its source-ETag condition
    // makes it land only the version recorded): counted by the signing
    // time, those signed after the pause that arrive after the wake are
    // the woken attempt's.
    let signed_after_wake = proxy.count(&signed_after_pause) - new_runners;
    assert_eq!(
        signed_after_wake,
        0,
        "the woken attempt sent copies after its run lapsed\n{}",
        fleet.logs()
    );
    assert_eq!(list_keys(&s3, &dir, "d/").await.len(), 600);
    let (code, out) = finish(warm, Duration::from_secs(60), &fleet);
    assert_eq!(code, 0, "the launcher still hears the outcome\n{out}");
    // And it serves new warms: everything is there, found as hits.
    let again = start_warm(&fleet.replicas[0].endpoint, &src, &dir, "job-after-pause");
    let (code, out) = finish(again, Duration::from_secs(60), &fleet);
    assert_eq!(code, 0, "the woken replica serves new warms\n{out}");
}

/// A warm of `prefix` submitted to `endpoint`; its first update.
async fn submit(
    endpoint: &str,
    src: &str,
    dir: &str,
    prefix: &str,
) -> (tonic::Streaming<pb::WarmProgress>, pb::WarmProgress) {
    let mut client = Client::connect(endpoint).await.unwrap();
    let req = expresscache_client::WarmRequest::new(src, dir)
        .prefix(prefix)
        .ttl(Duration::from_secs(3600));
    let mut stream = client.warm(req).await.unwrap();
    let first = stream.message().await.unwrap().expect("a first update");
    (stream, first)
}

/// Reads `stream` until its warm has copied something (so listed).
async fn copying(
    mut stream: tonic::Streaming<pb::WarmProgress>,
) -> tonic::Streaming<pb::WarmProgress> {
    loop {
        let p = stream.message().await.unwrap().expect("the warm goes on");
        assert_ne!(
            p.phase,
            pb::Phase::Done as i32,
            "done before it copied: {p:?}"
        );
        if p.counters.unwrap_or_default().objects_copied > 0 {
            return stream;
        }
    }
}

/// Reads `stream` to its last update.
async fn last(mut stream: tonic::Streaming<pb::WarmProgress>) -> pb::WarmProgress {
    let mut last = None;
    while let Some(p) = stream.message().await.unwrap() {
        last = Some(p);
    }
    last.expect("at least one update")
}

/// Two replicas; replica 1 runs one warm at a time, so a warm of `d/`
/// submitted there waits behind the warm of `e/` running (and is offered
/// to the fleet meanwhile).
struct Queued {
    s3: aws_sdk_s3::Client,
    src: String,
    dir: String,
    proxy: FaultProxy,
    fleet: Fleet,
    blocker: tonic::Streaming<pb::WarmProgress>,
    _moto: Moto,
}

/// A [`setup`] world whose index two replicas share, each running one
/// warm at a time.
struct OneAtATime {
    s3: aws_sdk_s3::Client,
    src: String,
    dir: String,
    proxy: FaultProxy,
    fleet: Fleet,
    _moto: Moto,
}

/// [`setup`] with `names` and `copy_delay`, and two replicas that each
/// run one warm at a time, once each knows the other.
async fn two_running_one_at_a_time(
    kind: Kind,
    names: &[String],
    copy_delay: Duration,
) -> OneAtATime {
    let Setup {
        s3,
        src,
        dir,
        index,
        proxy,
        _moto,
    } = setup(kind, names, copy_delay).await;
    let fleet = Fleet::start(
        2,
        &proxy.endpoint,
        index,
        &["--max-running-warms", "1", "--max-concurrency", "4"],
    );
    // Both have heartbeated since the second started (every 2 s): each
    // knows it has a peer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    OneAtATime {
        s3,
        src,
        dir,
        proxy,
        fleet,
        _moto,
    }
}

async fn queued_behind_a_blocker(kind: Kind) -> Queued {
    let mut names = keys(100);
    names.extend((0..40).map(|i| format!("e/{i:05}")));
    let OneAtATime {
        s3,
        src,
        dir,
        proxy,
        fleet,
        _moto,
    } = two_running_one_at_a_time(kind, &names, Duration::from_millis(50)).await;
    let (blocker, _) = submit(&fleet.replicas[0].endpoint, &src, &dir, "e/").await;
    Queued {
        s3,
        src,
        dir,
        proxy,
        fleet,
        blocker,
        _moto,
    }
}

/// A warm on replica 2 that a warm queued on replica 1 covers joins it
/// (found in the shared log) instead of listing: it ends SUCCEEDED, names
/// the warm it joined, every object is present, and `d/` was listed once.
async fn a_warm_joins_a_covering_warm_queued_on_another_replica(kind: Kind) {
    let Queued {
        s3,
        src,
        dir,
        proxy,
        fleet,
        blocker,
        _moto,
    } = queued_behind_a_blocker(kind).await;
    let (leader, led_first) = submit(&fleet.replicas[0].endpoint, &src, &dir, "d/").await;
    assert_eq!(led_first.phase, pb::Phase::Queued as i32, "{led_first:?}");
    // Its offer is one write after its submission.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lists_before = proxy.count(&Match::list_objects());
    let (joiner, joined_first) = submit(&fleet.replicas[1].endpoint, &src, &dir, "d/").await;
    let joined = last(joiner).await;
    assert_eq!(
        joined.outcome,
        pb::Outcome::Succeeded as i32,
        "{joined:?}\n{}",
        fleet.logs()
    );
    assert_eq!(
        joined.joined_operation_id,
        led_first.operation_id,
        "it joined the warm on the other replica\n{}",
        fleet.logs()
    );
    let _ = joined_first;
    assert_eq!(last(leader).await.outcome, pb::Outcome::Succeeded as i32);
    assert_eq!(last(blocker).await.outcome, pb::Outcome::Succeeded as i32);
    assert_eq!(list_keys(&s3, &dir, "d/").await.len(), 100);
    assert_eq!(
        proxy.count(&Match::list_objects()) - lists_before,
        1,
        "d/ listed once, by the warm joined\n{}",
        fleet.logs()
    );
}

/// Once the queued warm on replica 1 begins listing, a warm arriving on
/// replica 2 no longer joins it (what that warm lists predates it): it
/// lists itself.
async fn a_warm_that_began_listing_on_another_replica_is_not_joined(kind: Kind) {
    let Queued {
        s3,
        src,
        dir,
        proxy,
        fleet,
        blocker,
        _moto,
    } = queued_behind_a_blocker(kind).await;
    let (leader, led_first) = submit(&fleet.replicas[0].endpoint, &src, &dir, "d/").await;
    assert_eq!(last(blocker).await.outcome, pb::Outcome::Succeeded as i32);
    // The leader lists, then copies (slowly): well past its offer.
    let leader = copying(leader).await;
    let _ = led_first;
    let lists_before = proxy.count(&Match::list_objects());
    let (late, _) = submit(&fleet.replicas[1].endpoint, &src, &dir, "d/").await;
    let late = last(late).await;
    assert_eq!(late.outcome, pb::Outcome::Succeeded as i32, "{late:?}");
    assert!(
        late.joined_operation_id.is_empty(),
        "a warm already listing is not joined: {late:?}\n{}",
        fleet.logs()
    );
    assert_eq!(
        proxy.count(&Match::list_objects()) - lists_before,
        1,
        "it listed d/ itself"
    );
    assert_eq!(last(leader).await.outcome, pb::Outcome::Succeeded as i32);
    assert_eq!(list_keys(&s3, &dir, "d/").await.len(), 100);
}

/// The same request sent to two busy replicas at the same moment (each
/// runs another warm, one at a time): both warms wait queued and offered,
/// neither found the other's offer when it arrived, and the younger joins
/// the older once it sees it, so `d/` is listed once for both. Before,
/// each listed `d/` (doc/FLEET.md, "Rounds shared across replicas").
async fn the_same_request_queued_on_two_replicas_at_once_is_listed_once(kind: Kind) {
    let mut names: Vec<String> = (0..20).map(|i| format!("d/{i:05}")).collect();
    for blocker in ["e", "f"] {
        names.extend((0..40).map(|i| format!("{blocker}/{i:05}")));
    }
    // 40 copies of 300 ms, 4 at a time: each blocker runs 3 s.
    let OneAtATime {
        s3,
        src,
        dir,
        proxy,
        fleet,
        _moto,
    } = two_running_one_at_a_time(kind, &names, Duration::from_millis(300)).await;
    let ((blocker_e, _), (blocker_f, _)) = tokio::join!(
        submit(&fleet.replicas[0].endpoint, &src, &dir, "e/"),
        submit(&fleet.replicas[1].endpoint, &src, &dir, "f/"),
    );
    // Both blockers past their listing: what is listed from now on is d/.
    let (blocker_e, blocker_f) = tokio::join!(copying(blocker_e), copying(blocker_f));
    let lists_before = proxy.count(&Match::list_objects());
    let (one, two) = tokio::join!(
        submit(&fleet.replicas[0].endpoint, &src, &dir, "d/"),
        submit(&fleet.replicas[1].endpoint, &src, &dir, "d/"),
    );
    let ids = [one.1.operation_id.clone(), two.1.operation_id.clone()];
    let (one, two) = tokio::join!(last(one.0), last(two.0));
    for done in [&one, &two] {
        assert_eq!(
            done.outcome,
            pb::Outcome::Succeeded as i32,
            "{done:?}\n{}",
            fleet.logs()
        );
    }
    let joined = [&one.joined_operation_id, &two.joined_operation_id];
    assert!(
        (joined[0] == &ids[1] && joined[1].is_empty())
            || (joined[1] == &ids[0] && joined[0].is_empty()),
        "one joined the other: {joined:?} of {ids:?}\n{}",
        fleet.logs()
    );
    assert_eq!(last(blocker_e).await.outcome, pb::Outcome::Succeeded as i32);
    assert_eq!(last(blocker_f).await.outcome, pb::Outcome::Succeeded as i32);
    assert_eq!(list_keys(&s3, &dir, "d/").await.len(), 20);
    assert_eq!(
        proxy.count(&Match::list_objects()) - lists_before,
        1,
        "d/ listed once for both\n{}",
        fleet.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_same_request_queued_on_two_replicas_at_once_is_listed_once() {
    the_same_request_queued_on_two_replicas_at_once_is_listed_once(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_the_same_request_queued_on_two_replicas_at_once_is_listed_once() {
    the_same_request_queued_on_two_replicas_at_once_is_listed_once(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_warm_joins_a_covering_warm_queued_on_another_replica() {
    a_warm_joins_a_covering_warm_queued_on_another_replica(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_warm_joins_a_covering_warm_queued_on_another_replica() {
    a_warm_joins_a_covering_warm_queued_on_another_replica(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_warm_that_began_listing_on_another_replica_is_not_joined() {
    a_warm_that_began_listing_on_another_replica_is_not_joined(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_warm_that_began_listing_on_another_replica_is_not_joined() {
    a_warm_that_began_listing_on_another_replica_is_not_joined(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_killed_replicas_warm_is_taken_over() {
    a_killed_replicas_warm_is_taken_over(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_overlapping_warms_on_two_replicas_copy_each_object_once() {
    overlapping_warms_on_two_replicas_copy_each_object_once(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_cancel_sent_to_another_replica_stops_the_warm() {
    a_cancel_sent_to_another_replica_stops_the_warm(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_paused_replica_cannot_write_after_it_was_taken_over() {
    a_paused_replica_cannot_write_after_it_was_taken_over(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_replicas_share_a_buckets_request_budget() {
    replicas_share_a_buckets_request_budget(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_killed_replicas_warm_is_taken_over() {
    a_killed_replicas_warm_is_taken_over(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_overlapping_warms_on_two_replicas_copy_each_object_once() {
    overlapping_warms_on_two_replicas_copy_each_object_once(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_cancel_sent_to_another_replica_stops_the_warm() {
    a_cancel_sent_to_another_replica_stops_the_warm(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_paused_replica_cannot_write_after_it_was_taken_over() {
    a_paused_replica_cannot_write_after_it_was_taken_over(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_replicas_share_a_buckets_request_budget() {
    replicas_share_a_buckets_request_budget(Kind::Dynamo).await;
}
