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
use std::time::{Duration, Instant};

use expresscache::Backoff;
use expresscache_server::index::conformance::{run_all, run_operation_log, run_replica_registry};
use expresscache_server::index::dynamo::{DynamoConfig, TablePrefix};
use expresscache_server::index::{DynamoIndex, IndexError, ReplicaRegistry};
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::{local_sdk_config, unique, Moto};

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

/// Moto, the proxy in front of it, and an index on fresh tables through
/// the proxy, which has `rules`.
async fn faulty(rules: Vec<Rule>) -> (Moto, FaultProxy, DynamoIndex) {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let index = through_proxy(&moto, &proxy, patient()).await;
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
