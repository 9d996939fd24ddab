//! `DynamoIndex` against moto's DynamoDB through the real AWS SDK: the
//! shared `CacheIndex` conformance suite, table creation and checks, the
//! ancestor-lease check of keys nested deeper than a transaction can hold,
//! and the request costs the layout promises (doc/INDEX-DYNAMODB.md).
//!
//! Each test starts its own moto and uses fresh tables; a missing moto
//! fails the test (it never passes by skipping). Two tests need no moto:
//! an endpoint that hangs or refuses must end in `IndexError::Unavailable`
//! within the configured timeouts.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use expresscache_server::index::conformance::run_all;
use expresscache_server::index::dynamo::layout::{partition_of, PARTITIONS};
use expresscache_server::index::dynamo::{DynamoConfig, TablePrefix};
use expresscache_server::index::{
    CacheIndex, ClaimKind, ClaimOutcome, ClaimTerms, Completion, DynamoIndex, Entry, EvictDecision,
    IndexError, KeyRange, Lease, RecordCursor,
};
use expresscache_server::testing::{free_port, local_sdk_config, unique, Moto};

const DIR: &str = "cache--use1-az4--x-s3";

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
    let mut cursor = RecordCursor::new(&index, DIR, "page/", None, &last);
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
