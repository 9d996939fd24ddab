//! Operations that outlive their process: a warm started by the CLI survives
//! `kill -9` and SIGTERM of the server. The restarted server resumes it, the
//! CLI that started it reattaches by itself and exits 0, and nothing is
//! copied twice beyond what was in flight at the kill.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{buckets, env_refs, int, parse_json_lines, Kind, Server};
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::{list_keys, Moto};
use serde_json::Value;

const OBJECTS: usize = 2000;
/// Copies in flight at once: the most a kill can leave copied-but-unrecorded.
const CONCURRENCY: &str = "16";

/// A fault proxy in front of moto that slows every CopyObject by 5 ms, so a
/// warm is reliably mid-flight when the test strikes. It lives in this
/// process, so it outlives the server processes the test kills.
async fn slow_copies(moto: &Moto) -> FaultProxy {
    let proxy = FaultProxy::start(&moto.endpoint).await;
    proxy.add(Rule::always(
        Match::copy_object(),
        Fault::Delay(Duration::from_millis(5)),
    ));
    proxy
}

/// Starts `expresscache warm --output json` and streams its stdout lines.
fn start_warm(
    server: &Server,
    src: &str,
    dir: &str,
    request_id: &str,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = server
        .command()
        .args([
            "warm",
            "--bucket",
            src,
            "--prefix",
            "data/",
            "--directory-bucket",
            dir,
        ])
        .args([
            "--ttl",
            "1h",
            "--output",
            "json",
            "--request-id",
            request_id,
        ])
        .args(["--reconnect-attempts", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the CLI");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Reads progress lines until `objects_copied` reaches `at_least`.
fn wait_for_copies(rx: &mpsc::Receiver<String>, at_least: u64, lines: &mut Vec<String>) {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("progress from the CLI");
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        lines.push(line);
        if int(&v["counters"]["objects_copied"]).unwrap_or(0) >= at_least {
            return;
        }
    }
}

/// Waits for the CLI to exit; returns its exit code and every JSON line.
fn finish(
    mut child: Child,
    rx: mpsc::Receiver<String>,
    mut lines: Vec<String>,
) -> (Option<i32>, Vec<Value>, String) {
    let status = child.wait().expect("CLI exit");
    lines.extend(rx.try_iter());
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        lines.push(l);
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    (status.code(), parse_json_lines(&lines.join("\n")), stderr)
}

fn keys() -> Vec<String> {
    (0..OBJECTS).map(|i| format!("data/{i:05}")).collect()
}

async fn a_warm_survives_kill_9_and_resumes_after_restart(kind: Kind) {
    let keys = keys();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (moto, s3, src, dir) = buckets(&refs).await;
    let index = kind.index(&moto);
    let proxy = slow_copies(&moto).await;
    let env = index.server_env();
    let mut server = Server::start_on(
        &proxy.endpoint,
        &["--max-concurrency", CONCURRENCY],
        &env_refs(&env),
    );
    let (cli, rx) = start_warm(&server, &src, &dir, "kill-test");
    let mut lines = Vec::new();
    wait_for_copies(&rx, 300, &mut lines);

    server.kill9();
    // What the index recorded before the crash: copies that completed.
    let recorded = index.usage(&dir, "").await;
    assert!(
        recorded >= 300 && recorded < OBJECTS as u64,
        "killed mid-copy: {recorded} recorded"
    );
    server.spawn();

    let (code, json, stderr) = finish(cli, rx, lines);
    assert_eq!(
        code,
        Some(0),
        "the CLI reattached and succeeded; stderr:\n{stderr}\nserver log:\n{}",
        server.log()
    );
    assert!(
        stderr.contains("reconnecting"),
        "the CLI saw the crash: {stderr}"
    );
    let last = json.last().expect("final line");
    assert_eq!(last["outcome"], "OUTCOME_SUCCEEDED");
    // The resumed run counts only its own work: everything recorded before
    // the kill is a hit, and it copied exactly the rest, so no object was
    // copied twice except the ones in flight at the kill (not recorded).
    assert_eq!(
        int(&last["counters"]["objects_listed"]),
        Some(OBJECTS as u64)
    );
    assert_eq!(int(&last["counters"]["objects_hit"]), Some(recorded));
    assert_eq!(
        int(&last["counters"]["objects_copied"]),
        Some(OBJECTS as u64 - recorded)
    );
    assert_eq!(list_keys(&s3, &dir, "data/").await.len(), OBJECTS);

    let ops = server.run(&["ops", "--output", "json"]);
    let ops = parse_json_lines(&String::from_utf8_lossy(&ops.stdout));
    assert_eq!(ops.len(), 1, "one operation, resumed: {ops:?}");
    assert_eq!(ops[0]["resumptions"].as_u64(), Some(1));
}

async fn sigterm_interrupts_within_the_grace_period_and_the_warm_completes_after_restart(
    kind: Kind,
) {
    let keys = keys();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (moto, s3, src, dir) = buckets(&refs).await;
    let index = kind.index(&moto);
    let proxy = slow_copies(&moto).await;
    let env = index.server_env();
    let mut server = Server::start_on(
        &proxy.endpoint,
        &["--max-concurrency", CONCURRENCY, "--shutdown-grace", "1s"],
        &env_refs(&env),
    );
    let (cli, rx) = start_warm(&server, &src, &dir, "term-test");
    let mut lines = Vec::new();
    wait_for_copies(&rx, 200, &mut lines);

    let took = server.terminate(Duration::from_secs(30));
    // After the grace period the interrupted warm winds down: copies in
    // flight finish and are recorded, queued claims are given back, the
    // state is checkpointed and the run released, each an index request
    // (on DynamoDB on moto, beside the other tests, slower than SQLite:
    // 15.2 s once in a fresh CI run of the whole suite).
    let bound = match kind {
        Kind::Sqlite => Duration::from_secs(5),
        Kind::Dynamo => Duration::from_secs(20),
    };
    assert!(took < bound, "exit took {took:?} with a 1s grace period");
    let log = server.log();
    assert!(
        log.contains("interrupt"),
        "the warm was interrupted, not abandoned:\n{log}"
    );
    server.spawn();

    let (code, json, stderr) = finish(cli, rx, lines);
    assert_eq!(
        code,
        Some(0),
        "stderr:\n{stderr}\nserver log:\n{}",
        server.log()
    );
    assert_eq!(json.last().expect("final")["outcome"], "OUTCOME_SUCCEEDED");
    assert_eq!(list_keys(&s3, &dir, "data/").await.len(), OBJECTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_warm_survives_kill_9_and_resumes_after_restart() {
    a_warm_survives_kill_9_and_resumes_after_restart(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_warm_survives_kill_9_and_resumes_after_restart() {
    a_warm_survives_kill_9_and_resumes_after_restart(Kind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigterm_interrupts_and_the_warm_completes_after_restart() {
    sigterm_interrupts_within_the_grace_period_and_the_warm_completes_after_restart(Kind::Sqlite)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_sigterm_interrupts_and_the_warm_completes_after_restart() {
    sigterm_interrupts_within_the_grace_period_and_the_warm_completes_after_restart(Kind::Dynamo)
        .await;
}

/// A warm offloaded to S3 Batch Operations (through the fake S3 Control
/// endpoint, whose jobs copy for real on moto) survives `kill -9` of the
/// server mid-job: the restarted server follows the job the first attempt
/// created (its id is in the operation's record) instead of creating a
/// second, and the warm ends SUCCEEDED with every object recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_warm_follows_its_job_after_kill_9_without_creating_another() {
    use expresscache_client::{Client, WarmRequest};
    use expresscache_server::testing::{create_bucket, unique, FakeS3Control};
    let keys: Vec<String> = (0..60).map(|i| format!("d/{i:03}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (moto, s3, src, dir) = buckets(&refs).await;
    let fake = FakeS3Control::start(&moto.endpoint, &[("FAKE_S3CONTROL_TASK_DELAY_MS", "80")]);
    let work = unique("work");
    create_bucket(&s3, &work).await;
    let mut server = Server::start_with(
        &moto,
        &[
            "--batch-role-arn",
            "arn:aws:iam::123456789012:role/expresscache-batch",
            "--batch-working-bucket",
            &work,
            "--batch-control-endpoint",
            &fake.endpoint,
            "--run-lease-ttl",
            "3s",
            "--clock-skew-margin",
            "1s",
        ],
        &[],
    );
    let req = WarmRequest::new(&src, &dir)
        .prefix("d/")
        .request_id("offload-kill")
        .batch_operations(true);
    let mut stream = Client::connect(server.endpoint.clone())
        .await
        .unwrap()
        .warm(req)
        .await
        .unwrap();
    let first = stream.message().await.unwrap().expect("a first update");
    let jobs = |fake: &FakeS3Control| fake.stats()["jobs"].as_object().unwrap().len();
    let t0 = std::time::Instant::now();
    while jobs(&fake) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no job\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The job id reaches the record at once; the job runs ~5 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);
    server.kill9();
    server.spawn();
    let report = Client::connect(server.endpoint.clone())
        .await
        .unwrap()
        .watch_and_wait(first.operation_id.clone(), |_| {})
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        expresscache_client::Outcome::Succeeded,
        "{report:?}\n{}",
        server.log()
    );
    assert_eq!(list_keys(&s3, &dir, "d/").await.len(), 60);
    let stats = fake.stats();
    assert_eq!(
        (stats["create_job_calls"].as_u64(), jobs(&fake)),
        (Some(1), 1),
        "the resumed attempt followed the job instead of creating one\n{}",
        server.log()
    );
    // Recorded: a warm of the same prefix now finds every object cached.
    let again = Client::connect(server.endpoint.clone())
        .await
        .unwrap()
        .warm_and_wait(WarmRequest::new(&src, &dir).prefix("d/"), |_| {})
        .await
        .unwrap();
    assert_eq!(again.counters.objects_hit, 60, "{again:?}");
}

/// The library alone (no CLI): `warm_and_wait` outlives a kill -9 of the
/// server and its restart on the same port and index, reattaching to the
/// same operation by its generated request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_reattaches_after_the_server_is_killed_and_restarted() {
    use expresscache_client::{Client, Outcome, Phase, RetryPolicy, WarmRequest};
    let keys = keys();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (moto, s3, src, dir) = buckets(&refs).await;
    let index = Kind::Sqlite.index(&moto);
    let proxy = slow_copies(&moto).await;
    let env = index.server_env();
    let mut server = Server::start_on(
        &proxy.endpoint,
        &["--max-concurrency", CONCURRENCY],
        &env_refs(&env),
    );
    let (copied_tx, copied_rx) = std::sync::mpsc::channel::<u64>();
    let retries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = std::sync::Arc::clone(&retries);
    let policy = RetryPolicy {
        on_retry: Some(std::sync::Arc::new(move |_: &_, _, _| {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })),
        ..RetryPolicy::default()
    };
    let mut client = Client::connect(&server.endpoint)
        .await
        .expect("connect")
        .with_retry(policy);
    let request = WarmRequest::new(&src, &dir)
        .prefix("data/")
        .ttl(Duration::from_secs(3600));
    let waiter = tokio::spawn(async move {
        let mut phases = Vec::new();
        let report = client
            .warm_and_wait(request, |p| {
                phases.push(p.phase);
                let _ = copied_tx.send(p.counters.objects_copied);
            })
            .await;
        (report, phases)
    });
    // Mid-copy: kill, then restart on the same port and index.
    let copied_rx = tokio::task::spawn_blocking(move || {
        while copied_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("progress")
            < 300
        {}
        copied_rx
    })
    .await
    .unwrap();
    server.kill9();
    let recorded = index.usage(&dir, "").await;
    server.spawn();
    drop(copied_rx);

    let (report, phases) = tokio::time::timeout(Duration::from_secs(120), waiter)
        .await
        .expect("the wait ends")
        .unwrap();
    let report = report.unwrap_or_else(|e| panic!("{e}; server log:\n{}", server.log()));
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(phases.last(), Some(&Phase::Done));
    assert!(
        retries.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "it reconnected"
    );
    // The resumed operation, not a second one: everything recorded before
    // the kill is a hit.
    assert_eq!(report.counters.objects_listed, OBJECTS as u64);
    assert_eq!(report.counters.objects_hit, recorded);
    assert_eq!(list_keys(&s3, &dir, "data/").await.len(), OBJECTS);
    let ops = server.run(&["ops", "--output", "json"]);
    let ops = parse_json_lines(&String::from_utf8_lossy(&ops.stdout));
    assert_eq!(ops.len(), 1, "one operation, resumed: {ops:?}");
}
