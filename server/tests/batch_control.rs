//! S3 Batch Operations job control (`batch::S3ControlJobs`) through the real
//! aws-sdk-s3control against the fake S3 Control endpoint, whose jobs copy
//! for real on moto: a job copies its manifest's keys under the target
//! prefix and reports a failed key in the completion report; the same
//! client request token never makes a second job; a cancel cancels; an
//! AccessDenied on CreateJob and a job that ends Failed come back as such.

// Whole warms run in these tests: their futures nest deep.
#![recursion_limit = "256"]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use expresscache_server::batch::control::JobError;
use expresscache_server::batch::{JobControl, JobSpec, JobState, JobStatus, S3ControlJobs};
use expresscache_server::testing::{
    create_bucket, create_directory_bucket, get, list_keys, local_sdk_config, put, unique,
    unique_directory_bucket, FakeS3Control, Moto,
};

const ACCOUNT: &str = "123456789012";

struct World {
    moto: Moto,
    s3: aws_sdk_s3::Client,
    src: String,
    dir: String,
    work: String,
}

/// A source with `d/000`..`d/{n-1}` (one key with a space, which the
/// manifest must URL-encode), an empty directory bucket, a working bucket
/// holding the manifest at `manifests/m.csv`.
async fn world(n: usize) -> (World, String) {
    let moto = Moto::start();
    let s3 = moto.s3();
    let (src, dir, work) = (unique("src"), unique_directory_bucket(), unique("work"));
    create_bucket(&s3, &src).await;
    create_directory_bucket(&s3, &dir).await;
    create_bucket(&s3, &work).await;
    let mut manifest = String::new();
    for i in 0..n {
        let key = if i == 0 {
            "d/with space".to_owned()
        } else {
            format!("d/{i:03}")
        };
        put(&s3, &src, &key, key.as_bytes().to_vec()).await;
        let encoded = url_encode(&key);
        manifest.push_str(&format!("{src},{encoded}\n"));
    }
    let etag = s3
        .put_object()
        .bucket(&work)
        .key("manifests/m.csv")
        .body(manifest.into_bytes().into())
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap_or_default()
        .to_owned();
    (
        World {
            moto,
            s3,
            src,
            dir,
            work,
        },
        etag,
    )
}

/// A key as a Batch Operations manifest carries it: URL-encoded.
fn url_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn spec(w: &World, etag: &str, token: &str) -> JobSpec {
    JobSpec {
        client_request_token: token.into(),
        manifest_arn: format!("arn:aws:s3:::{}/manifests/m.csv", w.work),
        manifest_etag: etag.into(),
        target_arn: format!("arn:aws:s3express:us-east-1:{ACCOUNT}:bucket/{}", w.dir),
        target_key_prefix: "cache/".into(),
        report_bucket_arn: format!("arn:aws:s3:::{}", w.work),
        report_prefix: "reports".into(),
        role_arn: format!("arn:aws:iam::{ACCOUNT}:role/expresscache-batch"),
        description: "expresscache test".into(),
        // Every source predates it.
        unmodified_since: std::time::SystemTime::now() + Duration::from_secs(3600),
    }
}

fn jobs(w: &World, fake: &FakeS3Control) -> S3ControlJobs {
    S3ControlJobs::new(
        &local_sdk_config(&w.moto.endpoint),
        ACCOUNT,
        Some(&fake.endpoint),
        Duration::from_secs(1),
    )
}

async fn until_done(jobs: &S3ControlJobs, id: &str) -> JobStatus {
    let t0 = Instant::now();
    loop {
        let s = jobs.describe_job(id).await.unwrap();
        if s.state != JobState::Running {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "job still {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_job_copies_its_manifest_under_the_prefix_and_reports_the_failed_key() {
    let (w, etag) = world(6).await;
    let fake = FakeS3Control::start(&w.moto.endpoint, &[("FAKE_S3CONTROL_FAIL_KEYS", "d/003")]);
    let jobs = jobs(&w, &fake);
    let id = jobs.create_job(&spec(&w, &etag, "op-1")).await.unwrap();
    let done = until_done(&jobs, &id).await;
    assert_eq!(
        (done.state, done.total, done.succeeded, done.failed),
        (JobState::Complete, 6, 5, 1),
        "{done:?}"
    );
    // The job's guard comes back with it: an attempt that follows an
    // earlier attempt's job judges what landed by it.
    let guard = spec(&w, &etag, "op-1").unmodified_since;
    let told = done
        .unmodified_since
        .expect("DescribeJob names the job's guard");
    let off = told.duration_since(guard).unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(2),
        "guard {guard:?}, told {told:?}"
    );
    let copied = list_keys(&w.s3, &w.dir, "cache/").await;
    assert_eq!(copied.len(), 5, "{copied:?}");
    assert_eq!(
        get(&w.s3, &w.dir, "cache/d/with space").await,
        b"d/with space"
    );
    // The request as S3 Batch Operations needs it.
    let job = &fake.stats()["jobs"][&id];
    assert_eq!(job["report_scope"], "FailedTasksOnly");
    assert_eq!(job["confirmation_required"], "false");
    assert_eq!(job["target"], w.dir.as_str());
    // The report: the failed key, URL-encoded as in the manifest.
    let reports = list_keys(&w.s3, &w.work, &format!("reports/job-{id}/results/")).await;
    assert_eq!(reports.len(), 1);
    let csv = String::from_utf8(get(&w.s3, &w.work, &reports[0]).await).unwrap();
    assert!(
        csv.starts_with(&format!("{},d%2F003,,failed,AccessDenied,403,", w.src)),
        "{csv}"
    );
    // The same token again: the same job, no second one.
    let again = jobs.create_job(&spec(&w, &etag, "op-1")).await.unwrap();
    assert_eq!(again, id);
    let stats = fake.stats();
    assert_eq!(stats["create_job_calls"], 2);
    assert_eq!(stats["jobs"].as_object().unwrap().len(), 1, "one job");
}

#[tokio::test]
async fn a_cancel_cancels_a_running_job() {
    let (w, etag) = world(40).await;
    let fake = FakeS3Control::start(&w.moto.endpoint, &[("FAKE_S3CONTROL_TASK_DELAY_MS", "50")]);
    let jobs = jobs(&w, &fake);
    let id = jobs.create_job(&spec(&w, &etag, "op-2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = jobs.cancel_job(&id).await.unwrap();
    assert!(status == "Cancelling" || status == "Cancelled", "{status}");
    let done = until_done(&jobs, &id).await;
    assert_eq!(done.state, JobState::Cancelled, "{done:?}");
    assert!(done.succeeded < 40, "stopped early: {done:?}");
}

#[tokio::test]
async fn access_denied_on_create_and_a_failed_job_come_back_as_such() {
    let (w, etag) = world(2).await;
    let denying = FakeS3Control::start(&w.moto.endpoint, &[("FAKE_S3CONTROL_DENY_CREATE", "1")]);
    match jobs(&w, &denying)
        .create_job(&spec(&w, &etag, "op-3"))
        .await
    {
        Err(JobError::Refused { code, .. }) => assert_eq!(code, "AccessDenied"),
        other => panic!("expected AccessDenied, got {other:?}"),
    }
    drop(denying);
    let failing = FakeS3Control::start(&w.moto.endpoint, &[("FAKE_S3CONTROL_FAIL_JOB", "1")]);
    let jobs = jobs(&w, &failing);
    let id = jobs.create_job(&spec(&w, &etag, "op-4")).await.unwrap();
    let done = until_done(&jobs, &id).await;
    assert_eq!(done.state, JobState::Failed);
    assert!(
        done.failure_reasons[0].starts_with("ManifestNotFound"),
        "{done:?}"
    );
    match jobs.describe_job("no-such-job").await {
        Err(JobError::Refused { code, .. }) => assert_eq!(code, "NoSuchJob"),
        other => panic!("expected NoSuchJob, got {other:?}"),
    }
}
