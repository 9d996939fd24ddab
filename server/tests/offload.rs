//! Warms offloaded to S3 Batch Operations: the real server (in process)
//! with moto for S3 and the fake S3 Control endpoint running jobs for real
//! on moto. A warm that asks (or is above the threshold) completes through
//! one job and records what landed; a key that fails in the job is
//! reported; a source changed between the plan and the job's copy is
//! caught; a cancel cancels the job; an AccessDenied on CreateJob fails the
//! warm with the reason.

// Whole warms run in these tests: their futures nest deep.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{objects, Fixture};
use expresscache_client::Outcome;
use expresscache_server::batch::{Offload, S3ControlJobs};
use expresscache_server::testing::{
    create_bucket, get, list_keys, local_sdk_config, put, unique, FakeS3Control,
};

const ACCOUNT: &str = "123456789012";

/// `d/000`..`d/{n-1}`, a server offloading through a fake S3 Control
/// endpoint started with `knobs` (and `threshold`).
async fn offloading(
    n: usize,
    threshold: Option<u64>,
    knobs: &[(&str, &str)],
) -> (Fixture, FakeS3Control) {
    let data = objects("d/", n);
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let work = unique("work");
    let mut fake = None;
    let fx = Fixture::new_tuned_with_moto(&refs, |moto, d| {
        let f = FakeS3Control::start(&moto.endpoint, knobs);
        d.batch = Some(Arc::new(Offload {
            jobs: Arc::new(S3ControlJobs::new(
                &local_sdk_config(&moto.endpoint),
                ACCOUNT,
                Some(&f.endpoint),
                Duration::from_secs(1),
            )),
            s3: moto.s3(),
            working_bucket: work.clone(),
            role_arn: format!("arn:aws:iam::{ACCOUNT}:role/batch"),
            account_id: ACCOUNT.into(),
            region: "us-east-1".into(),
            threshold,
            poll: (Duration::from_millis(50), Duration::from_millis(200)),
        }));
        d.warm.skew_margin = Duration::from_millis(200);
        fake = Some(f);
    })
    .await;
    create_bucket(&fx.s3, &work).await;
    // S3 stamps whole seconds: a source written in the second its warm
    // began may postdate the job's guard, and is the engine's to copy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    (fx, fake.unwrap())
}

/// Waits until the fake has a job (the warm's plan is then complete).
async fn until_a_job(fake: &FakeS3Control) {
    let t0 = std::time::Instant::now();
    while jobs_made(fake) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn jobs_made(fake: &FakeS3Control) -> usize {
    fake.stats()["jobs"].as_object().unwrap().len()
}

#[tokio::test]
async fn a_warm_that_asks_copies_through_one_job_and_records_what_landed() {
    let (fx, fake) = offloading(30, None, &[]).await;
    let report = fx.warm(fx.request(&["d/"]).batch_operations(true)).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(report.counters.objects_copied, 30);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "d/").await.len(), 30);
    assert_eq!(get(&fx.s3, &fx.dir, "d/007").await, vec![b'q'; 16]);
    assert_eq!(jobs_made(&fake), 1);
    let copies = fx
        .server
        .store
        .calls
        .copy
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(copies, 0, "the engine copied nothing");
    // Recorded: a second warm finds every object cached.
    let again = fx.warm(fx.request(&["d/"])).await;
    assert_eq!(
        (again.counters.objects_hit, again.counters.objects_copied),
        (30, 0)
    );
}

#[tokio::test]
async fn a_warm_above_the_threshold_is_offloaded_and_one_at_it_is_not() {
    let (fx, fake) = offloading(30, Some(30), &[]).await;
    let at = fx.warm(fx.request(&["d/"])).await;
    assert_eq!(at.outcome, Outcome::Succeeded, "{at:?}");
    assert_eq!(jobs_made(&fake), 0, "30 to copy, threshold 30: the engine");
    let (fx, fake) = offloading(30, Some(29), &[]).await;
    let above = fx.warm(fx.request(&["d/"])).await;
    assert_eq!(above.outcome, Outcome::Succeeded, "{above:?}");
    assert_eq!(jobs_made(&fake), 1, "30 to copy, threshold 29: a job");
    assert_eq!(list_keys(&fx.s3, &fx.dir, "d/").await.len(), 30);
}

#[tokio::test]
async fn a_key_that_fails_in_the_job_is_reported() {
    let (fx, _fake) = offloading(12, None, &[("FAKE_S3CONTROL_FAIL_KEYS", "d/003")]).await;
    let report = fx.warm(fx.request(&["d/"]).batch_operations(true)).await;
    assert_eq!(report.outcome, Outcome::PartiallyFailed, "{report:?}");
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].key, "d/003");
    assert_eq!(report.failures[0].code, "AccessDenied");
    assert_eq!(report.counters.objects_copied, 11);
}

#[tokio::test]
async fn a_source_changed_between_the_plan_and_the_job_is_caught() {
    let (fx, fake) = offloading(20, None, &[("FAKE_S3CONTROL_TASK_DELAY_MS", "60")]).await;
    let mut client = fx.client().await;
    let warm = tokio::spawn({
        let req = fx.request(&["d/"]).batch_operations(true);
        async move { client.warm_and_wait(req, |_| {}).await.unwrap() }
    });
    // Once the job exists, the plan is made: change a key it copies late.
    until_a_job(&fake).await;
    put(
        &fx.s3,
        &fx.src,
        "d/019",
        b"a longer body than planned".to_vec(),
    )
    .await;
    let report = warm.await.unwrap();
    assert_eq!(report.outcome, Outcome::PartiallyFailed, "{report:?}");
    assert_eq!(report.failures[0].key, "d/019");
    assert_eq!(report.failures[0].code, "SourceChanged");
}

#[tokio::test]
async fn a_source_changed_to_the_same_size_is_caught_too() {
    let (fx, fake) = offloading(20, None, &[("FAKE_S3CONTROL_TASK_DELAY_MS", "60")]).await;
    let mut client = fx.client().await;
    let warm = tokio::spawn({
        let req = fx.request(&["d/"]).batch_operations(true);
        async move { client.warm_and_wait(req, |_| {}).await.unwrap() }
    });
    until_a_job(&fake).await;
    // 16 bytes, as planned, but other content, and after the plan began
    // (S3 stamps whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    put(&fx.s3, &fx.src, "d/019", vec![b'z'; 16]).await;
    let report = warm.await.unwrap();
    assert_eq!(report.outcome, Outcome::PartiallyFailed, "{report:?}");
    assert_eq!(report.failures[0].key, "d/019");
    assert_eq!(report.failures[0].code, "SourceChanged");
    assert!(
        !list_keys(&fx.s3, &fx.dir, "d/")
            .await
            .contains(&"d/019".to_owned()),
        "the job did not copy content the plan never listed"
    );
}

#[tokio::test]
async fn an_object_the_job_did_not_write_is_not_recorded() {
    // 300 ms a task: the job reaches d/029 after 9 s, the cancel below
    // comes within a second even on a loaded machine (checked below).
    let (fx, fake) = offloading(30, None, &[("FAKE_S3CONTROL_TASK_DELAY_MS", "300")]).await;
    // A stale object of the planned size already at the last key (no
    // entry in the index: the plan copies it).
    put(&fx.s3, &fx.dir, "d/029", vec![b's'; 16]).await;
    // Older than the job by more than the skew margin (200 ms here) and
    // S3's whole-second stamps.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut stream = fx
        .client()
        .await
        .warm(fx.request(&["d/"]).batch_operations(true))
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    until_a_job(&fake).await;
    // Cancelled long before the job reaches d/029.
    fx.client().await.cancel(&first.operation_id).await.unwrap();
    while stream.message().await.unwrap().is_some() {}
    let stats = fake.stats();
    let job = stats["jobs"].as_object().unwrap().values().next().unwrap();
    assert_eq!(job["status"], "Cancelled", "{job}");
    assert!(
        job["succeeded"].as_u64().unwrap() < 30,
        "the job was cancelled before it wrote d/029: {job}"
    );
    // Not recorded: the next warm copies it, with the source's content.
    let again = fx.warm(fx.request(&["d/"])).await;
    assert_eq!(again.outcome, Outcome::Succeeded, "{again:?}");
    assert!(again.counters.objects_copied >= 1, "{again:?}");
    assert_eq!(get(&fx.s3, &fx.dir, "d/029").await, vec![b'q'; 16]);
}

#[tokio::test]
async fn cancelling_the_warm_cancels_its_job() {
    let (fx, fake) = offloading(40, None, &[("FAKE_S3CONTROL_TASK_DELAY_MS", "100")]).await;
    let mut stream = fx
        .client()
        .await
        .warm(fx.request(&["d/"]).batch_operations(true))
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    until_a_job(&fake).await;
    fx.client().await.cancel(&first.operation_id).await.unwrap();
    let stats = fake.stats();
    let job = stats["jobs"].as_object().unwrap().values().next().unwrap();
    assert_eq!(job["status"], "Cancelled", "{job}");
    let mut last = first;
    while let Some(p) = stream.message().await.unwrap() {
        last = p;
    }
    assert_eq!(
        last.outcome,
        expresscache_client::pb::Outcome::Cancelled as i32,
        "{last:?}"
    );
}

#[tokio::test]
async fn the_jobs_progress_is_streamed_while_it_runs() {
    let (fx, _fake) = offloading(30, None, &[("FAKE_S3CONTROL_TASK_DELAY_MS", "40")]).await;
    let (report, updates) = fx
        .warm_counting(fx.request(&["d/"]).batch_operations(true))
        .await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    let mid = updates
        .iter()
        .filter_map(|p| p.proto().batch_job.clone())
        .find(|j| j.status == "Active" && j.tasks_succeeded > 0 && j.tasks_succeeded < 30);
    assert!(mid.is_some(), "the job's progress was shown while it ran");
    assert_eq!(mid.unwrap().total_tasks, 30);
}

#[tokio::test]
async fn a_throttled_create_job_is_retried() {
    // Past the SDK's own three attempts: the warm's retries carry it.
    let (fx, fake) = offloading(5, None, &[("FAKE_S3CONTROL_THROTTLE_CREATE", "4")]).await;
    let report = fx.warm(fx.request(&["d/"]).batch_operations(true)).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert!(fake.stats()["create_job_calls"].as_u64().unwrap() >= 5);
    assert_eq!(jobs_made(&fake), 1);
}

#[tokio::test]
async fn describe_job_calls_that_never_answer_time_out_and_are_retried() {
    let (fx, fake) = offloading(5, None, &[("FAKE_S3CONTROL_HANG_DESCRIBE", "2")]).await;
    let t0 = std::time::Instant::now();
    let report = fx.warm(fx.request(&["d/"]).batch_operations(true)).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    // The fake holds each hung call 60 s: the warm did not wait for them.
    assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
    assert_eq!(report.counters.objects_copied, 5);
    assert!(fake.stats()["describe_job_calls"].as_u64().unwrap() >= 3);
    assert_eq!(list_keys(&fx.s3, &fx.dir, "d/").await.len(), 5);
}

#[tokio::test]
async fn a_job_that_fails_fails_the_warm_with_its_reason() {
    let (fx, _fake) = offloading(5, None, &[("FAKE_S3CONTROL_FAIL_JOB", "1")]).await;
    let report = fx.warm(fx.request(&["d/"]).batch_operations(true)).await;
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(
        error.contains("failed") && error.contains("ManifestNotFound"),
        "{error}"
    );
}

#[tokio::test]
async fn access_denied_on_create_job_fails_the_warm_with_the_reason() {
    let (fx, _fake) = offloading(5, None, &[("FAKE_S3CONTROL_DENY_CREATE", "1")]).await;
    let report = fx.warm(fx.request(&["d/"]).batch_operations(true)).await;
    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(error.contains("AccessDenied"), "{error}");
}

#[tokio::test]
async fn asking_a_server_without_the_offload_is_a_failed_precondition() {
    let data = objects("d/", 1);
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    let fx = Fixture::new(&refs).await;
    let err = fx
        .client()
        .await
        .warm(fx.request(&["d/"]).batch_operations(true))
        .await
        .unwrap_err();
    let status = common::rpc_error(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--batch-role-arn"));
}
