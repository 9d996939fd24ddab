//! The DynamoDB index through the fault proxy, speaking DynamoDB's own
//! protocol to moto: what real DynamoDB does and moto never does. A share
//! of calls throttled, write replies lost after the write took effect, and
//! calls that never answer must each leave every contract of the index
//! holding (the same conformance suites as on a quiet table), with the
//! calls slowed down, not failed. An outage longer than the operator's
//! budget ends a call with `IndexError::Unavailable`, never a hang.
//!
//! Each test starts its own moto and proxy; a missing moto fails the test.

#![allow(clippy::unwrap_used)]

use expresscache_server::index::Leases;
use std::sync::Arc;
use std::time::{Duration, Instant};

use expresscache::Backoff;
use expresscache_server::index::conformance::{run_all, run_operation_log, run_replica_registry};
use expresscache_server::index::dynamo::{DynamoConfig, TablePrefix};
use expresscache_server::index::lane::{in_lane, Lane};
use expresscache_server::index::{
    CreateOutcome, DynamoIndex, IndexError, OperationLog, OperationRecord, ReplicaRegistry,
};
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::records::{operation, ticket};
use expresscache_server::testing::{local_sdk_config, raw_item, unique, Moto};

/// Short pauses, so that a test through a fault storm stays fast; the
/// attempt timeout is short so a hung call is given up on quickly.
fn patient() -> DynamoConfig {
    DynamoConfig {
        attempt_timeout: Duration::from_millis(500),
        busy_backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(100)),
        busy_budget: Duration::from_secs(60),
        ..DynamoConfig::default()
    }
}

/// Fresh tables (created without faults), then an index that talks to
/// them through the proxy.
async fn through_proxy(moto: &Moto, proxy: &FaultProxy, config: DynamoConfig) -> DynamoIndex {
    let prefix = TablePrefix::new(&unique("ec")).unwrap();
    DynamoIndex::connect_with(&moto.sdk_config(), &prefix, DynamoConfig::default())
        .create_tables()
        .await
        .unwrap();
    DynamoIndex::connect_with(&local_sdk_config(&proxy.endpoint), &prefix, config)
}

/// The cache index's, the operation log's and the replica registry's
/// conformance suites, on `index`.
async fn every_contract(index: &DynamoIndex) {
    run_all(index).await;
    run_operation_log(index).await;
    run_replica_registry(index).await;
}

/// [`patient`], for bursts of creations: moto copies every table for
/// each transaction (to roll it back), so a transaction takes longer as
/// its table grows, well past half a second in a burst of hundreds.
fn patient_with_moto_s_transactions() -> DynamoConfig {
    DynamoConfig {
        attempt_timeout: Duration::from_secs(5),
        ..patient()
    }
}

/// Moto, the proxy in front of it, and an index on fresh tables through
/// the proxy, which has `rules`.
async fn faulty(rules: Vec<Rule>) -> (Moto, FaultProxy, DynamoIndex) {
    faulty_with(rules, patient()).await
}

async fn faulty_with(rules: Vec<Rule>, config: DynamoConfig) -> (Moto, FaultProxy, DynamoIndex) {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = through_proxy(&moto, &proxy, config).await;
    for rule in rules {
        proxy.add(rule);
    }
    (moto, proxy, index)
}

#[tokio::test]
async fn every_index_contract_holds_with_a_quarter_of_calls_throttled() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = through_proxy(&moto, &proxy, patient()).await;
    proxy.add(Rule::share(
        Match::dynamo_any(),
        Fault::DynamoThrottle,
        0.25,
        22,
    ));
    every_contract(&index).await;
    assert!(
        proxy.injected() > 20,
        "the storm was real: {} throttles",
        proxy.injected()
    );
}

#[tokio::test]
async fn every_index_contract_holds_when_write_replies_are_lost_after_the_write() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = through_proxy(&moto, &proxy, patient()).await;
    proxy.add(Rule::share(
        Match::dynamo_writes(),
        Fault::LoseReplyAs500,
        0.15,
        7,
    ));
    every_contract(&index).await;
    assert!(proxy.injected() > 5, "{} replies lost", proxy.injected());
}

/// An endpoint that does not say what a refused condition saw (DynamoDB
/// Local before 2.0 ignores ReturnValuesOnConditionCheckFailure): every
/// contract still holds, the index reads the item instead. Without that
/// read, a renewal of a run this replica holds was taken for lost, and a
/// lease write refused by a longer live lease retried itself without end
/// (the process died of a stack overflow).
#[tokio::test]
async fn every_index_contract_holds_when_refusals_do_not_carry_the_item() {
    holds_with_refusals_stripped(vec![]).await;
}

/// Every contract with `rules` first and every refusal's item stripped;
/// the stripping was real.
async fn holds_with_refusals_stripped(mut rules: Vec<Rule>) {
    rules.push(Rule::always(Match::dynamo_writes(), Fault::DropRefusedItem));
    let (_moto, proxy, index) = faulty(rules).await;
    every_contract(&index).await;
    assert!(
        proxy.stripped() > 20,
        "{} refusals stripped",
        proxy.stripped()
    );
}

/// The same endpoint, with a share of write replies lost after the write
/// took effect: a retry's refusal by its own earlier write carries no item
/// either, and must still be recognised as that write.
#[tokio::test]
async fn every_index_contract_holds_when_refusals_do_not_carry_the_item_and_replies_are_lost() {
    holds_with_refusals_stripped(vec![Rule::share(
        Match::dynamo_writes(),
        Fault::LoseReplyAs500,
        0.15,
        11,
    )])
    .await;
}

#[tokio::test]
async fn calls_that_never_answer_are_sent_again_and_succeed() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = through_proxy(&moto, &proxy, patient()).await;
    // Every tenth write hangs: the attempt times out and is sent again.
    proxy.add(Rule::every(Match::dynamo_writes(), Fault::Hang, 10));
    run_replica_registry(&index).await;
    run_all(&index).await;
    assert!(proxy.injected() > 3, "{} calls hung", proxy.injected());
}

/// The operation log's contract (creations, runs, offers and the board
/// of offered warms) with every tenth write, every fifth GetItem and
/// every third BatchGetItem left unanswered: each attempt times out and
/// is sent again.
#[tokio::test]
async fn the_operation_log_holds_when_calls_never_answer() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = through_proxy(&moto, &proxy, patient()).await;
    proxy.add(Rule::every(Match::dynamo_writes(), Fault::Hang, 10));
    proxy.add(Rule::every(Match::dynamo("GetItem"), Fault::Hang, 5));
    proxy.add(Rule::every(Match::dynamo("BatchGetItem"), Fault::Hang, 3));
    run_operation_log(&index).await;
    assert!(proxy.injected() > 10, "{} calls hung", proxy.injected());
}

#[tokio::test]
async fn an_outage_longer_than_the_budget_ends_the_call_as_unavailable_in_time() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let config = DynamoConfig {
        busy_budget: Duration::from_secs(2),
        ..patient()
    };
    let index = through_proxy(&moto, &proxy, config).await;
    proxy.add(Rule::always(Match::dynamo_any(), Fault::DynamoThrottle));
    let t0 = Instant::now();
    let err = index.heartbeat("r1", 1_000).await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, IndexError::Unavailable(_)), "{err}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "gave up after {took:?}, budget 2s"
    );
    // Sent again and again meanwhile, not once.
    assert!(proxy.injected() >= 5, "{} sends", proxy.injected());
    // Once the table answers again, so does the index.
    proxy.clear();
    index.heartbeat("r1", 1_000).await.unwrap();
    assert_eq!(index.live_replicas(500).await.unwrap(), ["r1"]);
    let _ = index.expired_leases(0, 1).await.unwrap();
}

/// An index whose tables answer every request 200 ms late, limited to
/// `max_in_flight` requests at once, and a gauge of the requests the
/// tables have in flight.
async fn slow_and_limited(
    max_in_flight: usize,
) -> (
    Moto,
    FaultProxy,
    Arc<DynamoIndex>,
    Arc<expresscache_server::testing::proxy::Gauge>,
) {
    slow_and_limited_with(max_in_flight, patient()).await
}

async fn slow_and_limited_with(
    max_in_flight: usize,
    config: DynamoConfig,
) -> (
    Moto,
    FaultProxy,
    Arc<DynamoIndex>,
    Arc<expresscache_server::testing::proxy::Gauge>,
) {
    let config = DynamoConfig {
        max_in_flight,
        ..config
    };
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = Arc::new(through_proxy(&moto, &proxy, config).await);
    let in_flight = proxy.track(Match::dynamo_any());
    proxy.add(Rule::always(
        Match::dynamo_any(),
        Fault::Delay(Duration::from_millis(200)),
    ));
    (moto, proxy, index, in_flight)
}

/// `n` reads of operations that do not exist, at once, in `lane`; how
/// long from `t0` until the last answered.
fn burst_of_reads(
    index: &Arc<DynamoIndex>,
    n: usize,
    lane: Lane,
    t0: Instant,
) -> impl std::future::Future<Output = Duration> + Send + 'static {
    let index = Arc::clone(index);
    in_lane(lane, async move {
        let reads = (0..n).map(|i| {
            let index = Arc::clone(&index);
            async move { index.get_operation(&format!("nope{i}")).await }
        });
        for got in futures::future::join_all(reads).await {
            assert!(got.unwrap().is_none());
        }
        t0.elapsed()
    })
}

/// A burst of calls queues in the replica, not in the table: the table
/// never has more than the limit in flight. A heartbeat (like a run's
/// renewal) passes the queue: a late one would drop the replica from the
/// registry while the burst waits.
#[tokio::test]
async fn a_burst_waits_in_the_replica_and_the_heartbeat_passes_it() {
    let (_moto, _proxy, index, in_flight) = slow_and_limited(8).await;
    // The registry's item made first: a heartbeat is then two requests.
    index.heartbeat("r1", 1).await.unwrap();
    let t0 = Instant::now();
    let burst = tokio::spawn(burst_of_reads(&index, 96, Lane::Work, t0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    index.heartbeat("r1", i64::MAX / 2).await.unwrap();
    let heartbeat = t0.elapsed();
    let burst = burst.await.unwrap();
    assert!(
        in_flight.peak() <= 8 + 2,
        "{} requests in flight at the table, limit 8 (and the heartbeat's)",
        in_flight.peak()
    );
    // 96 reads, 8 at a time, 200 ms each: 2.4 s at least.
    assert!(
        burst >= Duration::from_millis(2_400),
        "burst took {burst:?}"
    );
    assert!(
        heartbeat < Duration::from_millis(1_500),
        "the heartbeat waited behind the burst: {heartbeat:?} (burst {burst:?})"
    );
}

/// A caller that gives up while its call waits for a slot (a checkpoint
/// cut off at its bound) sent nothing: the table serves no abandoned
/// request.
#[tokio::test]
async fn a_call_given_up_while_it_waits_for_a_slot_sends_nothing() {
    let (_moto, proxy, index, _) = slow_and_limited(2).await;
    let gets = || proxy.count(&Match::dynamo("GetItem"));
    let before = gets();
    let held: Vec<_> = (0..2)
        .map(|i| {
            let index = Arc::clone(&index);
            tokio::spawn(async move { index.get_operation(&format!("held{i}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), index.get_operation("late")).await;
    assert!(gave_up.is_err(), "the third call had no slot");
    for h in held {
        assert!(h.await.unwrap().unwrap().is_none());
    }
    assert_eq!(
        gets() - before,
        2,
        "only the calls that had a slot were sent"
    );
    // Once slots are free, calls go through.
    assert!(index.get_operation("after").await.unwrap().is_none());
}

/// A job array's bookkeeping (creations, joiners' checkpoints and final
/// states) takes at most its share of the limit: the work the burst waits
/// for (here one read) is sent beside it, not behind all of it.
#[tokio::test]
async fn bookkeeping_takes_its_share_of_the_limit_and_work_passes_a_burst_of_it() {
    let (_moto, _proxy, index, in_flight) = slow_and_limited(32).await;
    let t0 = Instant::now();
    let burst = tokio::spawn(burst_of_reads(&index, 192, Lane::Bulk, t0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    assert!(index.get_operation("work").await.unwrap().is_none());
    let work = started.elapsed();
    let burst = burst.await.unwrap();
    // 192 reads, 16 at a time, 200 ms each: 2.4 s at least (in one
    // queue with the work, 32 at a time, the work would wait 1.2 s).
    assert!(
        burst >= Duration::from_millis(2_400),
        "burst took {burst:?}"
    );
    assert!(
        in_flight.peak() <= 16 + 1,
        "{} requests in flight at the table: 16 of bookkeeping and the work",
        in_flight.peak()
    );
    assert!(
        work < Duration::from_millis(800),
        "the work waited behind the burst: {work:?} (burst {burst:?})"
    );
}

/// `n` creations at once, in the bookkeeping lane as a replica makes
/// them, each under a request id of its own: each is answered Created and
/// is then stored as written.
async fn burst_of_creations(index: &DynamoIndex, stem: &str, n: usize) {
    let ops: Vec<_> = (0..n)
        .map(|i| operation(&format!("{stem}-{i}"), Some(&format!("{stem}-rid-{i}")), 5))
        .collect();
    let creations = futures::future::join_all(ops.iter().map(|op| index.create_operation(op)));
    let outcomes = in_lane(Lane::Bulk, creations).await;
    let stored = futures::future::join_all(ops.iter().map(|op| index.get_operation(&op.id))).await;
    for ((op, outcome), stored) in ops.iter().zip(outcomes).zip(stored) {
        assert_eq!(outcome.unwrap(), CreateOutcome::Created, "{}", op.id);
        assert_eq!(
            stored.unwrap().as_ref(),
            Some(op),
            "{} stored as written",
            op.id
        );
    }
}

/// How many `call`s (`"TransactWriteItems"`) the proxy has seen.
fn calls(proxy: &FaultProxy, call: &str) -> u64 {
    proxy.count(&Match::dynamo(call))
}

fn transactions(proxy: &FaultProxy) -> u64 {
    calls(proxy, "TransactWriteItems")
}

/// A job array's creations that wait together are sent together: 200
/// creations (an operation and a request id each) in four transactions of
/// 100 actions, where one each would take 200, 16 at a time.
#[tokio::test]
async fn a_burst_of_creations_is_sent_in_a_few_transactions() {
    let (_moto, proxy, index, _) =
        slow_and_limited_with(32, patient_with_moto_s_transactions()).await;
    let before = transactions(&proxy);
    burst_of_creations(&index, "herd", 200).await;
    let sent = transactions(&proxy) - before;
    assert!(
        (4..=8).contains(&sent),
        "200 creations in {sent} transactions (100 actions each: 4)"
    );
}

/// An index that takes fewer actions per transaction than DynamoDB's 100
/// (DynamoDB Local 1.11 takes 10) says so in its refusal: the limit is
/// learnt from it, the burst lands whole, and later bursts are never
/// refused for their size.
#[tokio::test]
async fn the_index_s_limit_on_a_transaction_s_size_is_learnt_from_its_refusal() {
    let (_moto, proxy, index) = faulty_with(
        vec![Rule::always(
            Match::dynamo("TransactWriteItems"),
            Fault::DynamoTransactionLimit(10),
        )],
        patient_with_moto_s_transactions(),
    )
    .await;
    burst_of_creations(&index, "first", 60).await;
    let refused = proxy.oversized_transactions();
    assert!(refused >= 1, "the first burst met the limit");
    let before = transactions(&proxy);
    burst_of_creations(&index, "second", 60).await;
    assert_eq!(
        proxy.oversized_transactions(),
        refused,
        "no transaction of the second burst was too large"
    );
    assert!(
        transactions(&proxy) - before >= 12,
        "120 actions, 10 a transaction"
    );
}

/// A creation given up while it waits for a sender (its caller's
/// timeout) is never sent: the transaction under way carries only the
/// creation that was sent before.
#[tokio::test]
async fn a_creation_given_up_while_it_waits_is_never_sent() {
    // Two requests in flight: bookkeeping, and so creations, one.
    let (_moto, proxy, index, _) = slow_and_limited(2).await;
    let before = transactions(&proxy);
    let first = operation("first", Some("rid-first"), 5);
    let sent = {
        let index = Arc::clone(&index);
        let first = first.clone();
        tokio::spawn(async move { index.create_operation(&first).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = operation("late", Some("rid-late"), 5);
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), index.create_operation(&late)).await;
    assert!(gave_up.is_err(), "the late creation waited for the sender");
    assert_eq!(sent.await.unwrap().unwrap(), CreateOutcome::Created);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(transactions(&proxy) - before, 1, "only the first was sent");
    assert_eq!(index.get_operation("late").await.unwrap(), None);
    // The sender is free again: a creation now goes through.
    assert_eq!(
        index.create_operation(&late).await.unwrap(),
        CreateOutcome::Created
    );
}

/// A transaction of many creations that hangs, or whose reply is lost
/// after it landed, is sent again: every creation of the burst lands
/// once and is answered Created.
#[tokio::test]
async fn a_burst_whose_transactions_hang_or_lose_their_reply_lands_once() {
    let (_moto, proxy, index) = faulty_with(
        vec![
            Rule::times(Match::dynamo("TransactWriteItems"), Fault::Hang, 1),
            Rule::times(
                Match::dynamo("TransactWriteItems"),
                Fault::LoseReplyAs500,
                2,
            ),
        ],
        patient_with_moto_s_transactions(),
    )
    .await;
    burst_of_creations(&index, "faulty", 150).await;
    assert_eq!(proxy.injected(), 3, "one hang, two lost replies");
}

/// A quarter of transactions throttled: a burst of creations slows down
/// and lands whole.
#[tokio::test]
async fn a_burst_of_creations_lands_whole_through_throttles() {
    let (_moto, proxy, index) = faulty_with(
        vec![Rule::share(
            Match::dynamo("TransactWriteItems"),
            Fault::DynamoThrottle,
            0.25,
            5,
        )],
        patient_with_moto_s_transactions(),
    )
    .await;
    burst_of_creations(&index, "throttled", 150).await;
    assert!(proxy.injected() >= 1, "some transactions were throttled");
}

/// A transaction of three creations cancelled by one's refusal (its
/// request id is held): that one is answered with the holder, one whose
/// caller gave up while the transaction was in flight is not sent again,
/// and the third is sent again at once, alone, and created.
#[tokio::test]
async fn a_refused_creation_cancels_only_itself_and_a_given_up_one_is_not_sent_again() {
    // One creation transaction at a time (limit 2: bookkeeping 1), every
    // request 200 ms late.
    let (_moto, proxy, index, _) =
        slow_and_limited_with(2, patient_with_moto_s_transactions()).await;
    let held = operation("held", Some("rid-held"), 5);
    assert_eq!(
        index.create_operation(&held).await.unwrap(),
        CreateOutcome::Created
    );
    let before = transactions(&proxy);
    let refused = operation("refused", Some("rid-held"), 5);
    let gave_up = operation("gave-up", Some("rid-gave-up"), 5);
    let kept = operation("kept", Some("rid-kept"), 5);
    let (refused, gave_up, kept) = in_lane(Lane::Bulk, async {
        tokio::join!(
            index.create_operation(&refused),
            tokio::time::timeout(Duration::from_millis(100), index.create_operation(&gave_up)),
            index.create_operation(&kept),
        )
    })
    .await;
    assert_eq!(refused.unwrap(), CreateOutcome::Exists(Box::new(held)));
    assert!(
        gave_up.is_err(),
        "given up while its transaction was in flight"
    );
    assert_eq!(kept.unwrap(), CreateOutcome::Created);
    assert_eq!(
        transactions(&proxy) - before,
        2,
        "the three together, then the kept one alone"
    );
    assert_eq!(index.get_operation("gave-up").await.unwrap(), None);
    assert!(index.get_operation("kept").await.unwrap().is_some());
}

/// Now, in milliseconds since the epoch: operations created now finish
/// within their request id's TTL (one created in 1970 would have to move
/// it on).
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// `n` operations created at once, now (each under a request id of its
/// own).
async fn created(index: &DynamoIndex, stem: &str, n: usize) -> Vec<OperationRecord> {
    let ops: Vec<_> = (0..n)
        .map(|i| {
            operation(
                &format!("{stem}-{i}"),
                Some(&format!("{stem}-rid-{i}")),
                now_ms(),
            )
        })
        .collect();
    let creations = futures::future::join_all(ops.iter().map(|op| index.create_operation(op)));
    for outcome in in_lane(Lane::Bulk, creations).await {
        assert_eq!(outcome.unwrap(), CreateOutcome::Created);
    }
    ops
}

/// `ops` finished at once (succeeded, with lease epochs `d/`: `e1`) as a
/// replica's joiners finish: in the bookkeeping lane. What each call
/// answered.
async fn finish_at_once(
    index: &DynamoIndex,
    ops: &[OperationRecord],
) -> Vec<Result<bool, IndexError>> {
    use expresscache_server::core::operation::Outcome;
    let epochs = vec![("d/".to_owned(), "e1".to_owned())];
    let finals = ops.iter().map(|op| {
        let done = op.state.clone().ended(Outcome::Succeeded, None);
        let epochs = epochs.clone();
        async move {
            index
                .finish_operation(&op.id, &ticket(), &done, &epochs)
                .await
        }
    });
    in_lane(Lane::Bulk, futures::future::join_all(finals)).await
}

/// [`finish_at_once`]: every final state is answered written, and each
/// operation reads back finished with its state and epochs.
async fn final_states_at_once(index: &DynamoIndex, ops: &[OperationRecord]) {
    use expresscache_server::core::operation::Outcome;
    let epochs = vec![("d/".to_owned(), "e1".to_owned())];
    let written = finish_at_once(index, ops).await;
    let stored = futures::future::join_all(ops.iter().map(|op| async move {
        let record = index.get_operation(&op.id).await.unwrap().unwrap();
        (record, index.lease_epochs(&op.id).await.unwrap())
    }))
    .await;
    for ((op, written), (stored, stored_epochs)) in ops.iter().zip(written).zip(stored) {
        assert!(written.unwrap(), "{}: written", op.id);
        assert!(stored.is_done(), "{} finished: {:?}", op.id, stored.state);
        assert_eq!(stored.state.outcome, Some(Outcome::Succeeded));
        assert!(stored.run.is_none(), "{}: no run left", op.id);
        assert_eq!(stored_epochs, epochs);
    }
}

/// A round's joiners that end together record their final states
/// together: 60 final states in a few transactions, not 60 requests.
#[tokio::test]
async fn joiners_final_states_that_end_together_are_sent_in_a_few_transactions() {
    let (_moto, proxy, index, _) =
        slow_and_limited_with(32, patient_with_moto_s_transactions()).await;
    let ops = created(&index, "round", 60).await;
    let (txs, updates) = (transactions(&proxy), calls(&proxy, "UpdateItem"));
    final_states_at_once(&index, &ops).await;
    let sent = transactions(&proxy) - txs;
    assert_eq!(
        calls(&proxy, "UpdateItem"),
        updates,
        "no final state sent alone"
    );
    assert!(
        (1..=3).contains(&sent),
        "60 final states in {sent} transactions"
    );
}

/// Joiners' final states sent together through a hung transaction,
/// lost replies (after the write landed) and throttles: every one lands
/// once and is answered written.
#[tokio::test]
async fn joiners_final_states_land_through_hangs_lost_replies_and_throttles() {
    let (_moto, proxy, index) = faulty_with(vec![], patient_with_moto_s_transactions()).await;
    // Created first, without faults: the faults fall on the final states.
    let ops = created(&index, "faulty", 40).await;
    for rule in [
        Rule::times(Match::dynamo("TransactWriteItems"), Fault::Hang, 1),
        Rule::times(
            Match::dynamo("TransactWriteItems"),
            Fault::LoseReplyAs500,
            2,
        ),
        Rule::share(
            Match::dynamo("TransactWriteItems"),
            Fault::DynamoThrottle,
            0.25,
            7,
        ),
    ] {
        proxy.add(rule);
    }
    final_states_at_once(&index, &ops).await;
    assert!(
        proxy.injected() >= 3,
        "a hang and two lost replies at least"
    );
}

/// A group of final states in which one run was taken over and one
/// operation (an earlier release's) has no request-id TTL recorded: the
/// taken-over one is answered not written, the earlier release's is
/// written by the single write, which moves its request id's TTL on, and
/// the rest are written in the group.
#[tokio::test]
async fn a_taken_over_run_or_a_request_id_ttl_to_move_leaves_the_group_to_the_single_write() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use expresscache_server::index::{RunLeases, RunTerms};
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = through_proxy(&moto, &proxy, patient_with_moto_s_transactions()).await;
    let ops: Vec<_> = ["taken", "old", "a", "b", "c"]
        .iter()
        .map(|id| operation(id, Some(&format!("rid-{id}")), now_ms()))
        .collect();
    for op in &ops {
        index.create_operation(op).await.unwrap();
    }
    let now = 10_000;
    let terms = RunTerms {
        replica: "r2",
        deadline: now + 60_000,
        now,
    };
    assert!(index.take_over("taken", &terms).await.unwrap().is_some());
    // As an earlier release wrote it: no request-id TTL on the operation,
    // none on its request id's item.
    let raw = aws_sdk_dynamodb::Client::new(&moto.sdk_config());
    let table = index.tables().operations.clone();
    for (pk, attr) in [("op#old", "rid_gc_at"), ("rid#rid-old", "gc_at")] {
        raw.update_item()
            .table_name(&table)
            .key("pk", AttributeValue::S(pk.into()))
            .update_expression("REMOVE #a")
            .expression_attribute_names("#a", attr)
            .send()
            .await
            .unwrap();
    }
    let (txs, updates) = (transactions(&proxy), calls(&proxy, "UpdateItem"));
    let written: Vec<bool> = finish_at_once(&index, &ops)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(written, [false, true, true, true, true]);
    assert!(transactions(&proxy) > txs, "sent as a group first");
    assert_eq!(
        calls(&proxy, "UpdateItem") - updates,
        3,
        "the two refused sent alone, and the request id's TTL moved"
    );
    let taken = index.get_operation("taken").await.unwrap().unwrap();
    assert!(
        !taken.is_done(),
        "the new attempt's, not finished by the old"
    );
    for id in ["old", "a", "b", "c"] {
        assert!(
            index.get_operation(id).await.unwrap().unwrap().is_done(),
            "{id}"
        );
    }
    let (old, rid) = (
        raw_item(&moto, &table, "op#old").await.unwrap(),
        raw_item(&moto, &table, "rid#rid-old").await.unwrap(),
    );
    assert_eq!(
        rid.get("gc_at"),
        old.get("gc_at"),
        "the request id's TTL moved with its operation's"
    );
    assert!(old.contains_key("gc_at"));
}

/// The clock jumps a year and a week between a joiner's creation and its
/// final state (or the warm really ran that long): its request id's TTL,
/// written with the request id, would now end before its operation's.
/// The grouped final state is refused for it, and the single write
/// records the state and moves the request id's TTL on with it.
#[tokio::test]
async fn a_final_state_a_year_after_its_creation_moves_its_request_id_s_ttl_on() {
    use expresscache_server::core::clock::ManualClock;
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let clock = Arc::new(ManualClock::new(now_ms()));
    let index = through_proxy(&moto, &proxy, patient_with_moto_s_transactions())
        .await
        .with_clock(clock.clone());
    let ops = created(&index, "late", 3).await;
    clock.advance(1_000 * 3600 * 24 * (365 + 7));
    let (txs, updates) = (transactions(&proxy), calls(&proxy, "UpdateItem"));
    final_states_at_once(&index, &ops).await;
    assert!(transactions(&proxy) > txs, "tried as a group first");
    assert_eq!(
        calls(&proxy, "UpdateItem") - updates,
        6,
        "each then written alone, and its request id's TTL moved"
    );
    let table = index.tables().operations.clone();
    for op in &ops {
        let item = raw_item(&moto, &table, &format!("op#{}", op.id))
            .await
            .unwrap();
        let rid = raw_item(
            &moto,
            &table,
            &format!("rid#{}", op.request_id.as_ref().unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(rid.get("gc_at"), item.get("gc_at"), "{}", op.id);
    }
}
