//! The fault proxy's DynamoDB side (`testing::proxy`) against a real moto,
//! through the AWS SDK's DynamoDB client: injected errors and throttles as
//! the SDK sees them (with and without its retries), lost replies, hung
//! calls, the per-item write limit, and reproducible shares of calls.
//!
//! Each test starts its own moto and creates its own table (string keys
//! `pk` and `sk`) through the proxy.

// Tests: a failed step must stop the test with its message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::get_item::GetItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    Put, PutRequest, ScalarAttributeType, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};
use expresscache_server::testing::{local_sdk_config, unique, Moto};

type Item = HashMap<String, AttributeValue>;

/// A DynamoDB client for `endpoint` with `retry`, and an attempt timeout
/// if given.
fn dynamo(endpoint: &str, retry: RetryConfig, attempt_timeout: Option<Duration>) -> Client {
    let mut conf =
        aws_sdk_dynamodb::config::Builder::from(&local_sdk_config(endpoint)).retry_config(retry);
    if let Some(t) = attempt_timeout {
        conf = conf.timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(t)
                .build(),
        );
    }
    Client::from_conf(conf.build())
}

/// A client that never retries, so each fault reaches the caller as is.
fn no_retries(endpoint: &str) -> Client {
    dynamo(endpoint, RetryConfig::disabled(), None)
}

/// A client with the SDK's standard retries (3 attempts), backing off
/// briefly.
fn standard_retries(endpoint: &str) -> Client {
    dynamo(
        endpoint,
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(10)),
        None,
    )
}

/// The HTTP status of the reply behind an SDK error, if there was one.
fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk.to_owned())),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

/// Item `pk`/`sk` with attribute `v`.
fn item(pk: &str, sk: &str, v: &str) -> Item {
    let mut item = key(pk, sk);
    item.insert("v".to_owned(), AttributeValue::S(v.to_owned()));
    item
}

/// How the proxy names item `pk`/`sk` of `table` in
/// [`FaultProxy::hottest_items`].
fn item_id(table: &str, pk: &str, sk: &str) -> String {
    format!("{table} {{\"pk\":{{\"S\":\"{pk}\"}},\"sk\":{{\"S\":\"{sk}\"}}}}")
}

/// Creates table `name` (string keys `pk` and `sk`, on demand).
async fn create_table(db: &Client, name: &str) {
    let attribute = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key_element = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .unwrap()
    };
    db.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key_element("pk", KeyType::Hash))
        .key_schema(key_element("sk", KeyType::Range))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create table {name}: {e:?}"));
}

/// Sets `v` of item `key` with UpdateItem.
async fn update(
    db: &Client,
    table: &str,
    key: &Item,
    v: &str,
) -> Result<(), SdkError<UpdateItemError>> {
    db.update_item()
        .table_name(table)
        .set_key(Some(key.clone()))
        .update_expression("SET #v = :v")
        .expression_attribute_names("#v", "v")
        .expression_attribute_values(":v", AttributeValue::S(v.to_owned()))
        .send()
        .await
        .map(drop)
}

async fn put(db: &Client, table: &str, item: Item) -> Result<(), SdkError<PutItemError>> {
    db.put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .map(drop)
}

async fn try_value(
    db: &Client,
    table: &str,
    key: &Item,
) -> Result<Option<String>, SdkError<GetItemError>> {
    let out = db
        .get_item()
        .table_name(table)
        .set_key(Some(key.clone()))
        .consistent_read(true)
        .send()
        .await?;
    Ok(out
        .item()
        .and_then(|i| i.get("v"))
        .and_then(|v| v.as_s().ok())
        .cloned())
}

/// Attribute `v` of item `key`, `None` if there is no such item.
async fn value(db: &Client, table: &str, key: &Item) -> Option<String> {
    try_value(db, table, key)
        .await
        .unwrap_or_else(|e| panic!("get {key:?} from {table}: {e:?}"))
}

fn tx_update(table: &str, key: Item, v: &str) -> TransactWriteItem {
    TransactWriteItem::builder()
        .update(
            Update::builder()
                .table_name(table)
                .set_key(Some(key))
                .update_expression("SET #v = :v")
                .expression_attribute_names("#v", "v")
                .expression_attribute_values(":v", AttributeValue::S(v.to_owned()))
                .build()
                .unwrap(),
        )
        .build()
}

fn tx_put(table: &str, item: Item) -> TransactWriteItem {
    TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(table)
                .set_item(Some(item))
                .build()
                .unwrap(),
        )
        .build()
}

/// A ConditionCheck that item `key` does not exist.
fn tx_absent(table: &str, key: Item) -> TransactWriteItem {
    TransactWriteItem::builder()
        .condition_check(
            ConditionCheck::builder()
                .table_name(table)
                .set_key(Some(key))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .unwrap(),
        )
        .build()
}

/// The cancellation reason codes of a canceled transaction (`""` for a
/// reason without a code); panics on any other error.
fn cancellation_codes(err: &SdkError<TransactWriteItemsError>) -> Vec<String> {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => e
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().unwrap_or_default().to_owned())
            .collect(),
        _ => panic!("expected TransactionCanceledException, got {err:?}"),
    }
}

#[tokio::test]
async fn a_throttled_update_item_reaches_the_sdk_or_is_retried() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let db = no_retries(&proxy.endpoint);
    let table = unique("proxy");
    create_table(&db, &table).await;
    let a = key("a", "1");

    // Without retries, the throttle is the caller's error, and the write
    // was not applied.
    proxy.add(Rule::always(
        Match::dynamo("UpdateItem"),
        Fault::dynamo(400, "ProvisionedThroughputExceededException"),
    ));
    let err = update(&db, &table, &a, "v1").await.unwrap_err();
    eprintln!("SDK error for an injected throttle: {err:?}");
    assert_eq!(status(&err), Some(400), "{err:?}");
    assert_eq!(
        err.code(),
        Some("ProvisionedThroughputExceededException"),
        "{err:?}"
    );
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_provisioned_throughput_exceeded_exception()),
        "{err:?}"
    );
    assert_eq!(value(&db, &table, &a).await, None);
    assert_eq!(proxy.injected(), 1);

    // With the SDK's standard retries, one throttle is retried away.
    proxy.clear();
    proxy.add(Rule::times(
        Match::dynamo("UpdateItem"),
        Fault::DynamoThrottle,
        1,
    ));
    update(&standard_retries(&proxy.endpoint), &table, &a, "v2")
        .await
        .unwrap();
    assert_eq!(value(&db, &table, &a).await.as_deref(), Some("v2"));
    assert_eq!(proxy.injected(), 2);
    // One call without retries, two attempts with.
    assert_eq!(proxy.count(&Match::dynamo("UpdateItem")), 3);
    assert_eq!(proxy.count(&Match::dynamo_writes().table(&table)), 3);
    assert_eq!(proxy.count(&Match::dynamo("GetItem")), 2);
    assert_eq!(proxy.count(&Match::dynamo("CreateTable")), 1);
    // S3 matchers do not take DynamoDB calls for S3 requests.
    assert_eq!(proxy.count(&Match::put_object()), 0);
    assert_eq!(proxy.count(&Match::list_objects()), 0);
}

#[tokio::test]
async fn lost_put_item_replies_leave_the_item_written() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let db = no_retries(&proxy.endpoint);
    let table = unique("proxy");
    create_table(&db, &table).await;

    // A reply lost as a 500: the caller sees InternalServerError, the item
    // is there.
    proxy.add(Rule::times(
        Match::dynamo("PutItem"),
        Fault::LoseReplyAs500,
        1,
    ));
    let err = put(&db, &table, item("lost", "500", "a"))
        .await
        .unwrap_err();
    eprintln!("SDK error for a reply lost as a 500: {err:?}");
    assert_eq!(status(&err), Some(500), "{err:?}");
    assert_eq!(err.code(), Some("InternalServerError"), "{err:?}");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_internal_server_error()),
        "{err:?}"
    );
    assert_eq!(
        value(&db, &table, &key("lost", "500")).await.as_deref(),
        Some("a")
    );

    // A reply lost with the connection: no response at all, the item is
    // there.
    proxy.add(Rule::times(Match::dynamo("PutItem"), Fault::LoseReply, 1));
    let err = put(&db, &table, item("lost", "dropped", "b"))
        .await
        .unwrap_err();
    eprintln!("SDK error for a dropped reply: {err:?}");
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "{err:?}"
    );
    assert_eq!(
        value(&db, &table, &key("lost", "dropped")).await.as_deref(),
        Some("b")
    );

    // A caller that retries a conditional put whose reply was lost finds
    // its own write in the way.
    proxy.add(Rule::times(
        Match::dynamo("PutItem"),
        Fault::LoseReplyAs500,
        1,
    ));
    let err = standard_retries(&proxy.endpoint)
        .put_item()
        .table_name(&table)
        .set_item(Some(item("lost", "retried", "c")))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "{err:?}"
    );
    assert_eq!(
        value(&db, &table, &key("lost", "retried")).await.as_deref(),
        Some("c")
    );

    assert_eq!(proxy.injected(), 3);
    assert_eq!(proxy.count(&Match::dynamo("PutItem")), 4);
    // Writes whose reply was lost count as writes; the retried item was
    // written twice (once applied, once refused by its condition).
    assert_eq!(
        proxy.hottest_items(1),
        [(item_id(&table, "lost", "retried"), 2)]
    );
}

#[tokio::test]
async fn a_hung_get_item_times_out_while_other_calls_get_through() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let db = no_retries(&proxy.endpoint);
    let table = unique("proxy");
    create_table(&db, &table).await;
    put(&db, &table, item("h", "1", "a")).await.unwrap();
    proxy.add(Rule::times(Match::dynamo("GetItem"), Fault::Hang, 2));
    let gets = Match::dynamo("GetItem");

    // The attempt timeout ends a hung call.
    let quick = dynamo(
        &proxy.endpoint,
        RetryConfig::disabled(),
        Some(Duration::from_millis(300)),
    );
    let err = try_value(&quick, &table, &key("h", "1")).await.unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");

    // A second hung call stays hung while other calls are served.
    let slow = dynamo(
        &proxy.endpoint,
        RetryConfig::disabled(),
        Some(Duration::from_secs(3)),
    );
    let hung = tokio::spawn({
        let table = table.clone();
        async move { try_value(&slow, &table, &key("h", "1")).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.count(&gets) < 2 {
        assert!(
            Instant::now() < deadline,
            "the second GetItem never reached the proxy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    put(&db, &table, item("h", "2", "b")).await.unwrap();
    update(&db, &table, &key("h", "1"), "c").await.unwrap();
    assert_eq!(
        value(&db, &table, &key("h", "2")).await.as_deref(),
        Some("b")
    );
    assert_eq!(
        value(&db, &table, &key("h", "1")).await.as_deref(),
        Some("c")
    );
    assert!(!hung.is_finished(), "the hung call was answered");
    let res = hung.await.unwrap();
    assert!(matches!(res, Err(SdkError::TimeoutError(_))), "{res:?}");
    assert_eq!(proxy.injected(), 2);
    assert_eq!(proxy.count(&gets), 4);
}

#[tokio::test]
async fn the_per_item_write_limit_throttles_only_the_hot_item() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let db = no_retries(&proxy.endpoint);
    let table = unique("proxy");
    create_table(&db, &table).await;
    // Bursts of 3, then one write per 100 s: nothing refills during the
    // test, so exactly 3 writes per item pass.
    proxy.limit_item_writes(0.01, 3.0);
    let hot = key("hot", "x");

    // UpdateItem names the item by its Key, PutItem by the key attributes
    // of its item: both count on the same bucket.
    let mut passed = 0;
    for i in 0..10 {
        let v = format!("w{i}");
        let res = if i % 2 == 0 {
            update(&db, &table, &hot, &v)
                .await
                .map_err(|e| (status(&e), e.code().map(str::to_owned)))
        } else {
            put(&db, &table, item("hot", "x", &v))
                .await
                .map_err(|e| (status(&e), e.code().map(str::to_owned)))
        };
        match res {
            Ok(()) => passed += 1,
            Err(e) => assert_eq!(
                e,
                (
                    Some(400),
                    Some("ProvisionedThroughputExceededException".to_owned())
                ),
                "write {i}"
            ),
        }
    }
    assert_eq!(passed, 3);
    assert_eq!(proxy.item_throttles(), 7);
    // The last write that passed is the one upstream.
    assert_eq!(value(&db, &table, &hot).await.as_deref(), Some("w2"));

    // Other items have their own buckets.
    for i in 0..5 {
        update(&db, &table, &key("cold", &i.to_string()), "v")
            .await
            .unwrap();
    }

    // A transaction that touches the hot item is canceled, the hot item's
    // reason a ThrottlingError; nothing of it is applied.
    let err = db
        .transact_write_items()
        .transact_items(tx_update(&table, key("cold", "t"), "v"))
        .transact_items(tx_update(&table, hot.clone(), "t"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(cancellation_codes(&err), ["None", "ThrottlingError"]);
    assert_eq!(value(&db, &table, &key("cold", "t")).await, None);

    // So is a batch.
    let err = db
        .batch_write_item()
        .request_items(
            &table,
            vec![
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item("cold", "b", "v")))
                            .build()
                            .unwrap(),
                    )
                    .build(),
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item("hot", "x", "b")))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ],
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_provisioned_throughput_exceeded_exception()),
        "{err:?}"
    );
    assert_eq!(value(&db, &table, &key("cold", "b")).await, None);
    assert_eq!(proxy.item_throttles(), 9);

    // Only forwarded writes count.
    let hottest = proxy.hottest_items(2);
    assert_eq!(hottest[0], (item_id(&table, "hot", "x"), 3));
    assert_eq!(hottest[1].1, 1, "{hottest:?}");

    // Without the limit the hot item takes writes again.
    proxy.unlimit_item_writes();
    update(&db, &table, &hot, "free").await.unwrap();
    assert_eq!(proxy.hottest_items(1), [(item_id(&table, "hot", "x"), 4)]);
    // The limit's throttles are not rule faults.
    assert_eq!(proxy.injected(), 0);
}

#[tokio::test]
async fn a_throttled_transaction_is_canceled_with_throttling_reasons() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let db = no_retries(&proxy.endpoint);
    let table = unique("proxy");
    create_table(&db, &table).await;

    // A rule on another table never fires.
    proxy.add(Rule::always(
        Match::dynamo_writes().table("no-such-table"),
        Fault::dynamo(500, "InternalServerError"),
    ));
    proxy.add(Rule::times(
        Match::dynamo("TransactWriteItems").table(&table),
        Fault::DynamoThrottle,
        1,
    ));
    let transact = || {
        db.transact_write_items()
            .transact_items(tx_update(&table, key("t", "1"), "a"))
            .transact_items(tx_put(&table, item("t", "2", "b")))
            .transact_items(tx_absent(&table, key("t", "0")))
    };
    let err = transact().send().await.unwrap_err();
    eprintln!("SDK error for a throttled transaction: {err:?}");
    assert_eq!(status(&err), Some(400), "{err:?}");
    assert_eq!(err.code(), Some("TransactionCanceledException"), "{err:?}");
    let codes = cancellation_codes(&err);
    assert_eq!(codes, ["ThrottlingError", "None", "None"]);
    assert_eq!(value(&db, &table, &key("t", "1")).await, None);
    assert_eq!(value(&db, &table, &key("t", "2")).await, None);

    // The rule is used up: the same transaction commits.
    transact().send().await.unwrap();
    assert_eq!(
        value(&db, &table, &key("t", "1")).await.as_deref(),
        Some("a")
    );
    assert_eq!(
        value(&db, &table, &key("t", "2")).await.as_deref(),
        Some("b")
    );

    assert_eq!(proxy.injected(), 1);
    assert_eq!(
        proxy.count(&Match::dynamo("TransactWriteItems").table(&table)),
        2
    );
    assert_eq!(
        proxy.count(&Match::dynamo_writes().table("no-such-table")),
        0
    );
    // CreateTable, two transactions, four reads: every call named the
    // table.
    assert_eq!(proxy.count(&Match::dynamo_any().table(&table)), 7);
    assert_eq!(proxy.count(&Match::dynamo_any()), 7);
}

#[tokio::test]
async fn a_share_of_calls_is_faulted_reproducibly() {
    const CALLS: usize = 200;
    let moto = Moto::start();
    let setup = no_retries(&moto.endpoint);
    let table = unique("proxy");
    create_table(&setup, &table).await;
    put(&setup, &table, item("s", "1", "a")).await.unwrap();

    // Which of CALLS GetItems a fresh proxy with a quarter share rule
    // seeded with `seed` faults.
    let run = |seed: u64| {
        let moto_endpoint = moto.endpoint.clone();
        let table = table.clone();
        async move {
            let proxy = FaultProxy::start(&moto_endpoint).await;
            proxy.add(Rule::share(
                Match::dynamo("GetItem"),
                Fault::dynamo(400, "ThrottlingException"),
                0.25,
                seed,
            ));
            let db = no_retries(&proxy.endpoint);
            let mut picked = Vec::new();
            for i in 0..CALLS {
                match try_value(&db, &table, &key("s", "1")).await {
                    Ok(v) => assert_eq!(v.as_deref(), Some("a")),
                    Err(e) => {
                        assert_eq!(e.code(), Some("ThrottlingException"), "{e:?}");
                        picked.push(i);
                    }
                }
            }
            assert_eq!(proxy.injected(), picked.len() as u64);
            assert_eq!(proxy.count(&Match::dynamo("GetItem")), CALLS as u64);
            picked
        }
    };
    let first = run(7).await;
    let again = run(7).await;
    let other = run(8).await;
    assert_eq!(first, again, "the same seed faults the same calls");
    assert_ne!(first, other, "another seed faults other calls");
    for picked in [&first, &other] {
        assert!(
            (20..=80).contains(&picked.len()),
            "{} of {CALLS} calls faulted at a share of 1/4",
            picked.len()
        );
    }
}
