//! What the DynamoDB index costs per object: runs a cold warm and a re-warm
//! of N objects through the real operation registry (run lease, checkpoints,
//! request id) and the real warm, with the DynamoDB index on moto and the
//! in-memory object store (so S3 is not what is measured), and counts every
//! DynamoDB request by operation. Units and dollars follow from the counts
//! by the cost model of doc/INDEX-DYNAMODB.md §4 (moto does not report
//! consumed capacity correctly): each write of an item under 1 KB is 1 write
//! unit, each item of a transaction 2, a GetItem 1 read unit, and a
//! 1,000-key page of records about 100 read units (16 strongly consistent
//! Queries of ~250-byte items).
//!
//!   bench/index_cost.sh [--objects N]

// Whole warms run in these tests: their futures nest deep.
#![recursion_limit = "256"]

use std::sync::Arc;
use std::time::{Duration, Instant};

use expresscache::{BucketName, DirectoryBucketName, Limits, Prefix, RequestId, WarmSpec};
use expresscache_server::core::clock::SystemClock;
use expresscache_server::fleet::{Operations, OpsSettings};
use expresscache_server::index::dynamo::{DynamoIndex, TablePrefix};
use expresscache_server::store::MemoryStore;
use expresscache_server::testing::{unique, Moto};
use expresscache_server::warm::{WarmSettings, Warmer};

const DIR: &str = "bench--use1-az4--x-s3";
/// DynamoDB on-demand prices ($ per million request units, us-east-1,
/// since the November 2024 cut).
const WRITE_PER_MILLION: f64 = 0.625;
const READ_PER_MILLION: f64 = 0.125;

fn spec(request_id: &str) -> WarmSpec {
    WarmSpec {
        source: BucketName::parse("src").unwrap_or_else(|e| panic!("{e}")),
        prefixes: vec![Prefix::parse("d/").unwrap_or_else(|e| panic!("{e}"))],
        directory_bucket: DirectoryBucketName::parse(DIR).unwrap_or_else(|e| panic!("{e}")),
        ttl: Duration::from_secs(3600),
        force_copy: false,
        request_id: Some(RequestId::parse(request_id).unwrap_or_else(|e| panic!("{e}"))),
        destination_prefix: Prefix::root(),
        max_staleness: std::time::Duration::ZERO,
        batch_operations: false,
        allow_empty: false,
        selection: Default::default(),
    }
}

/// Write and read units of the requests counted, by the cost model.
fn units(counts: &std::collections::BTreeMap<String, u64>, records_read: u64) -> (u64, u64) {
    let c = |op: &str| counts.get(op).copied().unwrap_or(0);
    let writes = c("UpdateItem") + c("PutItem") + c("DeleteItem") + 2 * 2 * c("TransactWriteItems");
    // A Query is priced by what it returns: the record pages at ~100 units
    // per 1,000 records (their 16 Queries per page included), every other
    // request about one unit.
    let page_queries = 16 * records_read.div_ceil(1000);
    let reads = c("GetItem")
        + c("BatchGetItem")
        + records_read / 10
        + c("Query").saturating_sub(page_queries);
    (writes, reads)
}

#[tokio::main]
async fn main() {
    let objects: usize = std::env::args()
        .skip_while(|a| a != "--objects")
        .nth(1)
        .map_or(20_000, |n| {
            n.parse().unwrap_or_else(|e| panic!("--objects: {e}"))
        });
    let moto = Moto::start();
    let prefix = TablePrefix::new(&unique("cost")).unwrap_or_else(|e| panic!("{e}"));
    let index = Arc::new(DynamoIndex::connect(&moto.sdk_config(), &prefix));
    index
        .create_tables()
        .await
        .unwrap_or_else(|e| panic!("create tables: {e}"));
    let store = MemoryStore::default();
    store.create_bucket("src");
    store.create_bucket(DIR);
    for i in 0..objects {
        store.put("src", &format!("d/{i:07}"), 4096);
    }
    let warmer = Arc::new(Warmer::new(
        Arc::new(store),
        index.clone(),
        Arc::new(SystemClock),
        WarmSettings::default(),
    ));
    let ops = Arc::new(Operations::new(
        warmer,
        index.clone(),
        OpsSettings::default(),
        Limits::default(),
    ));
    println!("{objects} objects of 4 KiB, DynamoDB index on moto, in-memory S3\n");
    println!(
        "| run | seconds | DynamoDB requests | by operation | write units | read units | $ per million objects |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    for (run, request_id) in [
        ("cold warm", "cost-cold"),
        ("re-warm (all hits)", "cost-warm"),
    ] {
        index.requests().reset();
        let t0 = Instant::now();
        let mut sub = ops
            .submit(spec(request_id), None)
            .await
            .unwrap_or_else(|e| panic!("submit: {e}"));
        let last = loop {
            let s = sub.borrow_and_update().clone();
            if s.is_done() {
                break s;
            }
            if sub.changed().await.is_err() {
                break sub.borrow().clone();
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        assert!(last.is_done(), "{run} did not finish: {last:?}");
        let counts = index.requests().snapshot();
        // The cold run's record pages come back empty; the re-warm's hold
        // every object's record.
        let records_read = if request_id == "cost-cold" {
            0
        } else {
            objects as u64
        };
        let (w, r) = units(&counts, records_read);
        let dollars = (w as f64 * WRITE_PER_MILLION + r as f64 * READ_PER_MILLION) / objects as f64;
        println!(
            "| {run} | {secs:.1} | {} | {} | {w} | {r} | {dollars:.2} |",
            index.requests().total(),
            counts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    println!(
        "\nThe replaced service: 1 conditional write per object, cold or cached: \
         ${WRITE_PER_MILLION:.3} per million objects on every run."
    );
}
