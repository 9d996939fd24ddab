//! A warm that makes no progress stops extending its leases.

use super::*;
use crate::index::SqliteIndex;
use crate::store::{FaultStore, MemoryStore, Op};
use expresscache::proto::v1 as pb;

#[tokio::test]
async fn a_warm_that_makes_no_progress_stops_extending_its_lease() {
    let mem = MemoryStore::default();
    mem.create_bucket("src");
    mem.create_bucket("cache--use1-az4--x-s3");
    mem.put("src", "d/1", 10);
    let store = FaultStore::new(mem);
    // The copy never answers (within this test).
    store.delay(Op::Copy, Duration::from_secs(60));
    let w = Arc::new(Warmer::new(
        Arc::new(store),
        Arc::new(SqliteIndex::open_in_memory().unwrap()),
        Arc::new(crate::core::clock::SystemClock),
        WarmSettings {
            stall_limit: Duration::from_millis(300),
            ..WarmSettings::default()
        },
    ));
    let spec = WarmSpec::parse(
        &pb::WarmCacheRequest {
            bucket: "src".into(),
            prefixes: vec!["d/".into()],
            directory_bucket: "cache--use1-az4--x-s3".into(),
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
        &expresscache::Limits::default(),
    )
    .unwrap();
    let started = w.clock.now();
    let task = {
        let w = Arc::clone(&w);
        tokio::spawn(async move {
            let (p, _rx) = Progress::new("stuck".into(), w.clock.clone());
            w.run(&spec, &p, "stuck").await
        })
    };
    // Renewals are due every 500 ms; a renewing warm would have pushed
    // the lease past started + 1.5 s by now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leases = w
        .index
        .covering_leases("cache--use1-az4--x-s3", "d/", 0)
        .await
        .unwrap();
    task.abort();
    assert_eq!(leases.len(), 1);
    // The first write asked for started + 1 s, rounded up to the second;
    // a renewal a second later would ask for started + 2 s at least.
    assert!(
        leases[0].expires_at < started + 2_000,
        "a stalled warm kept extending its lease: {} ms after start",
        leases[0].expires_at - started
    );
}
