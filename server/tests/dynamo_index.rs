//! `DynamoIndex` against moto's DynamoDB through the real AWS SDK: the
//! shared `CacheIndex` and `OperationLog` conformance suites, table
//! creation and checks, the ancestor-lease check of keys nested deeper than
//! a transaction can hold, request-id ownership under concurrent
//! submissions, and the request costs the layout promises
//! (doc/INDEX-DYNAMODB.md).
//!
//! Each test starts its own moto and uses fresh tables; a missing moto
//! fails the test (it never passes by skipping). Two tests need no moto:
//! an endpoint that hangs or refuses must end in `IndexError::Unavailable`
//! within the configured timeouts.

// Whole warms run in these tests: their futures nest deep.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)]

use expresscache_server::index::{Claims, Leases, Records, RunLeases};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use expresscache::Prefix;
use expresscache_server::core::clock::ManualClock;
use expresscache_server::core::operation::{OperationState, Outcome};
use expresscache_server::index::conformance::{run_all, run_operation_log, run_replica_registry};
use expresscache_server::index::dynamo::layout::{partition_of, PARTITIONS, STATUS_SHARDS};
use expresscache_server::index::dynamo::{DynamoConfig, TablePrefix};
use expresscache_server::index::{
    ClaimKind, ClaimOutcome, ClaimTerms, Completion, CreateOutcome, DynamoIndex, Entry,
    EvictDecision, IndexError, KeyRange, Lease, OpFilter, OperationLog, RecordCursor,
    ReplicaRegistry, RunTerms,
};
use expresscache_server::testing::{free_port, local_sdk_config, unique, Moto};

use expresscache_server::testing::records::{operation, ticket, DIRECTORY_BUCKET as DIR};

/// An index on fresh tables under a unique prefix.
async fn fresh(moto: &Moto, config: DynamoConfig) -> DynamoIndex {
    let prefix = TablePrefix::new(&unique("ec")).unwrap();
    let index = DynamoIndex::connect_with(&moto.sdk_config(), &prefix, config);
    index.create_tables().await.unwrap();
    index
}

fn entry(key: &str) -> Entry {
    Entry {
        directory_bucket: DIR.into(),
        key: key.into(),
        source_bucket: "src".into(),
        source_key: key.into(),
        source_etag: format!("\"{}\"", key.len()),
        size: 7,
        source_last_modified: None,
        dest_etag: "\"d\"".into(),
        cached_at: 1,
    }
}

fn terms(owner: &str, deadline: i64, now: i64) -> ClaimTerms<'_> {
    ClaimTerms {
        owner,
        deadline,
        now,
    }
}

/// Records `keys` as cached, the way a warm does: one batch of claims, one
/// batch of completions.
async fn cache(index: &DynamoIndex, keys: &[String]) {
    let claimed = index
        .claim_copies(DIR, keys, &terms("writer", i64::MAX, 0))
        .await
        .unwrap();
    assert!(claimed.iter().all(|c| *c == ClaimOutcome::Claimed));
    let entries: Vec<Entry> = keys.iter().map(|k| entry(k)).collect();
    let done = index.complete_copies(&entries, "writer").await.unwrap();
    assert!(done.iter().all(|c| *c == Completion::Recorded));
}

#[tokio::test]
async fn conforms_to_the_cache_index_contract() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    run_all(&index).await;
}

#[tokio::test]
async fn conforms_to_the_operation_log_contract() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    run_operation_log(&index).await;
}

#[tokio::test]
async fn conforms_to_the_replica_registry_contract() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    run_replica_registry(&index).await;
    // Replica names are free text (attribute names, not expression
    // tokens): dots, dashes, slashes and spaces are fine.
    index.heartbeat("host-1.example/a b", 1_000).await.unwrap();
    assert_eq!(
        index.live_replicas(500).await.unwrap(),
        ["host-1.example/a b"]
    );
}

fn done(id: &str) -> OperationState {
    OperationState::queued(id, 5).ended(Outcome::Succeeded, None)
}

#[tokio::test]
async fn concurrent_submissions_of_one_request_id_create_one_operation() {
    // moto serves one request at a time (its threaded server interleaves
    // concurrent transactions, which DynamoDB never does); the clients
    // here are still concurrent.
    let moto = Moto::start();
    let index = Arc::new(fresh(&moto, DynamoConfig::default()).await);
    for round in 0..5 {
        let rid = format!("job-{round}");
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let index = Arc::clone(&index);
                let op = operation(&format!("op-{round}-{i}"), Some(&rid), 10);
                tokio::spawn(async move { (op.id.clone(), index.create_operation(&op).await) })
            })
            .collect();
        let mut created = Vec::new();
        let mut existing = Vec::new();
        for t in tasks {
            let (id, outcome) = t.await.unwrap();
            match outcome.unwrap() {
                CreateOutcome::Created => created.push(id),
                CreateOutcome::Exists(e) => existing.push(e.id),
            }
        }
        assert_eq!(created.len(), 1, "exactly one creates it: {created:?}");
        assert!(
            existing.iter().all(|e| *e == created[0]),
            "the others are answered with the winner {created:?}: {existing:?}"
        );
        let listed = index
            .list_operations(OpFilter::All, None, 100)
            .await
            .unwrap();
        assert_eq!(
            listed
                .iter()
                .filter(|o| o.request_id.as_deref() == Some(rid.as_str()))
                .count(),
            1,
            "and no loser left an operation behind"
        );
    }
}

/// The raw item of `pk` in the operations table.
async fn raw_item(
    moto: &Moto,
    index: &DynamoIndex,
    pk: &str,
) -> Option<HashMap<String, AttributeValue>> {
    expresscache_server::testing::raw_item(moto, &index.tables().operations, pk).await
}

#[tokio::test]
async fn operations_are_readable_items_stamped_by_the_injected_clock() {
    let moto = Moto::start();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let index = fresh(&moto, DynamoConfig::default())
        .await
        .with_clock(clock.clone());
    index
        .create_operation(&operation("op-a", Some("job-a"), 500))
        .await
        .unwrap();
    let item = raw_item(&moto, &index, "op#op-a").await.unwrap();
    let state = item["state"].as_m().unwrap();
    assert_eq!(state["phase"], AttributeValue::S("queued".into()));
    let request = item["request"].as_m().unwrap();
    assert_eq!(
        request["prefixes"],
        AttributeValue::L(vec![
            AttributeValue::S("d/".into()),
            AttributeValue::S(String::new())
        ]),
        "documents are maps, the root prefix an empty string"
    );
    assert_eq!(
        item["status"],
        AttributeValue::S("running#04".into()),
        "its shard of the status: FNV-1a of the id, mod 8"
    );
    assert_eq!(
        item["created_key"],
        AttributeValue::S("00000000000000000500#op-a".into())
    );
    assert!(
        !item.contains_key("gc_at"),
        "a running operation is never collected"
    );
    let rid = raw_item(&moto, &index, "rid#job-a").await.unwrap();
    assert_eq!(rid["operation_id"], AttributeValue::S("op-a".into()));
    let month = 30 * 24 * 3600;
    let year = 365 * 24 * 3600;
    // Created at 500 ms, in second 0.
    let rid_gc = AttributeValue::N((month + year).to_string());
    assert_eq!(
        rid["gc_at"], rid_gc,
        "a request id's TTL is written with it: as late as its operation's if that \
         finished a year after its creation"
    );
    assert_eq!(item["rid_gc_at"], rid_gc, "and the operation knows it");

    clock.advance(500);
    assert!(index
        .update_operation("op-a", &ticket(), &done("op-a"))
        .await
        .unwrap());
    let item = raw_item(&moto, &index, "op#op-a").await.unwrap();
    assert_eq!(item["updated_at"], AttributeValue::N("1000500".into()));
    assert_eq!(item["status"], AttributeValue::S("finished#04".into()));
    let gc = (1_000_500 / 1000 + 30 * 24 * 3600).to_string();
    assert_eq!(
        item["gc_at"],
        AttributeValue::N(gc.clone()),
        "TTL: finished + 30 days"
    );
    assert_eq!(item["finished_at"], AttributeValue::N("1000500".into()));
    let rid = raw_item(&moto, &index, "rid#job-a").await.unwrap();
    assert_eq!(
        rid["gc_at"], rid_gc,
        "the request id outlives its operation: its final state wrote only the operation"
    );
    assert!(gc.parse::<i64>().unwrap() <= month + year);
    // An operation that finishes more than a year after its creation moves
    // its request id's TTL on with its own.
    index
        .create_operation(&operation("op-long", Some("job-long"), 1_000_000))
        .await
        .unwrap();
    clock.advance(1_000 * (year + 5));
    assert!(index
        .update_operation("op-long", &ticket(), &done("op-long"))
        .await
        .unwrap());
    let long = raw_item(&moto, &index, "op#op-long").await.unwrap();
    let rid = raw_item(&moto, &index, "rid#job-long").await.unwrap();
    assert_eq!(rid["gc_at"], long["gc_at"], "the request id goes with it");
    let entries = aws_sdk_dynamodb::Client::new(&moto.sdk_config())
        .query()
        .table_name(&index.tables().operations)
        .index_name("by_status")
        .key_condition_expression("#s = :f")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":f", AttributeValue::S("finished#04".into()))
        .send()
        .await
        .unwrap()
        .items
        .unwrap();
    let mut projected: Vec<&str> = entries[0].keys().map(String::as_str).collect();
    projected.sort_unstable();
    assert_eq!(
        projected,
        ["created_key", "finished_at", "pk", "status"],
        "the index holds keys and finished_at only: renewals and checkpoints do not write it"
    );

    assert_eq!(
        index.purge_operations(1_000_500).await.unwrap(),
        0,
        "updated at 1,000,500: not before it"
    );
    assert_eq!(index.purge_operations(1_000_501).await.unwrap(), 1);
    assert!(raw_item(&moto, &index, "op#op-a").await.is_none());
    assert!(
        raw_item(&moto, &index, "rid#job-a").await.is_none(),
        "the request id's item goes with its operation"
    );
    assert_eq!(
        index
            .create_operation(&operation("op-b", Some("job-a"), 600))
            .await
            .unwrap(),
        CreateOutcome::Created,
        "the request id is free again"
    );
}

/// The `by_status` entries under `key`, read from the index itself.
async fn status_entries(moto: &Moto, index: &DynamoIndex, key: &str) -> Vec<String> {
    let items = aws_sdk_dynamodb::Client::new(&moto.sdk_config())
        .query()
        .table_name(&index.tables().operations)
        .index_name("by_status")
        .key_condition_expression("#s = :k")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":k", AttributeValue::S(key.into()))
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    items
        .iter()
        .map(|i| i["pk"].as_s().unwrap().clone())
        .collect()
}

#[tokio::test]
async fn a_burst_of_operations_spreads_its_status_keys_over_the_shards() {
    // A job array's launchers arriving together each create an operation:
    // on one status key they would all write one partition of the index
    // (DynamoDB caps one at 1,000 writes a second).
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    let n = 64;
    for i in 0..n {
        index
            .create_operation(&operation(&format!("launcher-{i}"), None, 100 + i))
            .await
            .unwrap();
    }
    let mut per_shard = Vec::new();
    for shard in 0..STATUS_SHARDS {
        per_shard.push(
            status_entries(&moto, &index, &format!("running#{shard:02}"))
                .await
                .len(),
        );
    }
    assert!(
        status_entries(&moto, &index, "running").await.is_empty(),
        "nothing is written unsharded"
    );
    assert_eq!(per_shard.iter().sum::<usize>(), 64, "{per_shard:?}");
    assert!(
        per_shard.iter().all(|&c| c > 0 && c <= 64 / 4),
        "every shard takes a share, none more than a quarter: {per_shard:?}"
    );
    let listed = index
        .list_operations(OpFilter::Running, None, 100)
        .await
        .unwrap();
    let created: Vec<i64> = listed.iter().map(|op| op.created_at).collect();
    let newest_first: Vec<i64> = (100..100 + 64).rev().collect();
    assert_eq!(
        created, newest_first,
        "one newest-first listing across the shards"
    );
    let page = index
        .list_operations(OpFilter::Running, Some((150, "launcher-50".into())), 5)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|op| op.created_at).collect::<Vec<_>>(),
        [149, 148, 147, 146, 145],
        "a cursor pages across the shards"
    );
}

#[tokio::test]
async fn an_operation_an_earlier_release_wrote_unsharded_is_listed_finished_and_purged() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    index
        .create_operation(&operation("old", None, 5))
        .await
        .unwrap();
    // As releases before the sharding wrote it: the bare status.
    aws_sdk_dynamodb::Client::new(&moto.sdk_config())
        .update_item()
        .table_name(&index.tables().operations)
        .key("pk", AttributeValue::S("op#old".into()))
        .update_expression("SET #s = :r")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":r", AttributeValue::S("running".into()))
        .send()
        .await
        .unwrap();
    let running = index
        .list_operations(OpFilter::Running, None, 10)
        .await
        .unwrap();
    assert_eq!(running.len(), 1, "listed, so a takeover can find it");
    assert_eq!(running[0].id, "old");
    assert!(index
        .update_operation("old", &ticket(), &done("old"))
        .await
        .unwrap());
    assert!(status_entries(&moto, &index, "running").await.is_empty());
    let finished = index
        .list_operations(OpFilter::Finished, None, 10)
        .await
        .unwrap();
    assert_eq!(finished.len(), 1, "finished into its shard");
    assert_eq!(index.purge_operations(i64::MAX).await.unwrap(), 1);
}

#[tokio::test]
async fn an_unreadable_operation_item_is_skipped_not_fatal_to_listings() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    index
        .create_operation(&operation("good", None, 5))
        .await
        .unwrap();
    // Listed by the status index, but without its request and state.
    aws_sdk_dynamodb::Client::new(&moto.sdk_config())
        .put_item()
        .table_name(&index.tables().operations)
        .item("pk", AttributeValue::S("op#bad".into()))
        .item("id", AttributeValue::S("bad".into()))
        .item("status", AttributeValue::S("running".into()))
        .item("created_key", AttributeValue::S(format!("{:020}#bad", 6)))
        .send()
        .await
        .unwrap();
    let listed = index
        .list_operations(expresscache_server::index::OpFilter::Running, None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        ["good"],
        "the bad item is left out; the good one is still listed (and taken over)"
    );
    assert!(
        index.get_operation("bad").await.is_err(),
        "reading it by id still says it is corrupt"
    );
}

#[tokio::test]
async fn a_request_id_whose_operation_vanished_is_taken_over() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    index
        .create_operation(&operation("old", Some("job"), 1))
        .await
        .unwrap();
    // As DynamoDB's TTL may do: the operation goes, its request id's item
    // stays (TTL deletes items one by one, in no particular order).
    aws_sdk_dynamodb::Client::new(&moto.sdk_config())
        .delete_item()
        .table_name(&index.tables().operations)
        .key("pk", AttributeValue::S("op#old".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        index
            .create_operation(&operation("new", Some("job"), 2))
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    match index
        .create_operation(&operation("newer", Some("job"), 3))
        .await
        .unwrap()
    {
        CreateOutcome::Exists(e) => assert_eq!(e.id, "new"),
        CreateOutcome::Created => panic!("the request id now belongs to \"new\""),
    }
}

/// A run of `replica` from 1,000 to 5,000 ms.
fn terms_of(replica: &str) -> RunTerms<'_> {
    RunTerms {
        replica,
        deadline: 5_000,
        now: 1_000,
    }
}

/// Operation `id` (request id `job-ID`), created and taken over by `terms`.
async fn created_and_taken_over(
    index: &DynamoIndex,
    id: &str,
    terms: &RunTerms<'_>,
) -> expresscache_server::index::Takeover {
    index
        .create_operation(&operation(id, Some(&format!("job-{id}")), 1))
        .await
        .unwrap();
    index.take_over(id, terms).await.unwrap().unwrap()
}

/// The SDK retries a request whose answer was lost; DynamoDB's conditions
/// then see the first attempt's write. Sending the same call twice is what
/// such a retry looks like to the index.
#[tokio::test]
async fn a_retried_takeover_or_final_write_finds_its_own_write() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    let terms = terms_of("r2");
    let first = created_and_taken_over(&index, "re", &terms).await;
    assert_eq!(
        index.take_over("re", &terms).await.unwrap(),
        Some(first.clone()),
        "the same takeover again: the run is already this one"
    );
    let other = RunTerms {
        replica: "r3",
        ..terms
    };
    assert_eq!(
        index.take_over("re", &other).await.unwrap(),
        None,
        "another replica's is refused: the run is live"
    );
    let end = done("re");
    assert!(index
        .update_operation("re", &first.ticket, &end)
        .await
        .unwrap());
    assert!(
        index
            .update_operation("re", &first.ticket, &end)
            .await
            .unwrap(),
        "the same final state under the same ticket is already stored"
    );
    let mut other_end = end.clone();
    other_end.counters.objects_copied = 1;
    assert!(
        !index
            .update_operation("re", &first.ticket, &other_end)
            .await
            .unwrap(),
        "any other write to a finished operation is refused"
    );
    let mut next = operation("re2", Some("job-re"), 2);
    next.state.superseded_operation_id = Some("re".into());
    assert!(index.supersede_operation("re", &next).await.unwrap());
    assert!(
        index.supersede_operation("re", &next).await.unwrap(),
        "the request id already moved to this very operation"
    );
    assert!(
        !index
            .supersede_operation("re", &operation("re3", Some("job-re"), 3))
            .await
            .unwrap(),
        "but to no other"
    );
}

#[tokio::test]
async fn a_request_too_large_for_an_item_is_refused_before_any_write() {
    // Nothing listens there: the refusal must come before any request.
    let port = free_port();
    let index = DynamoIndex::connect_with(
        &local_sdk_config(&format!("http://127.0.0.1:{port}")),
        &TablePrefix::new("big").unwrap(),
        impatient(),
    );
    let mut op = operation("big", Some("job-big"), 1);
    op.request.prefixes = (0..1000)
        .map(|i| Prefix::parse(&format!("{i:0>200}/")).unwrap())
        .collect();
    let err = index.create_operation(&op).await.unwrap_err();
    assert!(
        matches!(&err, IndexError::TooLarge(m) if m.contains("warm fewer or shorter prefixes")),
        "{err}"
    );
    assert_eq!(index.requests().total(), 0);
}

#[tokio::test]
async fn a_state_over_dynamodbs_item_limit_is_refused_as_too_large_not_as_a_storage_error() {
    // What the run keeper needs to tell apart: a state too large has a
    // smaller form worth recording (without its failure list); any other
    // refusal is handed on.
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    let run = created_and_taken_over(&index, "huge", &terms_of("r1")).await;
    let mut end = done("huge");
    end.error = Some("x".repeat(450 * 1024));
    let err = index
        .update_operation("huge", &run.ticket, &end)
        .await
        .unwrap_err();
    assert!(matches!(&err, IndexError::TooLarge(_)), "{err}");
    // The same state without the oversized part is recorded.
    end.error = Some("too large to record".into());
    assert!(index
        .update_operation("huge", &run.ticket, &end)
        .await
        .unwrap());
}

#[tokio::test]
async fn run_and_listing_requests_cost_what_the_layout_says() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    index.requests().reset();
    index
        .create_operation(&operation("c1", Some("job"), 1))
        .await
        .unwrap();
    index
        .create_operation(&operation("c2", None, 2))
        .await
        .unwrap();
    assert_eq!(
        index.requests().of("TransactWriteItems"),
        1,
        "with a request id"
    );
    assert_eq!(index.requests().of("PutItem"), 1, "without");
    index.requests().reset();
    let terms = RunTerms {
        replica: "r2",
        deadline: 3_000,
        now: 1_000,
    };
    let t = index.take_over("c1", &terms).await.unwrap().unwrap();
    assert_eq!((t.ticket.attempt, t.crashes), (2, 1));
    assert_eq!(
        index.renew_run("c1", &t.ticket, 4_000).await.unwrap(),
        expresscache_server::index::Renewal::Held {
            cancel_requested: false
        }
    );
    assert!(index
        .update_operation("c1", &t.ticket, &OperationState::queued("c1", 1))
        .await
        .unwrap());
    assert_eq!(
        index.requests().total(),
        3,
        "takeover, renewal and checkpoint: one conditional write each"
    );
    for filter in [OpFilter::Running, OpFilter::Finished, OpFilter::All] {
        index.requests().reset();
        let page = index.list_operations(filter, None, 10).await.unwrap();
        // Each status's shards, and the unsharded value of earlier releases.
        let per_status = u64::from(STATUS_SHARDS) + 1;
        let queries = if filter == OpFilter::All { 2 } else { 1 } * per_status;
        let found = if filter == OpFilter::Finished { 0 } else { 2 };
        assert_eq!(page.len(), found, "{filter:?}");
        assert_eq!(
            index.requests().of("Query"),
            queries,
            "{filter:?}: one per shard of each status"
        );
        assert_eq!(
            index.requests().of("BatchGetItem"),
            u64::from(found > 0),
            "{filter:?}: the page's items in one read"
        );
        assert_eq!(
            index.requests().total(),
            queries + u64::from(found > 0),
            "{filter:?}: nothing per operation"
        );
    }
}

#[tokio::test]
async fn creating_the_tables_twice_changes_nothing_the_second_time() {
    let moto = Moto::start();
    let prefix = TablePrefix::new(&unique("ec")).unwrap();
    let index = DynamoIndex::connect(&moto.sdk_config(), &prefix);
    let first = index.create_tables().await.unwrap();
    let tables = index.tables();
    assert_eq!(
        first,
        [
            format!("created table {} (on-demand billing)", tables.records),
            format!("enabled TTL on {} (attribute gc_at)", tables.records),
            format!("enabled point-in-time recovery on {}", tables.records),
            format!("created table {} (on-demand billing)", tables.leases),
            format!("enabled point-in-time recovery on {}", tables.leases),
            format!("created table {} (on-demand billing)", tables.operations),
            format!("enabled TTL on {} (attribute gc_at)", tables.operations),
            format!("enabled point-in-time recovery on {}", tables.operations),
        ]
    );
    assert!(
        index.create_tables().await.unwrap().is_empty(),
        "everything is in place: nothing to do"
    );
    index.check_tables().await.unwrap();
}

#[tokio::test]
async fn missing_or_foreign_tables_name_the_create_command() {
    let moto = Moto::start();
    let prefix = TablePrefix::new(&unique("ec")).unwrap();
    let index = DynamoIndex::connect(&moto.sdk_config(), &prefix);
    let command = format!(
        "expresscache-server index create --index dynamodb://{}",
        prefix.as_str()
    );
    let err = index.check_tables().await.unwrap_err().to_string();
    assert!(err.contains(&command), "{err}");
    assert!(
        err.contains(&index.tables().records),
        "names the table: {err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");

    // A table of that name with another key is not taken for ours.
    let raw = aws_sdk_dynamodb::Client::new(&moto.sdk_config());
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    raw.create_table()
        .table_name(&index.tables().records)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = index.check_tables().await.unwrap_err().to_string();
    assert!(
        err.contains("not an expresscache index table") && err.contains(&command),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
    let err = index.create_tables().await.unwrap_err().to_string();
    assert!(
        err.contains("choose another table prefix"),
        "create never changes a foreign table: {err}"
    );

    // A record read on missing tables says how to create them, too.
    let other = DynamoIndex::connect(
        &moto.sdk_config(),
        &TablePrefix::new(&unique("ec")).unwrap(),
    );
    let err = other.get_record(DIR, "k").await.unwrap_err().to_string();
    assert!(err.contains("index create --index dynamodb://"), "{err}");
}

/// Runs the deep-key checks with and without the lease pre-check, so the
/// decisive read (after claiming) is exercised on its own.
#[tokio::test]
async fn a_key_120_levels_deep_gets_the_ancestor_lease_check() {
    for precheck_leases in [false, true] {
        let moto = Moto::start();
        let index = fresh(
            &moto,
            DynamoConfig {
                precheck_leases,
                ..DynamoConfig::default()
            },
        )
        .await;
        let dirs: Vec<String> = (0..120).map(|i| format!("d{i}/")).collect();
        let key = format!("{}object", dirs.concat());
        let shallow = dirs[0].clone();
        let deepest = dirs.concat();
        assert_eq!(
            expresscache_server::index::ancestors(&key).len(),
            122,
            "\"\", 120 directories and the key: more than a transaction holds"
        );
        cache(&index, std::slice::from_ref(&key)).await;
        let keys = vec![key.clone()];
        for leased in [&shallow, &deepest] {
            index
                .extend_lease(&Lease::new(DIR, leased, "src", 1_000), 0)
                .await
                .unwrap();
            let d = index
                .begin_evict(DIR, &keys, &terms("ev", 500, 100), false)
                .await
                .unwrap();
            assert_eq!(
                d,
                [EvictDecision::Live(leased.clone())],
                "a live lease on {} levels keeps it (precheck {precheck_leases})",
                leased.matches('/').count()
            );
            let rec = index.get_record(DIR, &key).await.unwrap().unwrap();
            assert!(
                rec.claim.is_none() && !rec.unconfirmed,
                "a kept key is left as it was found"
            );
            index.end_leases(DIR, leased, 100).await.unwrap();
        }
        let d = index
            .begin_evict(DIR, &keys, &terms("ev", 500, 100), false)
            .await
            .unwrap();
        assert!(
            matches!(&d[0], EvictDecision::Marked(e) if e.key == key),
            "no live lease: claimed for deletion"
        );
        index.finish_evict(DIR, &keys, "ev").await.unwrap();
        assert!(index.get_record(DIR, &key).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_kept_key_gets_back_the_claim_it_had() {
    let moto = Moto::start();
    // Without the pre-check the claim is taken and then given back.
    let index = fresh(
        &moto,
        DynamoConfig {
            precheck_leases: false,
            ..DynamoConfig::default()
        },
    )
    .await;
    let keys = vec!["g/k".to_owned()];
    cache(&index, &keys).await;
    // A copier that died: its claim lapsed at 50.
    index
        .claim_copy(DIR, "g/k", &terms("dead-copier", 50, 0))
        .await
        .unwrap();
    index
        .extend_lease(&Lease::new(DIR, "g/", "src", 1_000), 0)
        .await
        .unwrap();
    let d = index
        .begin_evict(DIR, &keys, &terms("ev", 500, 100), false)
        .await
        .unwrap();
    assert_eq!(d, [EvictDecision::Live("g/".into())]);
    let claim = index.get_record(DIR, "g/k").await.unwrap().unwrap().claim;
    assert_eq!(
        claim.map(|c| (c.owner, c.kind, c.deadline)),
        Some(("dead-copier".to_owned(), ClaimKind::Copy, 50)),
        "the lapsed claim is restored exactly"
    );
    // A lapsed eviction taken over and given back leaves the entry untrusted:
    // the dead evictor's delete may have landed.
    index.end_leases(DIR, "g/", 100).await.unwrap();
    index
        .begin_evict(DIR, &keys, &terms("dead-evictor", 150, 100), true)
        .await
        .unwrap();
    index
        .extend_lease(&Lease::new(DIR, "g/", "src", 1_000), 200)
        .await
        .unwrap();
    let d = index
        .begin_evict(DIR, &keys, &terms("ev2", 900, 200), false)
        .await
        .unwrap();
    assert_eq!(d, [EvictDecision::Live("g/".into())]);
    let rec = index.get_record(DIR, "g/k").await.unwrap().unwrap();
    assert!(rec.unconfirmed, "untrusted until a copy records it again");
    assert_eq!(rec.claim.map(|c| c.owner), Some("dead-evictor".to_owned()));
}

#[tokio::test]
async fn records_merge_every_partition_in_key_order() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    let mut keys: Vec<String> = (0..300).map(|i| format!("m/{:03}/k{i}", i % 37)).collect();
    keys.extend(["m0".to_owned(), "l/z".to_owned()]);
    cache(&index, &keys).await;
    let partitions: BTreeSet<u8> = keys.iter().map(|k| partition_of(k)).collect();
    assert_eq!(
        partitions.len(),
        usize::from(PARTITIONS),
        "the keys land in every partition"
    );
    let mut want: Vec<String> = keys
        .iter()
        .filter(|k| k.starts_with("m/"))
        .cloned()
        .collect();
    want.sort();
    // Page through with small pages: each page merges all partitions.
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = index
            .records(DIR, &KeyRange::prefix("m/").after(after.as_deref()), 41)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        got.extend(page.into_iter().map(|r| r.key));
    }
    assert_eq!(got, want, "every key under the prefix once, in byte order");
    let window = index
        .records(
            DIR,
            &KeyRange::prefix("m/")
                .after(Some(want[10].as_str()))
                .upto(Some(want[60].as_str())),
            1000,
        )
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        want[11..=60].iter().map(String::as_str).collect::<Vec<_>>(),
        "(after, upto] bounds"
    );
}

#[tokio::test]
async fn a_page_merge_costs_a_request_per_partition_not_per_key() {
    let moto = Moto::start();
    let index = fresh(&moto, DynamoConfig::default()).await;
    let keys: Vec<String> = (0..1000).map(|i| format!("page/obj-{i:05}")).collect();
    index.requests().reset();
    cache(&index, &keys).await;
    assert_eq!(
        index.requests().of("UpdateItem"),
        2 * 1000,
        "a cold copy costs two writes: the claim and the completion"
    );
    assert_eq!(index.requests().total(), 2 * 1000, "and nothing else");
    cache(&index, &["pagf/x".to_owned(), "pag/y".to_owned()]).await;

    index.requests().reset();
    let all = index
        .records(DIR, &KeyRange::prefix("page/"), 1000)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| &r.key).collect::<Vec<_>>(),
        keys.iter().collect::<Vec<_>>()
    );
    let queries = index.requests().of("Query");
    assert!(
        (u64::from(PARTITIONS)..=2 * u64::from(PARTITIONS)).contains(&queries),
        "1,000 records cost {queries} Queries: one per partition (a few refills at most)"
    );
    assert_eq!(index.requests().total(), queries, "no per-key reads");

    // The planner's merge of a listing page: a cursor sought key by key.
    index.requests().reset();
    let last = keys.last().unwrap().clone();
    let mut cursor = RecordCursor::new(&index, DIR, "page/", std::ops::Bound::Unbounded, &last);
    for k in &keys {
        assert!(cursor.seek(k).await.unwrap().is_some(), "{k} is cached");
    }
    let queries = index.requests().of("Query");
    assert!(
        queries <= 2 * u64::from(PARTITIONS),
        "merging a 1,000-key page cost {queries} Queries"
    );
    assert_eq!(index.requests().total(), queries);
}

/// Settings that give up fast, for endpoints that do not answer.
fn impatient() -> DynamoConfig {
    DynamoConfig {
        max_attempts: 2,
        attempt_timeout: Duration::from_millis(300),
        operation_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_millis(300),
        // Only the SDK's own attempts: what one send costs, not how long a
        // call waits out a busy table (tests/dynamo_faults.rs).
        busy_budget: Duration::ZERO,
        ..DynamoConfig::default()
    }
}

#[tokio::test]
async fn an_endpoint_that_never_answers_is_unavailable_not_waited_for() {
    // Accepts connections (the kernel's backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let prefix = TablePrefix::new("hung").unwrap();
    let index = DynamoIndex::connect_with(&local_sdk_config(&endpoint), &prefix, impatient());
    let started = Instant::now();
    let err = index.get_record(DIR, "k").await.unwrap_err();
    assert!(
        matches!(err, IndexError::Unavailable(_)),
        "a timeout is retryable: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeouts, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        index.requests().of("GetItem"),
        2,
        "each attempt timed out, and was retried once"
    );
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let port = free_port(); // nothing listens there
    let prefix = TablePrefix::new("refused").unwrap();
    let index = DynamoIndex::connect_with(
        &local_sdk_config(&format!("http://127.0.0.1:{port}")),
        &prefix,
        impatient(),
    );
    let err = index
        .claim_copy(DIR, "k", &terms("w", 10, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, IndexError::Unavailable(_)), "{err}");
}

/// A replica's operations on `index` (over an empty in-memory store), its
/// clock `clock`, at default settings.
fn operations_on(
    index: Arc<DynamoIndex>,
    clock: Arc<dyn expresscache_server::core::clock::Clock>,
) -> Arc<expresscache_server::fleet::Operations> {
    use expresscache_server::fleet::{Operations, OpsSettings};
    use expresscache_server::store::MemoryStore;
    use expresscache_server::warm::{WarmSettings, Warmer};
    let warmer = Arc::new(Warmer::new(
        Arc::new(MemoryStore::default()),
        index.clone(),
        clock,
        WarmSettings::default(),
    ));
    Arc::new(Operations::new(
        warmer,
        index,
        OpsSettings::default(),
        expresscache::Limits::default(),
    ))
}

#[tokio::test]
async fn orphan_adoption_pages_past_a_page_shortened_by_an_unreadable_item() {
    let moto = Moto::start();
    let index = Arc::new(fresh(&moto, DynamoConfig::default()).await);
    // 150 warms whose runs lapsed long ago (deadline 1,000 ms after the
    // epoch), created one millisecond apart.
    for i in 0..150 {
        index
            .create_operation(&operation(&format!("op{i:03}"), None, 10_000 + i))
            .await
            .unwrap();
    }
    // One of the newest 100 (the first page) cannot be read: the page
    // comes back one short, and the scan must still go on to the rest.
    aws_sdk_dynamodb::Client::new(&moto.sdk_config())
        .update_item()
        .table_name(&index.tables().operations)
        .key("pk", AttributeValue::S("op#op120".into()))
        .update_expression("REMOVE #r")
        .expression_attribute_names("#r", "request")
        .send()
        .await
        .unwrap();
    let ops = operations_on(
        index.clone(),
        Arc::new(expresscache_server::core::clock::SystemClock),
    );
    let resumed = ops.adopt_orphans().await.unwrap();
    assert_eq!(resumed, 149, "every readable orphan, on every page");
}

/// For the orphan-scan tests: moto, the proxy in front of it, fresh
/// tables both reach (`direct` to moto, `index` through the proxy, which
/// counts its reads), and a manual clock at `t0`, now.
async fn scan_fixture() -> (
    Moto,
    expresscache_server::testing::proxy::FaultProxy,
    DynamoIndex,
    Arc<DynamoIndex>,
    i64,
    Arc<ManualClock>,
) {
    let moto = Moto::start();
    let proxy = expresscache_server::testing::proxy::FaultProxy::start(&moto.endpoint).await;
    let prefix = TablePrefix::new(&unique("ec")).unwrap();
    let direct = DynamoIndex::connect_with(&moto.sdk_config(), &prefix, DynamoConfig::default());
    direct.create_tables().await.unwrap();
    let index = Arc::new(DynamoIndex::connect_with(
        &local_sdk_config(&proxy.endpoint),
        &prefix,
        DynamoConfig::default(),
    ));
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (
        moto,
        proxy,
        direct,
        index,
        t0,
        Arc::new(ManualClock::new(t0)),
    )
}

#[tokio::test]
async fn the_orphan_scan_reads_a_live_run_again_only_once_it_may_have_lapsed() {
    use expresscache_server::fleet::OpsSettings;
    use expresscache_server::testing::proxy::Match;
    let (_moto, proxy, direct, index, t0, clock) = scan_fixture().await;
    // 20 warms another replica runs, created a minute ago (older than a
    // run lease: a look reads them), its runs renewed until a minute from
    // now, and that replica registered alive.
    let other = |deadline| RunTerms {
        replica: "other",
        deadline,
        now: t0,
    };
    let mut tickets = Vec::new();
    for i in 0..20 {
        let id = format!("op{i:02}");
        let mut op = operation(&id, None, t0 - 60_000 + i);
        op.run = None;
        direct.create_operation(&op).await.unwrap();
        let taken = direct.take_over(&id, &other(t0 + 60_000)).await.unwrap();
        tickets.push((id, taken.unwrap().ticket));
    }
    direct.heartbeat("other", t0 + 3_600_000).await.unwrap();
    let ops = operations_on(index.clone(), clock.clone());
    ops.heartbeat().await.unwrap();
    // Item reads of the operations table (which also holds the replica
    // registry's item, read by each heartbeat: counted apart).
    let table = index.tables().operations.clone();
    let all_reads = || {
        proxy.count(&Match::dynamo("GetItem").table(table.clone()))
            + proxy.count(&Match::dynamo("BatchGetItem").table(table.clone()))
    };
    let mut registry_reads = all_reads();
    let reads = |registry_reads: u64| all_reads() - registry_reads;
    assert_eq!(ops.adopt_orphans().await.unwrap(), 0, "every run is live");
    assert_eq!(
        reads(registry_reads),
        20,
        "the first look reads each operation once"
    );
    for _ in 0..3 {
        assert_eq!(ops.adopt_orphans().await.unwrap(), 0);
    }
    assert_eq!(
        reads(registry_reads),
        20,
        "later looks read none again while their runs cannot have lapsed"
    );
    // Two run leases on, the runs (a joiner's long lease, here a minute)
    // are still not read again: their holder is alive, the deadline ahead.
    clock.advance(25_000);
    assert_eq!(ops.adopt_orphans().await.unwrap(), 0);
    assert_eq!(
        reads(registry_reads),
        20,
        "a live holder's long runs: not read again every run lease"
    );
    // The other replica stops on purpose: it releases five runs (the
    // others it could not) and leaves the registry. The next look reads
    // its runs again and takes the released ones over at once.
    for (id, ticket) in &tickets[..5] {
        direct.release_run(id, ticket).await.unwrap();
    }
    direct.leave("other").await.unwrap();
    let before = all_reads();
    ops.heartbeat().await.unwrap();
    registry_reads += all_reads() - before;
    assert_eq!(ops.adopt_orphans().await.unwrap(), 5, "the released runs");
    // (The resumed warms may read their own operations meanwhile.)
    assert!(
        reads(registry_reads) >= 40,
        "a replica that left: its runs are read again"
    );
    // The five resumed warms end (their buckets do not exist) before the
    // clock moves, so none is handed on and taken over again below.
    let t = Instant::now();
    for (id, _) in &tickets[..5] {
        while !direct.get_operation(id).await.unwrap().unwrap().is_done() {
            assert!(t.elapsed() < Duration::from_secs(10), "{id} never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The other replica is back, alive: its runs are not read again
    // until their deadline may have passed.
    direct.heartbeat("other", t0 + 3_600_000).await.unwrap();
    let before = all_reads();
    ops.heartbeat().await.unwrap();
    registry_reads += all_reads() - before;
    let before = reads(registry_reads);
    assert_eq!(ops.adopt_orphans().await.unwrap(), 0);
    assert_eq!(
        reads(registry_reads),
        before,
        "a live holder's runs: not read"
    );
    // The clock moves past the deadlines read: the rest have lapsed,
    // although their holder is alive (paused, or its renewals lost).
    clock.advance(61_000 - 25_000 + OpsSettings::default().skew_margin.as_millis() as i64);
    assert_eq!(
        ops.adopt_orphans().await.unwrap(),
        15,
        "the runs whose deadline passed, read again and taken over"
    );
}

/// A job array's warms mostly end within a run lease: a look reads no
/// operation younger than one (its run cannot have lapsed, only been
/// released), and takes a released young one over once its first run
/// lease has passed, within the takeover bound.
#[tokio::test]
async fn the_orphan_scan_reads_no_warm_younger_than_a_run_lease_and_takes_a_released_one_over_after_it(
) {
    use expresscache_server::fleet::OpsSettings;
    use expresscache_server::testing::proxy::Match;
    let (_moto, proxy, direct, index, t0, clock) = scan_fixture().await;
    use expresscache_server::core::clock::Clock;
    // 20 warms created just now on another replica, held for a minute;
    // it releases five of them (as a shutdown does).
    let mut tickets = Vec::new();
    for i in 0..20 {
        let id = format!("op{i:02}");
        let mut op = operation(&id, None, t0 + i);
        op.run = None;
        direct.create_operation(&op).await.unwrap();
        let terms = RunTerms {
            replica: "other",
            deadline: t0 + 60_000,
            now: t0,
        };
        tickets.push((
            id.clone(),
            direct.take_over(&id, &terms).await.unwrap().unwrap().ticket,
        ));
    }
    for (id, ticket) in &tickets[..5] {
        direct.release_run(id, ticket).await.unwrap();
    }
    let ops = operations_on(index.clone(), clock.clone());
    ops.heartbeat().await.unwrap();
    let gets = || proxy.count(&Match::dynamo("GetItem").table(index.tables().operations.clone()));
    let before = gets();
    assert_eq!(ops.adopt_orphans().await.unwrap(), 0, "too young to judge");
    assert_eq!(gets(), before, "no young operation read");
    // Past the first run lease (and the skew margin): read, and the
    // released five taken over; the other 15 are held until a minute on.
    let s = OpsSettings::default();
    clock.advance((s.run_ttl + s.skew_margin).as_millis() as i64 + 100);
    assert_eq!(ops.adopt_orphans().await.unwrap(), 5, "the released runs");
    assert!(gets() - before >= 20, "each read once it may have lapsed");
    // A replica that stops releases its runs and leaves the registry: its
    // young warms are taken over at the next look, not a run lease later.
    let t1 = clock.now();
    direct.heartbeat("leaving", t1 + 3_600_000).await.unwrap();
    ops.heartbeat().await.unwrap();
    for i in 0..3 {
        let id = format!("young{i}");
        let mut op = operation(&id, None, t1 + i);
        op.run = None;
        direct.create_operation(&op).await.unwrap();
        let terms = RunTerms {
            replica: "leaving",
            deadline: t1 + 60_000,
            now: t1,
        };
        let ticket = direct.take_over(&id, &terms).await.unwrap().unwrap().ticket;
        direct.release_run(&id, &ticket).await.unwrap();
    }
    assert_eq!(
        ops.adopt_orphans().await.unwrap(),
        0,
        "young, and its replica is up"
    );
    direct.leave("leaving").await.unwrap();
    ops.heartbeat().await.unwrap();
    assert_eq!(
        ops.adopt_orphans().await.unwrap(),
        3,
        "taken over once it left"
    );
}

/// A final state and its lease epochs are one write of the operation
/// (and one of its request id's TTL): a job array's burst of final states
/// costs the index two requests each, not five (a renewal asking whether
/// the run is held, read back where the endpoint does not return refused
/// items, the epochs, the state, the request id).
#[tokio::test]
async fn a_final_state_and_its_lease_epochs_are_one_write() {
    let moto = Moto::start();
    // Finished a second after its creation (at 1 ms).
    let index = fresh(&moto, DynamoConfig::default())
        .await
        .with_clock(Arc::new(ManualClock::new(1_000)));
    let t = created_and_taken_over(&index, "fin", &terms_of("r1")).await;
    let done = OperationState::queued("fin", 1).ended(Outcome::Succeeded, None);
    assert!(done.is_done());
    let epochs = vec![("d/".to_owned(), "e1".to_owned())];
    index.requests().reset();
    assert!(index
        .finish_operation("fin", &t.ticket, &done, &epochs)
        .await
        .unwrap());
    assert_eq!(
        index.requests().snapshot(),
        [("UpdateItem".to_owned(), 1)].into_iter().collect(),
        "the operation only: its request id's TTL was written when it was created"
    );
    let rec = index.get_operation("fin").await.unwrap().unwrap();
    assert!(rec.is_done(), "finished: {:?}", rec.state);
    assert_eq!(rec.state.outcome, Some(Outcome::Succeeded));
    assert!(rec.run.is_none(), "no run left: {:?}", rec.run);
    assert_eq!(index.lease_epochs("fin").await.unwrap(), epochs);
    // A superseded attempt's final state writes neither.
    let other = index.take_over("fin", &terms_of("r2")).await.unwrap();
    assert!(other.is_none(), "a finished operation has no run to take");
}
