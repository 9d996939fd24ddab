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
        request: WarmSpec {
            source: expresscache::BucketName::parse("src").unwrap(),
            prefixes: vec![expresscache::Prefix::parse("d/").unwrap()],
            directory_bucket: expresscache::DirectoryBucketName::parse("cache--use1-az4--x-s3")
                .unwrap(),
            ttl: Duration::from_secs(60),
            force_copy: false,
            request_id: None,
            destination_prefix: expresscache::Prefix::root(),
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
