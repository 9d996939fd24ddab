use crate::index::{Leases, OperationLog, RunLeases};
use std::sync::Arc;
use std::time::Duration;

use expresscache::{Limits, WarmSpec};

use super::*;
use crate::core::operation::{OperationRecord, OperationState, Outcome, Phase};
use crate::index::{RunTerms, SqliteIndex};
use crate::store::MemoryStore;
use crate::warm::{WarmSettings, Warmer};

pub(super) fn unfinished(id: &str, resumptions: u32) -> OperationRecord {
    OperationRecord {
        id: id.into(),
        request_id: None,
        owner: None,
        request: WarmSpec {
            source: expresscache::BucketName::parse("src").unwrap(),
            prefixes: vec![expresscache::Prefix::parse("d/").unwrap()],
            directory_bucket: expresscache::DirectoryBucketName::parse("cache--use1-az4--x-s3")
                .unwrap(),
            ttl: Duration::from_secs(60),
            force_copy: false,
            request_id: None,
            destination_prefix: expresscache::Prefix::root(),
            max_staleness: Duration::ZERO,
            batch_operations: false,
            allow_empty: false,
            selection: Default::default(),
        },
        state: OperationState {
            phase: crate::core::operation::Phase::Copying,
            ..OperationState::queued(id, 1)
        },
        created_at: 1,
        resumptions,
        run: None,
    }
}

#[tokio::test]
async fn a_warm_interrupted_too_often_is_failed_not_resumed_again() {
    let store = MemoryStore::default();
    store.create_bucket("src");
    store.create_bucket("cache--use1-az4--x-s3");
    let index = Arc::new(SqliteIndex::open_in_memory().unwrap());
    index
        .create_operation(&unfinished("crashy", 3))
        .await
        .unwrap();
    index
        .create_operation(&unfinished("drained", 3))
        .await
        .unwrap();
    // Three earlier runs of `crashy` crashed (their runs lapsed); every
    // run of `drained` ended in a graceful shutdown (released).
    let terms = |now| RunTerms {
        replica: "earlier",
        deadline: now + 1,
        now,
    };
    for now in [10, 20, 30] {
        index
            .take_over("crashy", &terms(now))
            .await
            .unwrap()
            .unwrap();
        let run = index
            .take_over("drained", &terms(now))
            .await
            .unwrap()
            .unwrap();
        index.release_run("drained", &run.ticket).await.unwrap();
    }
    let warmer = Arc::new(Warmer::new(
        Arc::new(store),
        index.clone(),
        Arc::new(crate::core::clock::SystemClock),
        WarmSettings::default(),
    ));
    let ops = Arc::new(Operations::new(
        warmer,
        index.clone(),
        OpsSettings::default(),
        Limits::default(),
    ));
    assert_eq!(
        ops.adopt_orphans().await.unwrap(),
        1,
        "only the cleanly stopped one"
    );
    let crashy = index.get_operation("crashy").await.unwrap().unwrap();
    assert!(crashy.is_done());
    assert_eq!(crashy.state.outcome, Some(Outcome::Failed));
    let error = crashy.state.error.unwrap_or_default();
    assert!(error.contains("4 times"), "{error}");
    assert_eq!(crashy.resumptions, 3, "not counted as resumed again");
}

/// Holds every `renew_run` call forever: an index that stopped answering
/// this replica's renewals.
#[derive(Debug)]
struct RenewalsHang;

impl crate::gate::Gate for RenewalsHang {
    fn enter(
        &self,
        call: &'static str,
        _subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        if call == "renew_run" {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Box::new(()) as crate::gate::Pass })
        }
    }
}

#[tokio::test]
async fn a_runner_whose_renewals_hang_stops_itself_by_its_deadline() {
    use crate::index::CountingIndex;
    use crate::store::{FaultStore, Op};
    let mem = MemoryStore::default();
    mem.create_bucket("src");
    mem.create_bucket("cache--use1-az4--x-s3");
    for i in 0..200 {
        mem.put("src", &format!("d/{i:03}"), 10);
    }
    let store = Arc::new(FaultStore::new(mem));
    // 200 copies, 2 at a time, 20 ms each: 2 s of work.
    store.delay(Op::Copy, Duration::from_millis(20));
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap())
            .with_gate(Arc::new(RenewalsHang)),
    );
    let mut warm = WarmSettings::default();
    warm.engine.max_concurrency = 2;
    let warmer = Arc::new(Warmer::new(
        store.clone(),
        index.clone(),
        Arc::new(crate::core::clock::SystemClock),
        warm,
    ));
    let settings = OpsSettings {
        run_ttl: Duration::from_millis(400),
        renew_every: Duration::from_millis(100),
        publish_interval: Duration::from_millis(50),
        ..OpsSettings::default()
    };
    let ops = Arc::new(Operations::new(
        warmer,
        index.clone(),
        settings,
        Limits::default(),
    ));
    let mut spec = unfinished("x", 0).request;
    spec.request_id = None;
    let rx = ops.submit(spec, None).await.unwrap();
    let id = rx.borrow().operation_id.clone();
    // It stops within its deadline (plus the copies in flight), long
    // before the 2 s of work are done.
    let t0 = std::time::Instant::now();
    while ops.live().contains_key(&id) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "still running past its deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies = store.calls.copy.load(std::sync::atomic::Ordering::Relaxed);
    assert!(copies < 100, "it stopped copying: {copies} copies");
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert!(
        !rec.is_done(),
        "a runner that lost its run records no outcome: {:?}",
        rec.state
    );
}

/// Holds every call named `call` forever.
#[derive(Debug)]
struct Hangs(&'static str);

impl crate::gate::Gate for Hangs {
    fn enter(
        &self,
        call: &'static str,
        _subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        if call == self.0 {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Box::new(()) as crate::gate::Pass })
        }
    }
}

type SlowStore = crate::store::FaultStore<MemoryStore>;

/// Run leases of 400 ms renewed every 100 ms, progress published every
/// 50 ms and checkpointed every 100 ms: a test sees runs lapse, renew and
/// checkpoint within a second.
fn short_runs() -> OpsSettings {
    OpsSettings {
        run_ttl: Duration::from_millis(400),
        renew_every: Duration::from_millis(100),
        publish_interval: Duration::from_millis(50),
        checkpoint_interval: Duration::from_millis(100),
        final_write_budget: Duration::from_secs(20),
        ..OpsSettings::default()
    }
}

/// [`short_runs`] as replica `name` of a fleet, with run leases of 2 s
/// renewed every 200 ms.
fn as_replica(name: &str) -> OpsSettings {
    OpsSettings {
        replica: name.into(),
        run_ttl: Duration::from_secs(2),
        renew_every: Duration::from_millis(200),
        ..short_runs()
    }
}

/// Operations over `index` with `n` objects under d/ of "src", copies
/// `copy_ms` each, two at a time, and short run leases.
fn fleet_member<I: crate::index::FleetIndex>(
    index: Arc<I>,
    n: usize,
    copy_ms: u64,
) -> (Arc<Operations>, Arc<SlowStore>) {
    fleet_member_with(index, n, copy_ms, short_runs())
}

/// [`fleet_member`] with `settings`, and a store of its own.
fn fleet_member_with<I: crate::index::FleetIndex>(
    index: Arc<I>,
    n: usize,
    copy_ms: u64,
    settings: OpsSettings,
) -> (Arc<Operations>, Arc<SlowStore>) {
    use crate::store::{FaultStore, Op};
    let mem = MemoryStore::default();
    mem.create_bucket("src");
    mem.create_bucket("cache--use1-az4--x-s3");
    for i in 0..n {
        mem.put("src", &format!("d/{i:03}"), 10);
    }
    let store = Arc::new(FaultStore::new(mem));
    store.delay(Op::Copy, Duration::from_millis(copy_ms));
    let mut warm = WarmSettings::default();
    warm.engine.max_concurrency = 2;
    let warmer = Arc::new(Warmer::new(
        store.clone(),
        index.clone(),
        Arc::new(crate::core::clock::SystemClock),
        warm,
    ));
    (
        Arc::new(Operations::new(warmer, index, settings, Limits::default())),
        store,
    )
}

/// Submits a warm of d/ and waits until it is no longer live here.
async fn run_to_end(ops: &Arc<Operations>) -> String {
    let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let id = rx.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while ops.live().contains_key(&id) {
        assert!(t0.elapsed() < Duration::from_secs(30), "still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id
}

#[tokio::test]
async fn a_runner_whose_checkpoints_hang_keeps_its_run_renewed() {
    use crate::core::clock::Clock;
    use crate::index::CountingIndex;
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap())
            .with_gate(Arc::new(Hangs("update_operation"))),
    );
    // 100 copies, 2 at a time, 20 ms each: a second of work, more than
    // twice the run lease.
    let (ops, _store) = fleet_member(Arc::clone(&index), 100, 20);
    let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let id = rx.borrow().operation_id.clone();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    let run = rec.run.expect("unfinished: it has a run");
    let now = crate::core::clock::SystemClock.now();
    assert!(
        run.deadline > now,
        "a hung checkpoint must not stop the renewals: the run lapsed {} ms ago, \
         and another replica could take it over while this one still copies",
        now - run.deadline
    );
}

#[tokio::test]
async fn a_final_state_the_index_cannot_take_yet_is_retried_not_left_to_lapse() {
    use crate::index::CountingIndex;
    let index = Arc::new(CountingIndex::new(SqliteIndex::open_in_memory().unwrap()));
    index.fail("finish_operation", 3);
    let (ops, _store) = fleet_member(Arc::clone(&index), 5, 1);
    let id = run_to_end(&ops).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert!(rec.is_done(), "recorded after the retries: {:?}", rec.state);
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded));
    assert_eq!(rec.resumptions, 0);
}

#[tokio::test]
async fn a_final_state_the_index_refuses_is_recorded_smaller_then_as_failed_never_a_crash() {
    use crate::index::CountingIndex;
    let index = Arc::new(CountingIndex::new(SqliteIndex::open_in_memory().unwrap()));
    // Refused once: recorded without its failure list, still SUCCEEDED.
    index.refuse("finish_operation", 1);
    let (ops, _store) = fleet_member(Arc::clone(&index), 5, 1);
    let id = run_to_end(&ops).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert_eq!(
        rec.state.outcome,
        Some(Outcome::Succeeded),
        "{:?}",
        rec.state
    );
    // Refused twice: FAILED with the reason, at once.
    let index = Arc::new(CountingIndex::new(SqliteIndex::open_in_memory().unwrap()));
    index.refuse("finish_operation", 2);
    let (ops, _store) = fleet_member(Arc::clone(&index), 5, 1);
    let id = run_to_end(&ops).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Failed), "{:?}", rec.state);
    let error = rec.state.error.unwrap_or_default();
    assert!(error.contains("could not be recorded"), "{error}");
    assert_eq!(rec.resumptions, 0);
}

/// Holds each call `slow` after the first `free` of them for `delay` (an
/// index whose queue is long), counting those calls and the run renewals.
#[derive(Debug)]
struct SlowCalls {
    slow: &'static str,
    free: u64,
    delay: Duration,
    seen: std::sync::atomic::AtomicU64,
    renewals: std::sync::atomic::AtomicU64,
}

impl SlowCalls {
    fn new(slow: &'static str, free: u64, delay: Duration) -> Self {
        Self {
            slow,
            free,
            delay,
            seen: Default::default(),
            renewals: Default::default(),
        }
    }
}

impl crate::gate::Gate for SlowCalls {
    fn enter(
        &self,
        call: &'static str,
        _subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        use std::sync::atomic::Ordering;
        if call == "renew_run" {
            self.renewals.fetch_add(1, Ordering::SeqCst);
        }
        let held = call == self.slow && self.seen.fetch_add(1, Ordering::SeqCst) >= self.free;
        let delay = if held { self.delay } else { Duration::ZERO };
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Box::new(()) as crate::gate::Pass
        })
    }
}

/// A final state the index takes long to answer (a job array's burst of
/// final states queued in it) keeps its place: sent once, not cut off at
/// half a run lease and sent again behind the queue, and the run renewed
/// meanwhile, so no other replica takes the finished warm over.
#[tokio::test]
async fn a_final_state_that_waits_long_for_the_index_is_sent_once_and_its_run_kept() {
    use crate::index::CountingIndex;
    use std::sync::atomic::Ordering;
    let gate = Arc::new(SlowCalls::new(
        "finish_operation",
        0,
        Duration::from_millis(1_500),
    ));
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(gate.clone()),
    );
    // A lapsed run is taken over 500 ms after its last renewal.
    let settings = |replica: &str| OpsSettings {
        replica: replica.into(),
        skew_margin: Duration::from_millis(100),
        ..short_runs()
    };
    let (ops, _store) = fleet_member_with(Arc::clone(&index), 5, 1, settings("r1"));
    let (other, _) = fleet_member_with(Arc::clone(&index), 5, 1, settings("r2"));
    let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let id = rx.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while gate.seen.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let renewals = gate.renewals.load(Ordering::SeqCst);
    while ops.live().contains_key(&id) {
        assert_eq!(other.adopt_orphans().await.unwrap(), 0, "taken over while it recorded");
        assert!(t0.elapsed() < Duration::from_secs(10), "still recording");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gate.seen.load(Ordering::SeqCst), 1, "the final state sent once");
    assert!(
        gate.renewals.load(Ordering::SeqCst) > renewals,
        "the run renewed while its final state waited"
    );
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{:?}", rec.state);
    assert_eq!(rec.resumptions, 0);
}

/// Operation "x" of attempt 1, which wrote a lease on d/ until `now +
/// lease_ms` and checkpointed its epoch, then lost its replica.
async fn orphan_with_a_lease(index: &Arc<SqliteIndex>, lease_ms: i64) -> i64 {
    use crate::core::clock::Clock;
    use crate::index::Lease;
    let now = crate::core::clock::SystemClock.now();
    let lease = index
        .extend_lease(
            &Lease::new("cache--use1-az4--x-s3", "d/", "src", now + lease_ms),
            now,
        )
        .await
        .unwrap();
    let mut rec = unfinished("x", 0);
    rec.state.lease_epochs = vec![("d/".into(), lease.epoch.clone())];
    index.create_operation(&rec).await.unwrap();
    now
}

/// Another replica takes "x" over and runs it to the end: its final
/// record and the copies it sent.
async fn taken_over(index: &Arc<SqliteIndex>) -> (OperationRecord, u64) {
    let (ops, store) = fleet_member(Arc::clone(index), 5, 1);
    assert_eq!(ops.adopt_orphans().await.unwrap(), 1);
    let t0 = std::time::Instant::now();
    while ops.live().contains_key("x") {
        assert!(t0.elapsed() < Duration::from_secs(10), "still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = index.get_operation("x").await.unwrap().unwrap();
    let copies = store.calls.copy.load(std::sync::atomic::Ordering::Relaxed);
    (rec, copies)
}

#[tokio::test]
async fn a_takeover_carries_the_lease_epochs_so_an_evict_is_not_undone() {
    let index = Arc::new(SqliteIndex::open_in_memory().unwrap());
    let now = orphan_with_a_lease(&index, 60_000).await;
    // An Evict ended the lease while nobody ran the warm.
    let ended = index
        .end_leases("cache--use1-az4--x-s3", "d/", now)
        .await
        .unwrap();
    assert_eq!(ended.len(), 1);
    let (rec, copies) = taken_over(&index).await;
    assert_eq!(
        rec.state.outcome,
        Some(Outcome::Cancelled),
        "as a single attempt would end: {:?}",
        rec.state
    );
    assert_eq!(copies, 0, "nothing copied back behind the evict");
}

#[tokio::test]
async fn a_takeover_after_the_lease_lapsed_ends_cancelled_and_says_why() {
    let index = Arc::new(SqliteIndex::open_in_memory().unwrap());
    // A lease of 50 ms; the replica (or the index) was out for longer.
    orphan_with_a_lease(&index, 50).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (rec, copies) = taken_over(&index).await;
    assert_eq!(
        rec.state.outcome,
        Some(Outcome::Cancelled),
        "{:?}",
        rec.state
    );
    let error = rec.state.error.unwrap_or_default();
    assert!(
        error.contains("lapsed") && error.contains("out for longer than its TTL"),
        "{error}"
    );
    assert_eq!(copies, 0, "nothing counted as ready under a lapsed lease");
}

/// Counts the calls of each name per subject (operation id).
#[derive(Debug, Default)]
struct Tally(std::sync::Mutex<std::collections::HashMap<(&'static str, String), u64>>);

impl Tally {
    fn of(&self, call: &'static str, subject: &str) -> u64 {
        let calls = self.0.lock().unwrap();
        calls.get(&(call, subject.to_owned())).copied().unwrap_or(0)
    }
}

impl crate::gate::Gate for Tally {
    fn enter(
        &self,
        call: &'static str,
        subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        *self
            .0
            .lock()
            .unwrap()
            .entry((call, subject.to_owned()))
            .or_default() += 1;
        Box::pin(async { Box::new(()) as crate::gate::Pass })
    }
}

#[tokio::test]
async fn joiners_renew_and_checkpoint_their_runs_rarely_so_a_herd_costs_the_index_little() {
    use crate::index::CountingIndex;
    let tally = Arc::new(Tally::default());
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap())
            .with_gate(Arc::clone(&tally) as Arc<dyn crate::gate::Gate>),
    );
    // 150 copies, 2 at a time, 20 ms each: one and a half seconds of work
    // that the herd below waits for (runs of 400 ms, renewed every 100 ms).
    let (ops, _store) = fleet_member(Arc::clone(&index), 150, 20);
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
        ids.push(rx.borrow().operation_id.clone());
    }
    let t0 = std::time::Instant::now();
    while ids.iter().any(|id| ops.live().contains_key(id)) {
        assert!(t0.elapsed() < Duration::from_secs(30), "still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let mut joiners = 0;
    for id in &ids {
        let rec = index.get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}");
        let writes = tally.of("renew_run", id) + tally.of("update_operation", id);
        // A leader renews every 100 ms and checkpoints every 100 ms: about
        // 20 writes a second. A joiner's run is renewed every 800 ms, and
        // checkpointed (every 600 ms) only when its progress moved.
        let most = 4 * took.as_millis() as u64 / 1000 + 4;
        if writes <= most {
            joiners += 1;
        }
    }
    assert!(
        joiners >= 18,
        "at most two warms of the twenty lead (this round and the next); the rest join, \
         and each should write at most 4 a second, but only {joiners} did (took {took:?})"
    );
}

#[tokio::test]
async fn a_joiner_does_not_take_an_answer_from_a_listing_older_than_its_arrival() {
    // The warm it joined was joinable (queued) when it joined, then taken
    // over by another replica, whose attempt answered from a recent warm
    // (its own max_staleness of an hour) instead of listing: that listing
    // is older than the joiner, which asked for a fresh one.
    let index = Arc::new(SqliteIndex::open_in_memory().unwrap());
    let (ops, _store) = fleet_member(Arc::clone(&index), 3, 1);
    let spec = unfinished("x", 0).request;
    let (progress, _rx) = Progress::new("joiner".into(), Arc::new(crate::core::clock::SystemClock));
    let stop = crate::stop::StopSignal::default();
    let ticket = RunTicket {
        replica: "here".into(),
        attempt: 1,
    };
    let attempt = round::Attempt {
        id: "joiner",
        spec: &spec,
        progress: &progress,
        owner: "joiner#1",
        stop: &stop,
        ticket: &ticket,
        whole: true,
    };
    let leader = OperationState {
        phase: crate::core::operation::Phase::Queued,
        ..OperationState::queued("leader", 1)
    };
    let (tx, rx) = tokio::sync::watch::channel(leader.clone());
    let answered = OperationState {
        fresh_from_operation_id: Some("an-hour-ago".into()),
        ..leader.ended(Outcome::Succeeded, None)
    };
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(answered).unwrap();
        tx
    });
    let followed = ops.follow_leader(&attempt, "leader", rx, false).await;
    drop(send.await);
    assert!(
        matches!(followed, round::Followed::LeaderGone),
        "the joiner must list anew, not report ready from an earlier listing: {followed:?}"
    );
}

/// Holds every copy until opened.
#[derive(Debug)]
struct HoldsCopies(tokio::sync::watch::Sender<bool>);

impl crate::gate::Gate for HoldsCopies {
    fn enter(
        &self,
        call: &'static str,
        _subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        let mut open = self.0.subscribe();
        let held = call == "copy";
        Box::pin(async move {
            if held {
                let _ = open.wait_for(|o| *o).await;
            }
            Box::new(()) as crate::gate::Pass
        })
    }
}

/// Waits until `ops` no longer runs `id` (at most 10 s).
async fn until_ended(ops: &Operations, id: &str) {
    let t0 = std::time::Instant::now();
    while ops.live().contains_key(id) {
        assert!(t0.elapsed() < Duration::from_secs(10), "still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A run whose deadline passed while its listing was under way, and that
/// was renewed after the listing had stopped at the deadline (while
/// copies sent before it were still in flight): the attempt left keys
/// unlisted, so it records nothing and hands the run on; it is never
/// SUCCEEDED with work undone. Another replica then finishes the warm.
#[tokio::test]
async fn a_listing_cut_at_the_deadline_then_renewed_late_is_handed_on_not_succeeded() {
    use crate::core::clock::{Clock, ManualClock, SystemClock};
    use crate::index::CountingIndex;
    use crate::store::{FaultStore, Op};
    use std::sync::atomic::Ordering;
    let mem = MemoryStore::with_page_size(10);
    mem.create_bucket("src");
    mem.create_bucket("cache--use1-az4--x-s3");
    for i in 0..200 {
        mem.put("src", &format!("d/{i:03}"), 10);
    }
    // 20 pages of 10 keys, 50 ms each: a second of listing; copies held
    // until the test opens them.
    let copies = Arc::new(HoldsCopies(tokio::sync::watch::channel(false).0));
    let store = Arc::new(FaultStore::new(mem).with_gate(copies.clone()));
    store.delay(Op::List, Duration::from_millis(50));
    let renewals = Arc::new(RenewalsOf::default());
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(renewals.clone()),
    );
    // The replica's wall clock stands still: by it the run needs no
    // renewal yet, while its 400 ms pass in real time and the listing
    // stops at the deadline.
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let warmer = Arc::new(Warmer::new(
        store.clone(),
        index.clone(),
        clock.clone(),
        WarmSettings::default(),
    ));
    let settings = short_runs();
    let ops = Arc::new(Operations::new(
        warmer,
        index.clone(),
        settings,
        Limits::default(),
    ));
    let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let id = rx.borrow().operation_id.clone();
    // The listing stops at the deadline: no page asked for in 200 ms,
    // four pages' time.
    let lists = || store.calls.list.load(Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    loop {
        let before = lists();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if lists() == before && t0.elapsed() >= Duration::from_millis(400) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the listing went on");
    }
    assert!(lists() < 20, "the listing stopped early: {} pages", lists());
    assert_eq!(renewals.total(), 0, "not renewed yet");
    // The clock moves on: the keeper renews the run now, after the
    // listing stopped at the deadline, and the renewal is granted; then
    // the copies in flight end.
    clock.advance(150);
    let t0 = std::time::Instant::now();
    while renewals.total() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "never renewed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    copies.0.send_replace(true);
    until_ended(&ops, &id).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert!(
        !rec.is_done(),
        "an attempt whose listing stopped at its deadline records no outcome: {:?}",
        rec.state
    );
    // Handed on: another replica's next look takes it over and finishes
    // it, once the warm's first run lease may have passed (it is younger,
    // and its replica stays up: fleet/adopt.rs, `must_read`).
    store.clear();
    let defaults = OpsSettings::default();
    let later = SystemClock.now() + (defaults.run_ttl + defaults.skew_margin).as_millis() as i64;
    let other = Arc::new(Operations::new(
        Arc::new(Warmer::new(
            store.clone(),
            index.clone(),
            Arc::new(ManualClock::new(later)),
            WarmSettings::default(),
        )),
        index.clone(),
        OpsSettings {
            replica: "other".into(),
            ..OpsSettings::default()
        },
        Limits::default(),
    ));
    assert_eq!(other.adopt_orphans().await.unwrap(), 1);
    until_ended(&other, &id).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{:?}", rec.state);
    assert_eq!(store.inner().keys("cache--use1-az4--x-s3").len(), 200);
}

/// Passes every call, counting each operation's run renewals.
#[derive(Debug, Default)]
struct RenewalsOf(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl RenewalsOf {
    fn of(&self, id: &str) -> u64 {
        let counts = self.0.lock().unwrap();
        counts.get(id).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

impl crate::gate::Gate for RenewalsOf {
    fn enter(
        &self,
        call: &'static str,
        subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        if call == "renew_run" {
            *self.0.lock().unwrap().entry(subject.to_owned()).or_default() += 1;
        }
        Box::pin(async { Box::new(()) as crate::gate::Pass })
    }
}

/// A job array's rounds queue behind the one under way: a warm waiting for
/// its round copies nothing, so its run is renewed like a joiner's, not
/// every renewal interval (on a fleet, a burst of rounds each renewing
/// every second was what a slow index could not keep up with).
#[tokio::test]
async fn a_warm_waiting_for_the_round_under_way_renews_its_run_like_a_joiner() {
    use crate::core::operation::Phase;
    use crate::index::CountingIndex;
    let renewals = Arc::new(RenewalsOf::default());
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(renewals.clone()),
    );
    // 100 copies, 2 at a time, 20 ms each: a second of work.
    let (ops, _store) = fleet_member(Arc::clone(&index), 100, 20);
    let first = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let a = first.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while first.borrow().phase == Phase::Queued {
        assert!(t0.elapsed() < Duration::from_secs(5), "never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same data again while the first lists: it leads the next round.
    let second = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let b = second.borrow().operation_id.clone();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(ops.live().contains_key(&a), "the first round still runs");
    assert!(
        renewals.of(&a) >= 4,
        "the round under way renews every interval: {}",
        renewals.of(&a)
    );
    assert!(
        renewals.of(&b) <= 2,
        "the waiting warm renews like a joiner: {} renewals in 700 ms",
        renewals.of(&b)
    );
    until_ended(&ops, &b).await;
    let rec = index.get_operation(&b).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{:?}", rec.state);
}

/// A job array's joiners whose round ends before a third of their first
/// lease (their creation's) is used write no renewal: renewed at once to
/// move on to a follower's long lease, each of a thousand launchers wrote
/// one or two in the burst, as many writes as their creations.
#[tokio::test]
async fn joiners_whose_round_ends_within_a_third_of_their_first_lease_write_no_renewal() {
    use crate::index::CountingIndex;
    let renewals = Arc::new(RenewalsOf::default());
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(renewals.clone()),
    );
    // 80 copies, 2 at a time, 10 ms each: about 400 ms of work, well
    // within a third of a 4 s lease; a copier renews every 100 ms.
    let settings = OpsSettings {
        run_ttl: Duration::from_secs(4),
        ..short_runs()
    };
    let (ops, _store) = fleet_member_with(Arc::clone(&index), 80, 10, settings);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
        ids.push(rx.borrow().operation_id.clone());
    }
    for id in &ids {
        until_ended(&ops, id).await;
        let rec = index.get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}");
    }
    let leader = &ids[0];
    assert!(
        renewals.of(leader) >= 2,
        "the warm that copies renews every interval: {}",
        renewals.of(leader)
    );
    // One warm may lead the next round (it arrived once the first was
    // listing): it copies nothing, but lists, renewing as a copier does.
    let renewed: Vec<_> = ids[1..].iter().filter(|id| renewals.of(id) > 0).collect();
    assert!(
        renewed.len() <= 1,
        "joiners renewed their runs, though their round ended long before a third of their lease: \
         {renewed:?}"
    );
}

/// Hangs the first `renew_run` of every operation but the one set in
/// `.0` (a round's leader), and counts each operation's renewals.
#[derive(Debug, Default)]
struct FirstRenewalHangs(std::sync::OnceLock<String>, RenewalsOf);

impl crate::gate::Gate for FirstRenewalHangs {
    fn enter(
        &self,
        call: &'static str,
        subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        let spared = self.0.get().is_some_and(|leader| leader == subject);
        let pass = self.1.enter(call, subject);
        if call == "renew_run" && !spared && self.1.of(subject) == 1 {
            Box::pin(std::future::pending())
        } else {
            pass
        }
    }
}

/// A job array's joiners, still on their creation's lease, meet an index
/// that hangs their first renewal (a saturated table): each try may take
/// at most half of what is left of the deadline, so another fits before
/// it; the joiners end SUCCEEDED by their first attempt. Before, a
/// follower renewed with half its lease left and let one try take all of
/// it: the hung renewal used up the deadline and the run was handed on.
#[tokio::test]
async fn joiners_whose_first_renewal_hangs_renew_again_within_their_lease_and_finish() {
    let gate = Arc::new(FirstRenewalHangs::default());
    for id in joiners_renewing_through(gate.clone(), |_| {}, &gate.0).await {
        let n = gate.1.of(&id);
        assert!(n >= 2, "{id}: its first renewal hung, then another landed ({n} tries)");
    }
}

/// As above, the index throttled (answered unavailable) the first nine
/// renewals, or lost their replies after they took effect: each is tried
/// again before the deadline and finds the run held.
#[tokio::test]
async fn joiners_whose_renewals_are_throttled_or_their_replies_lost_renew_again_and_finish() {
    for fault in [
        (|i: &crate::index::CountingIndex<SqliteIndex>| i.fail("renew_run", 9))
            as fn(&crate::index::CountingIndex<SqliteIndex>),
        |i| i.lose_reply("renew_run", 9),
    ] {
        let counts = Arc::new(RenewalsOf::default());
        joiners_renewing_through(counts.clone(), fault, &Default::default()).await;
        assert!(counts.total() >= 9, "the faults were met: {}", counts.total());
    }
}

/// Ten warms of the same data on one replica through `gate` and `fault`,
/// 1 s run leases: the first copies for about 1.5 s, the rest join it and
/// must renew their creation's lease once to outlive it. Asserts each
/// ends SUCCEEDED by its first attempt (no takeover, no hand-on); `leader`
/// is set to the first warm's id once it is submitted. Returns the
/// joiners' ids.
async fn joiners_renewing_through(
    gate: Arc<dyn crate::gate::Gate>,
    fault: impl FnOnce(&crate::index::CountingIndex<SqliteIndex>),
    leader: &std::sync::OnceLock<String>,
) -> Vec<String> {
    use crate::index::CountingIndex;
    let index =
        Arc::new(CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(gate));
    fault(&index);
    let settings = OpsSettings {
        run_ttl: Duration::from_secs(1),
        ..short_runs()
    };
    // 150 copies, 2 at a time, 20 ms each: 1.5 s, past the joiners' lease.
    let (ops, store) = fleet_member_with(Arc::clone(&index), 150, 20, settings);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
        ids.push(rx.borrow().operation_id.clone());
        leader.get_or_init(|| ids[0].clone());
    }
    for id in &ids {
        until_ended(&ops, id).await;
        let rec = index.get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}: {:?}", rec.state);
        assert_eq!(rec.resumptions, 0, "{id}: finished by its first attempt");
    }
    assert_eq!(store.inner().keys("cache--use1-az4--x-s3").len(), 150);
    ids.split_off(1)
}

/// Holds every call named `.0` for `.1` before letting it through.
#[derive(Debug)]
struct Slow(&'static str, Duration);

impl crate::gate::Gate for Slow {
    fn enter(
        &self,
        call: &'static str,
        _subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        let pause = (call == self.0).then_some(self.1);
        Box::pin(async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            Box::new(()) as crate::gate::Pass
        })
    }
}

/// An index slow to answer (a job array's burst queued in it) creates the
/// operation after the run's first deadline passed: the warm renews its
/// run before it starts and finishes, instead of starting past its
/// deadline and handing itself on (on a fleet, every replica in turn).
#[tokio::test]
async fn a_warm_whose_creation_the_index_answered_late_renews_its_run_and_finishes() {
    late_grant_renewed_through(|_| {}).await;
}

/// As above, the renewal before the start took effect but its reply was
/// lost: the next try finds the run held, and the warm finishes.
#[tokio::test]
async fn a_late_grant_whose_renewal_reply_is_lost_renews_again_and_finishes() {
    late_grant_renewed_through(|index| index.lose_reply("renew_run", 1)).await;
}

/// As above, the index throttled (answered unavailable) the first two
/// renewals: they are tried again within half a lease.
#[tokio::test]
async fn a_late_grant_whose_renewals_are_throttled_renews_again_and_finishes() {
    late_grant_renewed_through(|index| index.fail("renew_run", 2)).await;
}

/// Creation answers 700 ms after it was sent, past the 400 ms run lease,
/// and `fault` is set on the index: the warm still ends SUCCEEDED by its
/// own first attempt (not a takeover), every object copied.
async fn late_grant_renewed_through(
    fault: impl FnOnce(&crate::index::CountingIndex<SqliteIndex>),
) {
    use crate::index::CountingIndex;
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(Arc::new(Slow(
            "create_operation",
            Duration::from_millis(700),
        ))),
    );
    fault(&index);
    let (ops, store) = fleet_member(Arc::clone(&index), 20, 5);
    let id = run_to_end(&ops).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{:?}", rec.state);
    assert_eq!(
        rec.resumptions, 0,
        "finished by its first attempt, renewed, not resumed by a takeover"
    );
    assert_eq!(store.inner().keys("cache--use1-az4--x-s3").len(), 20);
}

/// Creation answers 700 ms late (past the 400 ms run lease); the first
/// run renewal, the one before the warm starts, then hangs, or comes after
/// another replica took the lapsed run over.
struct LateGrant {
    renewed: std::sync::atomic::AtomicBool,
    first_renewal: FirstRenewal,
}

enum FirstRenewal {
    Hangs,
    AfterTakeoverBy(std::sync::OnceLock<Arc<Operations>>),
}

impl std::fmt::Debug for LateGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateGrant")
    }
}

impl crate::gate::Gate for LateGrant {
    fn enter(
        &self,
        call: &'static str,
        _subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        use std::sync::atomic::Ordering;
        let first_renewal = call == "renew_run" && !self.renewed.swap(true, Ordering::SeqCst);
        match (call, &self.first_renewal) {
            ("create_operation", _) => Box::pin(async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                Box::new(()) as crate::gate::Pass
            }),
            (_, FirstRenewal::Hangs) if first_renewal => Box::pin(std::future::pending()),
            (_, FirstRenewal::AfterTakeoverBy(other)) if first_renewal => {
                let other = Arc::clone(other.get().expect("the other replica is set"));
                Box::pin(async move {
                    assert_eq!(other.adopt_orphans().await.unwrap(), 1, "taken over");
                    Box::new(()) as crate::gate::Pass
                })
            }
            _ => Box::pin(async { Box::new(()) as crate::gate::Pass }),
        }
    }
}

/// Replica "here" runs a warm through a [`LateGrant`]`(first_renewal)`
/// index; replica "other" shares the index, with a store of its own.
/// Returns both, their stores, and the index.
#[allow(clippy::type_complexity)]
async fn late_grant_meets(
    first_renewal: FirstRenewal,
) -> (
    String,
    (Arc<Operations>, Arc<SlowStore>),
    (Arc<Operations>, Arc<SlowStore>),
    Arc<crate::index::CountingIndex<SqliteIndex>>,
) {
    use crate::index::CountingIndex;
    let gate = Arc::new(LateGrant {
        renewed: Default::default(),
        first_renewal,
    });
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(gate.clone()),
    );
    let as_replica = |replica: &str| OpsSettings {
        replica: replica.into(),
        // Takes a lapsed run over at once, not a skew margin later.
        skew_margin: Duration::ZERO,
        ..short_runs()
    };
    let here = fleet_member_with(Arc::clone(&index), 20, 5, as_replica("here"));
    let other = fleet_member_with(Arc::clone(&index), 20, 5, as_replica("other"));
    if let FirstRenewal::AfterTakeoverBy(cell) = &gate.first_renewal {
        cell.set(Arc::clone(&other.0)).ok();
    }
    let id = run_to_end(&here.0).await;
    (id, here, other, index)
}

/// The run the index granted late was taken over by another replica
/// before this one renewed it: the renewal finds it lost, this attempt
/// sends no request to S3, and the replica that took it over finishes it.
#[tokio::test]
async fn a_late_grant_taken_over_before_its_renewal_sends_nothing_and_the_taker_finishes() {
    use std::sync::atomic::Ordering;
    let (id, (_, store), (other, others_store), index) =
        late_grant_meets(FirstRenewal::AfterTakeoverBy(Default::default())).await;
    until_ended(&other, &id).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{:?}", rec.state);
    assert_eq!(rec.resumptions, 1, "one takeover");
    assert_eq!(store.calls.copy.load(Ordering::SeqCst), 0, "no copy sent");
    assert_eq!(store.calls.list.load(Ordering::SeqCst), 0, "no listing sent");
    assert_eq!(others_store.inner().keys("cache--use1-az4--x-s3").len(), 20);
}

/// The renewal before the start hangs: after half a lease the warm starts
/// on its grant, already past; it sends nothing, records nothing and hands
/// the run on, and another replica's next look finishes it.
#[tokio::test]
async fn a_late_grant_whose_renewal_hangs_sends_nothing_and_is_handed_on() {
    use std::sync::atomic::Ordering;
    let (id, (_, store), (other, others_store), index) =
        late_grant_meets(FirstRenewal::Hangs).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert!(!rec.is_done(), "no outcome recorded: {:?}", rec.state);
    assert_eq!(store.calls.copy.load(Ordering::SeqCst), 0, "no copy sent");
    assert_eq!(store.calls.list.load(Ordering::SeqCst), 0, "no listing sent");
    assert_eq!(other.adopt_orphans().await.unwrap(), 1, "handed on");
    until_ended(&other, &id).await;
    let rec = index.get_operation(&id).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{:?}", rec.state);
    assert_eq!(others_store.inner().keys("cache--use1-az4--x-s3").len(), 20);
}

/// The warm a herd joined ends without finishing (here: cancelled; on a
/// slow index, a leader whose run was taken over before its final state
/// was recorded): of the warms it left, one leads the next round and the
/// rest join it, so the data is listed again in a round or a few, not
/// once per joiner.
/// Another replica is registered alive, so each joiner looks for a warm
/// there before it leads: they come back from that lookup together, as a
/// job array's joiners did when 331 of them listed 1,000 times. Without
/// the fix, the 18 joiners here each led a round (18 listings).
#[tokio::test]
async fn joiners_left_by_their_leader_join_one_new_leader_not_one_each() {
    use crate::core::clock::Clock;
    use crate::index::ReplicaRegistry;
    use std::sync::atomic::Ordering;
    let index = Arc::new(SqliteIndex::open_in_memory().unwrap());
    // 100 copies of 20 ms, 2 at a time: a second of work.
    let (ops, store) = fleet_member(Arc::clone(&index), 100, 20);
    let until = crate::core::clock::SystemClock.now() + 3_600_000;
    index.heartbeat("other", until).await.unwrap();
    ops.heartbeat().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
        ids.push(rx.borrow().operation_id.clone());
    }
    // Listing pages take 300 ms from now: the joiners' round leader (the
    // round after the first, which was listing when they arrived) is
    // caught listing, and the joiners show its phase.
    store.delay(crate::store::Op::List, Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    let leader = loop {
        let shown = ops.live().get(&ids[19]).map(|op| op.progress.snapshot());
        if let Some(s) = shown {
            if s.phase != crate::core::operation::Phase::Queued {
                if let Some(leader) = s.joined_operation_id {
                    break leader;
                }
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never joined a copying leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let listed_before = store.calls.list.load(Ordering::SeqCst);
    ops.cancel(&leader).await.unwrap();
    for id in &ids {
        until_ended(&ops, id).await;
    }
    let lists = store.calls.list.load(Ordering::SeqCst) - listed_before;
    // One round, or two (one listing when they come back, the next round
    // queued behind it), and the cancelled leader's own page in flight.
    assert!(
        lists <= 4,
        "the warms the leader left list again in a round or two, not each: {lists}"
    );
    // The 18 it left: at most two led, each of the others joined one of
    // those (or the first round, which ended before them).
    let mut led = Vec::new();
    let mut followed = Vec::new();
    for id in ids.iter().filter(|id| **id != leader && **id != ids[0]) {
        let rec = index.get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}");
        match rec.state.joined_operation_id {
            None => led.push(id.clone()),
            Some(l) => followed.push(l),
        }
    }
    assert!(led.len() <= 2, "{} of the 18 led a round", led.len());
    assert!(
        followed.iter().all(|l| led.contains(l)),
        "the others joined one of the new leaders: {followed:?} {led:?}"
    );
}

/// Operations over an index whose creations after the first two wait
/// `creation` (a job array's burst queued in the index), 20 objects
/// copied 20 ms each two at a time (a first round of some 200 ms; the next
/// finds everything cached), and the first warm submitted and listing.
async fn a_round_under_way(
    creation: Duration,
    settings: OpsSettings,
) -> (
    Arc<Operations>,
    Arc<SlowStore>,
    Arc<crate::index::CountingIndex<SqliteIndex>>,
    String,
) {
    let gate = Arc::new(SlowCalls::new("create_operation", 2, creation));
    let index = Arc::new(
        crate::index::CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(gate),
    );
    let (ops, store) = fleet_member_with(Arc::clone(&index), 20, 20, settings);
    let first = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let a = first.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while ops.live().get(&a).map(|op| op.progress.phase()) == Some(Phase::Queued) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the first never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ops, store, index, a)
}

/// A warm submitted while a round was listing, whose creation then waits
/// in the index past the end of that round, joins the next round: that
/// round waits for it rather than list without it, which would leave it
/// a round (and a listing) of its own.
#[tokio::test]
async fn a_warm_still_being_created_when_a_round_ends_joins_the_next_round() {
    use std::sync::atomic::Ordering;
    let (ops, store, index, a) = a_round_under_way(Duration::from_secs(1), short_runs()).await;
    // Arrives while the first lists: leads the next round.
    let second = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let b = second.borrow().operation_id.clone();
    // Arrives too, but its creation takes a second.
    let third = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let c = third.borrow().operation_id.clone();
    for id in [&a, &b, &c] {
        until_ended(&ops, id).await;
    }
    let joined = index.get_operation(&c).await.unwrap().unwrap().state;
    assert_eq!(joined.outcome, Some(Outcome::Succeeded), "{joined:?}");
    assert_eq!(
        joined.joined_operation_id.as_deref(),
        Some(b.as_str()),
        "the late-created warm joined the second round"
    );
    assert_eq!(
        store.calls.list.load(Ordering::SeqCst),
        2,
        "two rounds listed, not three"
    );
}

/// A warm whose creation hangs in the index holds the next round back at
/// most `gather_at_most`: the round then lists without it, and the warm,
/// once created, runs a round of its own.
#[tokio::test]
async fn a_round_waits_for_a_hung_creation_only_a_bounded_while() {
    use std::sync::atomic::Ordering;
    let settings = OpsSettings {
        gather_at_most: Duration::from_millis(300),
        ..short_runs()
    };
    let (ops, store, index, _) = a_round_under_way(Duration::from_millis(2_500), settings).await;
    let t0 = std::time::Instant::now();
    let second = ops.submit(unfinished("x", 0).request, None).await.unwrap();
    let b = second.borrow().operation_id.clone();
    let late = {
        let ops = Arc::clone(&ops);
        tokio::spawn(async move { ops.submit(unfinished("x", 0).request, None).await })
    };
    until_ended(&ops, &b).await;
    let second_ended = t0.elapsed();
    assert!(
        second_ended < Duration::from_millis(2_000),
        "the second round waited for the hung creation: ended after {second_ended:?}"
    );
    let third = late.await.unwrap().unwrap();
    let c = third.borrow().operation_id.clone();
    until_ended(&ops, &c).await;
    let state = index.get_operation(&c).await.unwrap().unwrap().state;
    assert_eq!(state.outcome, Some(Outcome::Succeeded), "{state:?}");
    assert_eq!(state.joined_operation_id, None, "it led a round of its own");
    assert_eq!(store.calls.list.load(Ordering::SeqCst), 3);
}

/// Two replicas on one index, `copy_ms` per copy of 20 objects, each
/// knowing the other alive.
async fn two_replicas(
    copy_ms: u64,
) -> (
    Arc<SqliteIndex>,
    [(Arc<Operations>, Arc<SlowStore>); 2],
) {
    let index = Arc::new(SqliteIndex::open_in_memory().unwrap());
    let member = |name: &str| {
        fleet_member_with(
            Arc::clone(&index),
            20,
            copy_ms,
            OpsSettings {
                replica: name.into(),
                run_ttl: Duration::from_secs(2),
                renew_every: Duration::from_millis(200),
                ..short_runs()
            },
        )
    };
    let (one, two) = (member("one"), member("two"));
    one.0.heartbeat().await.unwrap();
    assert_eq!(two.0.heartbeat().await.unwrap(), 2);
    assert_eq!(one.0.heartbeat().await.unwrap(), 2);
    (index, [one, two])
}

fn lists(stores: &[&Arc<SlowStore>]) -> u64 {
    stores
        .iter()
        .map(|s| s.calls.list.load(std::sync::atomic::Ordering::SeqCst))
        .sum()
}

/// A job array arriving on two replicas at once lists the data once, not
/// once per replica: each replica's first warm of the burst waits a moment
/// offered, the younger finds the older on the other replica and joins
/// it, and every other warm joins one of them. Before, each replica's
/// first warm listed at once (two listings here; 18 in the 1,000-launcher
/// herd on three replicas, where one warm lists 3).
#[tokio::test]
async fn a_burst_on_two_replicas_lists_once_not_once_per_replica() {
    let (index, [(one, one_store), (two, two_store)]) = two_replicas(20).await;
    let submits: Vec<_> = (0..16)
        .map(|i| {
            let ops = Arc::clone(if i % 2 == 0 { &one } else { &two });
            tokio::spawn(async move {
                let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
                let id = rx.borrow().operation_id.clone();
                (ops, id)
            })
        })
        .collect();
    let mut warms = Vec::new();
    for s in submits {
        warms.push(s.await.unwrap());
    }
    for (ops, id) in &warms {
        until_ended(ops, id).await;
    }
    let mut leaders = std::collections::BTreeSet::new();
    for (_, id) in &warms {
        let state = index.get_operation(id).await.unwrap().unwrap().state;
        assert_eq!(state.outcome, Some(Outcome::Succeeded), "{id}: {state:?}");
        let mut at = id.clone();
        // Followed to the warm that listed (a joiner of a joiner counts).
        while let Some(next) = index
            .get_operation(&at)
            .await
            .unwrap()
            .unwrap()
            .state
            .joined_operation_id
        {
            at = next;
        }
        leaders.insert(at);
    }
    assert_eq!(leaders.len(), 1, "one warm listed for all: {leaders:?}");
    assert_eq!(lists(&[&one_store, &two_store]), 1, "listed once");
}

/// The first warms of a burst on two replicas, where replica two's offer
/// takes 3 s to write (an index slowed by the burst's creations) and
/// replica one's lands at once: replica two's warm looks for an older
/// offered warm while its own offer is on its way, finds replica one's
/// within a lookup, and joins it. Looking only once its own offer had
/// landed, it found replica one's window closed and its round listing,
/// and listed too (the cold herd's 9 listings where 6 are the rule).
#[tokio::test]
async fn a_burst_s_warm_whose_offer_is_slow_to_land_joins_the_older_round_meanwhile() {
    use crate::index::CountingIndex;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.db");
    let (one, one_store) = fleet_member_with(
        Arc::new(SqliteIndex::open(&path).unwrap()),
        20,
        20,
        as_replica("one"),
    );
    let slow_offers = CountingIndex::new(SqliteIndex::open(&path).unwrap())
        .with_gate(Arc::new(Slow("offer_join", Duration::from_secs(3))));
    let (two, two_store) = fleet_member_with(Arc::new(slow_offers), 20, 20, as_replica("two"));
    one.heartbeat().await.unwrap();
    assert_eq!(two.heartbeat().await.unwrap(), 2);
    assert_eq!(one.heartbeat().await.unwrap(), 2);
    // Replica two looks for offered warms now (none) and reuses that for
    // a second: its warms arriving meanwhile cannot join at arrival.
    assert!(two.joinable_lookup().await.unwrap().is_empty());
    let burst = |ops: &Arc<Operations>| -> Vec<_> {
        (0..4)
            .map(|_| {
                let ops = Arc::clone(ops);
                tokio::spawn(async move {
                    let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
                    let id = rx.borrow().operation_id.clone();
                    (ops, id)
                })
            })
            .collect()
    };
    // Replica one's burst first: its first warm is the older.
    let mut submits = burst(&one);
    tokio::time::sleep(Duration::from_millis(50)).await;
    submits.extend(burst(&two));
    let mut warms = Vec::new();
    for s in submits {
        warms.push(s.await.unwrap());
    }
    for (ops, id) in &warms {
        until_ended(ops, id).await;
    }
    for (ops, id) in &warms {
        let state = ops.index().get_operation(id).await.unwrap().unwrap().state;
        assert_eq!(state.outcome, Some(Outcome::Succeeded), "{id}: {state:?}");
    }
    assert_eq!(
        lists(&[&one_store, &two_store]),
        1,
        "replica two's first warm should have joined replica one's round, not listed beside it"
    );
}

/// A round under way on each of two replicas, then a warm that leads
/// the next round on replica one (the older, once offered) and one on
/// replica two (the younger): each replica's round, then the next
/// round's two leaders.
async fn next_rounds_on_two_replicas() -> (
    Arc<SqliteIndex>,
    [(Arc<Operations>, Arc<SlowStore>); 2],
    [String; 2],
    String,
    String,
) {
    let (index, [(one, one_store), (two, two_store)]) = two_replicas(250).await;
    // A round under way on each: 20 copies of 250 ms, 2 at a time (the
    // younger finds the older within a lookup or two, a second each).
    let first_one = one.submit(unfinished("x", 0).request, None).await.unwrap();
    let first_two = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let firsts = [
        first_one.borrow().operation_id.clone(),
        first_two.borrow().operation_id.clone(),
    ];
    let t0 = std::time::Instant::now();
    while lists(&[&one_store, &two_store]) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the first rounds never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Replica two looks for offered warms now (none), and reuses that
    // lookup for a second: the younger, arriving within it, cannot join
    // the older on arrival, as when both arrive at once; it leads, offered,
    // and joins the older once a later lookup finds it.
    assert!(two.joinable_lookup().await.unwrap().is_empty());
    let older = one.submit(unfinished("x", 0).request, None).await.unwrap();
    let older = older.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while index.offered_operations(10).await.unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "never offered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let younger = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let younger = younger.borrow().operation_id.clone();
    (
        index,
        [(one, one_store), (two, two_store)],
        firsts,
        older,
        younger,
    )
}

/// Each replica's next round waits for the round under way there; the
/// younger of the two waiting leaders finds the older on the other
/// replica and joins it, so the next round lists once for the fleet.
/// The younger one's replica looked for offered warms just before the
/// older offered itself, so it leads at first (as when both arrive at
/// once) and joins within a lookup or two.
#[tokio::test]
async fn of_two_replicas_next_rounds_the_younger_joins_the_older() {
    let (index, [(one, one_store), (two, two_store)], firsts, older, younger) =
        next_rounds_on_two_replicas().await;
    for (ops, id) in [(&one, &firsts[0]), (&two, &firsts[1]), (&one, &older), (&two, &younger)] {
        until_ended(ops, id).await;
    }
    let state = index.get_operation(&younger).await.unwrap().unwrap().state;
    assert_eq!(state.outcome, Some(Outcome::Succeeded), "{state:?}");
    assert_eq!(state.joined_operation_id.as_deref(), Some(older.as_str()));
    assert_eq!(
        lists(&[&one_store, &two_store]),
        3,
        "a first round on each replica, one next round for both"
    );
}

/// The older round the younger leader joined is cancelled before it
/// lists: the younger one (which withdrew its own offer to join it) is
/// queued again and does its own work, SUCCEEDED.
#[tokio::test]
async fn a_younger_leader_whose_older_round_is_cancelled_does_its_own_work() {
    let (index, [(one, _), (two, two_store)], firsts, older, younger) =
        next_rounds_on_two_replicas().await;
    let t0 = std::time::Instant::now();
    while two.live().get(&younger).and_then(|op| op.progress.joined()) != Some(older.clone()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "never joined the older");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    one.cancel(&older).await.unwrap();
    for (ops, id) in [(&one, &firsts[0]), (&two, &firsts[1]), (&one, &older), (&two, &younger)] {
        until_ended(ops, id).await;
    }
    let state = index.get_operation(&younger).await.unwrap().unwrap().state;
    assert_eq!(state.outcome, Some(Outcome::Succeeded), "{state:?}");
    assert_eq!(state.joined_operation_id, None, "it did its own work");
    assert_eq!(
        two_store.calls.list.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "replica two listed its first round and the younger's"
    );
}

/// Warm "older" of replica one, created a minute ago, its run held for an
/// hour, queued and offered: what a lookup on replica two finds.
async fn older_offered_on_replica_one(index: &SqliteIndex) -> (OperationRecord, RunTicket) {
    use crate::core::clock::Clock;
    let now = crate::core::clock::SystemClock.now();
    let ticket = RunTicket {
        replica: "one".into(),
        attempt: 1,
    };
    let mut older = unfinished("older", 0);
    older.created_at = now - 60_000;
    older.run = Some(crate::core::operation::RunLease {
        ticket: ticket.clone(),
        deadline: now + 3_600_000,
        cancel_requested: false,
        joinable: false,
    });
    older.state.phase = crate::core::operation::Phase::Queued;
    index.create_operation(&older).await.unwrap();
    assert!(index.offer_join("older", &ticket).await.unwrap());
    (older, ticket)
}

/// A younger leader that saw an older warm offered, but finds it no
/// longer offered once its own offer is withdrawn (the older began
/// listing meanwhile), does not join it: what that warm lists may predate
/// the warms that joined the younger one. It leads its round, joinable
/// here again.
#[tokio::test]
async fn a_younger_leader_does_not_join_an_older_that_began_listing_meanwhile() {
    let (index, [(_one, _), (two, two_store)]) = two_replicas(100).await;
    let first = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let first = first.borrow().operation_id.clone();
    // The older warm of replica one, offered, as a lookup saw it; then it
    // withdrew its offer to list.
    let (_, older_ticket) = older_offered_on_replica_one(&index).await;
    let seen = index.get_operation("older").await.unwrap().unwrap();
    assert!(index.withdraw_join("older", &older_ticket).await.unwrap());
    // The younger: leads the round after the one under way on replica two.
    let younger = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let younger = younger.borrow().operation_id.clone();
    let joinable = |id: String| {
        let index = Arc::clone(&index);
        async move {
            index
                .get_operation(&id)
                .await
                .unwrap()
                .and_then(|r| r.run)
                .is_some_and(|r| r.joinable)
        }
    };
    let t0 = std::time::Instant::now();
    while !joinable(younger.clone()).await {
        assert!(t0.elapsed() < Duration::from_secs(5), "never offered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (spec, progress, stop, ticket) = {
        let live = two.live();
        let op = live.get(&younger).unwrap();
        (
            op.request.clone(),
            Arc::clone(&op.progress),
            Arc::clone(&op.stop),
            op.ticket.clone(),
        )
    };
    let attempt = round::Attempt {
        id: &younger,
        spec: &spec,
        progress: &progress,
        owner: "younger#1",
        stop: &stop,
        ticket: &ticket,
        whole: true,
    };
    assert!(
        two.merge_into(&attempt, &seen).await.is_none(),
        "the older warm is no longer offered: not joined"
    );
    assert!(
        two.live().get(&younger).is_some_and(|op| op.leading.is_some()),
        "joinable here again"
    );
    assert!(!joinable(younger.clone()).await, "its own offer stays withdrawn");
    until_ended(&two, &first).await;
    until_ended(&two, &younger).await;
    let state = index.get_operation(&younger).await.unwrap().unwrap().state;
    assert_eq!(state.outcome, Some(Outcome::Succeeded), "{state:?}");
    assert_eq!(state.joined_operation_id, None);
    assert_eq!(two_store.calls.list.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A replica whose warm follows a round under way on another replica
/// (here: merged into it) has that round under way too: a warm arriving
/// there then leads the next round, after it, rather than list beside it
/// (in the cold herd, rounds listing side by side fought over the same
/// keys' claims and the p99 grew by a quarter).
#[tokio::test]
async fn a_warm_arriving_where_a_remote_round_is_followed_leads_the_round_after_it() {
    use std::sync::atomic::Ordering;
    let (index, [(one, one_store), (two, two_store)], firsts, older, younger) =
        next_rounds_on_two_replicas().await;
    // The older round lists for a while (replica one's first round cached
    // everything there, so it would otherwise end at once).
    one_store.delay(crate::store::Op::List, Duration::from_millis(4_000));
    let t0 = std::time::Instant::now();
    loop {
        let shown = two
            .live()
            .get(&younger)
            .map(|op| (op.progress.joined(), op.progress.phase()));
        if let Some((Some(joined), phase)) = shown {
            if joined == older && phase != Phase::Queued {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "never followed the older round");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Replica two's own first round is over: the only round under way
    // there is the one its younger warm follows.
    until_ended(&two, &firsts[1]).await;
    let listed = two_store.calls.list.load(Ordering::SeqCst);
    let late = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let late = late.borrow().operation_id.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let older_done = index.get_operation(&older).await.unwrap().unwrap().is_done();
    assert!(!older_done, "the older round still runs");
    assert_eq!(
        two_store.calls.list.load(Ordering::SeqCst),
        listed,
        "the late warm waits for the round under way"
    );
    for (ops, id) in [(&one, &firsts[0]), (&two, &firsts[1]), (&one, &older), (&two, &younger), (&two, &late)] {
        until_ended(ops, id).await;
    }
    let state = index.get_operation(&late).await.unwrap().unwrap().state;
    assert_eq!(state.outcome, Some(Outcome::Succeeded), "{state:?}");
    assert_eq!(
        two_store.calls.list.load(Ordering::SeqCst),
        listed + 1,
        "then led the round after it"
    );
}

/// Hangs every `renew_run` of the operation set in `.0`, while set: its
/// replica (frozen, or cut off from the index) lets the run lapse.
#[derive(Debug, Default)]
struct RenewalsOfHang(std::sync::Mutex<Option<String>>);

impl RenewalsOfHang {
    fn hang(&self, id: Option<&str>) {
        *self.0.lock().unwrap() = id.map(str::to_owned);
    }
}

impl crate::gate::Gate for RenewalsOfHang {
    fn enter(
        &self,
        call: &'static str,
        subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        let hung = self.0.lock().unwrap().as_deref() == Some(subject);
        if call == "renew_run" && hung {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Box::new(()) as crate::gate::Pass })
        }
    }
}

/// The cold herd's stall: `older` (replica one) lists, `younger`
/// (replica two) follows it, and `late` (replica two) waits for that
/// round, queued. Replica one then loses `older`'s run and replica two
/// takes it over. Joining `late`, queued and covering it, the takeover
/// would wait for `late`, which waits for `younger`, which follows
/// `older`'s record: a cycle nothing ends (in the herd, where the
/// takeover joined such a warm offered on a third replica, a thousand
/// launchers waited 11 minutes until stopped). A new attempt joins
/// nothing that might wait: it lists itself, and every warm ends
/// SUCCEEDED.
#[tokio::test]
async fn a_takeover_of_a_followed_round_does_not_join_a_warm_that_waits_for_it() {
    use crate::index::CountingIndex;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.db");
    let settings = |name: &str| OpsSettings {
        replica: name.into(),
        run_ttl: Duration::from_secs(1),
        renew_every: Duration::from_millis(100),
        // A lapsed run is taken over at once, not a skew margin later.
        skew_margin: Duration::ZERO,
        ..short_runs()
    };
    let lapse = Arc::new(RenewalsOfHang::default());
    let one_index = CountingIndex::new(SqliteIndex::open(&path).unwrap()).with_gate(lapse.clone());
    // Replica one's rounds copy 20 objects of 250 ms, 2 at a time.
    let (one, one_store) = fleet_member_with(Arc::new(one_index), 20, 250, settings("one"));
    let (two, two_store) = fleet_member_with(
        Arc::new(SqliteIndex::open(&path).unwrap()),
        20,
        20,
        settings("two"),
    );
    for ops in [&one, &two, &one] {
        ops.heartbeat().await.unwrap();
    }
    // A round under way on replica one; `older` waits for it, offered.
    let first = one.submit(unfinished("x", 0).request, None).await.unwrap();
    let first = first.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while one_store.calls.list.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the first round never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let older = one.submit(unfinished("x", 0).request, None).await.unwrap();
    let older = older.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while one.index().offered_operations(10).await.unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "never offered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // `younger` on replica two joins it; its listing, once begun, lasts.
    let younger = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let younger = younger.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while two.live().get(&younger).and_then(|op| op.progress.joined()) != Some(older.clone()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "never joined the older");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    one_store.delay(crate::store::Op::List, Duration::from_secs(30));
    until_ended(&one, &first).await;
    let t0 = std::time::Instant::now();
    while two.live().get(&younger).map(|op| op.progress.phase()) == Some(Phase::Queued) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the older round never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The older round lists: a warm arriving now leads the next round.
    let late = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let late = late.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while two.live().get(&late).is_none_or(|op| op.leading.is_none()) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the late warm never led");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Replica one stops renewing; replica two takes the lapsed run over.
    lapse.hang(Some(&older));
    let t0 = std::time::Instant::now();
    while two.adopt_orphans().await.unwrap() == 0 {
        // Up to a follower's lease (6 s): it waited for the round before.
        assert!(t0.elapsed() < Duration::from_secs(15), "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (ops, id) in [(&two, &older), (&two, &younger), (&two, &late)] {
        until_ended(ops, id).await;
        let rec = ops.index().get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}: {:?}", rec.state);
    }
    let rec = two.index().get_operation(&older).await.unwrap().unwrap();
    assert_eq!((rec.resumptions, rec.state.joined_operation_id), (1, None), "listed itself");
    assert_eq!(
        two_store.calls.list.load(Ordering::SeqCst),
        2,
        "the takeover's round, and the late warm's"
    );
    assert_eq!(one_store.calls.list.load(Ordering::SeqCst), 2, "the first round, `older`'s");
}

/// Holds the first call named `.0` for `.1`; lets every other through.
#[derive(Debug)]
struct FirstSlow(&'static str, Duration, std::sync::atomic::AtomicBool);

impl crate::gate::Gate for FirstSlow {
    fn enter(
        &self,
        call: &'static str,
        _subject: &str,
    ) -> futures::future::BoxFuture<'static, crate::gate::Pass> {
        let first = call == self.0 && !self.2.swap(true, std::sync::atomic::Ordering::SeqCst);
        let pause = self.1;
        Box::pin(async move {
            if first {
                tokio::time::sleep(pause).await;
            }
            Box::new(()) as crate::gate::Pass
        })
    }
}

/// A cycle without a takeover. Replica one: `first` lists, `leader`
/// waits for it, offered. Replica two: `older` (created before `leader`,
/// its creation slow to answer) misses `leader` (its lookup fails) and
/// would lead the round after `joiner`, which joined `leader`. Offered,
/// `older` would be found by `leader`, younger, which would merge into
/// it: `older` waits for `joiner`, `joiner` follows `leader`, `leader`
/// follows `older`. Only a warm whose wait ends by itself is offered:
/// `older` waits unoffered, and, unoffered, joins `leader` although it is
/// the younger (nothing can join `older` through the log, and `leader`
/// waits for what ends by itself); every warm ends SUCCEEDED, and the
/// data is listed once for both replicas' next rounds.
#[tokio::test]
async fn a_warm_waiting_behind_a_followed_round_is_not_offered_so_no_cycle_forms() {
    use crate::index::CountingIndex;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.db");
    // Replica one's first round: 20 copies of 600 ms, 2 at a time.
    let (one, one_store) = fleet_member_with(
        Arc::new(SqliteIndex::open(&path).unwrap()),
        20,
        600,
        as_replica("one"),
    );
    let two_index = Arc::new(
        CountingIndex::new(SqliteIndex::open(&path).unwrap()).with_gate(Arc::new(FirstSlow(
            "create_operation",
            Duration::from_secs(3),
            Default::default(),
        ))),
    );
    let (two, two_store) = fleet_member_with(Arc::clone(&two_index), 20, 20, as_replica("two"));
    for ops in [&one, &two, &one] {
        ops.heartbeat().await.unwrap();
    }
    let first = one.submit(unfinished("x", 0).request, None).await.unwrap();
    let first = first.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while one_store.calls.list.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the first round never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // `older`: created now on replica two, answered 3 s later.
    let older = {
        let two = Arc::clone(&two);
        tokio::spawn(async move {
            let rx = two.submit(unfinished("x", 0).request, None).await.unwrap();
            let id = rx.borrow().operation_id.clone();
            id
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let leader = one.submit(unfinished("x", 0).request, None).await.unwrap();
    let leader = leader.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while one.index().offered_operations(10).await.unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "never offered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let joiner = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let joiner = joiner.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while two.live().get(&joiner).and_then(|op| op.progress.joined()) != Some(leader.clone()) {
        assert!(t0.elapsed() < Duration::from_secs(5), "never joined the leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // `older`'s look on other replicas fails: it leads after `joiner`.
    two_index.fail("offered_operations", 1);
    let older = older.await.unwrap();
    let created = |id: &str| {
        let index = one.index();
        let id = id.to_owned();
        async move { index.get_operation(&id).await.unwrap().unwrap().created_at }
    };
    assert!(created(&older).await < created(&leader).await, "`older` is the older");
    for (ops, id) in [(&one, &first), (&one, &leader), (&two, &joiner), (&two, &older)] {
        until_ended(ops, id).await;
        let rec = ops.index().get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}: {:?}", rec.state);
    }
    let rec = one.index().get_operation(&older).await.unwrap().unwrap();
    assert_eq!(rec.state.joined_operation_id.as_deref(), Some(leader.as_str()));
    assert_eq!(two_store.calls.list.load(Ordering::SeqCst), 0);
    assert_eq!(one_store.calls.list.load(Ordering::SeqCst), 2, "`first`, then `leader`");
}

/// A crashed replica's warms, taken over together by one replica: the
/// first lists, the next waits for it, and the rest join that one, so the
/// data is listed twice, not once per warm taken over (each a new
/// attempt, which joins or waits only for new attempts here).
#[tokio::test]
async fn warms_taken_over_together_list_the_data_twice_not_once_each() {
    use crate::index::CountingIndex;
    use std::sync::atomic::Ordering;
    // Each takeover's write takes 50 ms (a busy index): the first warm
    // taken over lists before the next is, as in the herd.
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap())
            .with_gate(Arc::new(Slow("take_over", Duration::from_millis(50)))),
    );
    let ids: Vec<String> = (0..20).map(|i| format!("o{i:02}")).collect();
    for id in &ids {
        // Run by a replica gone since: its run lapsed long ago.
        let mut rec = unfinished(id, 0);
        rec.run = Some(crate::core::operation::RunLease {
            ticket: RunTicket {
                replica: "gone".into(),
                attempt: 1,
            },
            deadline: 2,
            cancel_requested: false,
            joinable: false,
        });
        index.create_operation(&rec).await.unwrap();
    }
    // Its round: 20 copies of 200 ms, 2 at a time, past the takeovers.
    let (ops, store) = fleet_member(Arc::clone(&index), 20, 200);
    assert_eq!(ops.adopt_orphans().await.unwrap(), 20);
    for id in &ids {
        until_ended(&ops, id).await;
        let rec = index.get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}: {:?}", rec.state);
    }
    let lists = store.calls.list.load(Ordering::SeqCst);
    assert!(lists <= 2, "listed {lists} times for 20 warms taken over");
}

/// The next round's leader on a replica whose round under way has many
/// joiners waits for the warm that lists, not for one of its joiners
/// (each follows that round too): it is offered, so the next rounds of
/// other replicas join it. Waiting for a joiner, it waited unoffered (a
/// wait that does not end by itself), and each replica's next round
/// listed on its own.
#[tokio::test]
async fn a_next_round_behind_a_round_with_joiners_is_offered() {
    use std::sync::atomic::Ordering;
    let (index, [(one, one_store), (two, two_store)]) = two_replicas(250).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let rx = one.submit(unfinished("x", 0).request, None).await.unwrap();
        ids.push(rx.borrow().operation_id.clone());
    }
    let t0 = std::time::Instant::now();
    while one_store.calls.list.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the first round never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let joined = ids[1..]
        .iter()
        .filter(|id| one.live().get(*id).is_some_and(|op| op.progress.joined().is_some()))
        .count();
    assert!(joined >= 8, "the burst joined its first warm: {joined} of 9");
    let next = one.submit(unfinished("x", 0).request, None).await.unwrap();
    let next = next.borrow().operation_id.clone();
    let t0 = std::time::Instant::now();
    while !index.offered_operations(10).await.unwrap().iter().any(|r| r.id == next) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the next round was never offered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = two.submit(unfinished("x", 0).request, None).await.unwrap();
    let other = other.borrow().operation_id.clone();
    ids.push(next);
    for id in &ids {
        until_ended(&one, id).await;
    }
    until_ended(&two, &other).await;
    let rec = index.get_operation(&other).await.unwrap().unwrap();
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{:?}", rec.state);
    assert_eq!(two_store.calls.list.load(Ordering::SeqCst), 0, "it joined the next round");
}

/// A round's leader loses its run (its renewals hang) while the next
/// round waits for it. The waiting warm held the leader's progress, so
/// its wait never ended (nor would the leader's joiners', whose channel
/// closes only when that progress is dropped): a cold herd stalled so.
/// Now the next round begins, the lapsed run is taken over, and every
/// warm ends SUCCEEDED.
#[tokio::test]
async fn a_leader_that_loses_its_run_does_not_hold_its_joiners_or_the_next_round() {
    use crate::index::CountingIndex;
    use std::sync::atomic::Ordering;
    let lapse = Arc::new(RenewalsOfHang::default());
    let index = Arc::new(
        CountingIndex::new(SqliteIndex::open_in_memory().unwrap()).with_gate(lapse.clone()),
    );
    let settings = OpsSettings {
        // A lapsed run is taken over at once, not a skew margin later.
        skew_margin: Duration::ZERO,
        ..short_runs()
    };
    // 40 copies of 100 ms, 2 at a time: 2 s of work.
    let (ops, store) = fleet_member_with(Arc::clone(&index), 40, 100, settings);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let rx = ops.submit(unfinished("x", 0).request, None).await.unwrap();
        ids.push(rx.borrow().operation_id.clone());
    }
    let t0 = std::time::Instant::now();
    while store.calls.copy.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "never copied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first lists; the second waits for it, leading the next round,
    // which the rest joined.
    let t0 = std::time::Instant::now();
    while ids[2..]
        .iter()
        .any(|id| ops.live().get(id).is_none_or(|op| op.progress.joined() != Some(ids[1].clone())))
    {
        assert!(t0.elapsed() < Duration::from_secs(5), "the next round never gathered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The leader's renewals hang from now on: its run lapses.
    lapse.hang(Some(&ids[0]));
    let t0 = std::time::Instant::now();
    while ops.live().contains_key(&ids[0]) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the leader never lost its run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lapse.hang(None);
    while ops.adopt_orphans().await.unwrap() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        until_ended(&ops, id).await;
        let rec = index.get_operation(id).await.unwrap().unwrap();
        assert_eq!(rec.state.outcome, Some(Outcome::Succeeded), "{id}: {:?}", rec.state);
    }
}
