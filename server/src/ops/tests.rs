use std::sync::Arc;
use std::time::Duration;

use expresscache::{Limits, WarmSpec};

use super::*;
use crate::index::{RunTerms, SqliteIndex};
use crate::operation::{OperationRecord, OperationState, Outcome};
use crate::store::MemoryStore;
use crate::warm::{WarmSettings, Warmer};

fn unfinished(id: &str, resumptions: u32) -> OperationRecord {
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
        },
        state: OperationState {
            phase: crate::operation::Phase::Copying,
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
        Arc::clone(&index),
        Arc::new(crate::clock::SystemClock),
        WarmSettings::default(),
    ));
    let ops = Arc::new(Operations::new(
        warmer,
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
        Arc::clone(&store),
        Arc::clone(&index),
        Arc::new(crate::clock::SystemClock),
        warm,
    ));
    let settings = OpsSettings {
        run_ttl: Duration::from_millis(400),
        renew_every: Duration::from_millis(100),
        publish_interval: Duration::from_millis(50),
        ..OpsSettings::default()
    };
    let ops = Arc::new(Operations::new(warmer, settings, Limits::default()));
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
