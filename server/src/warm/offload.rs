//! A warm's copies through an S3 Batch Operations job. The planner's tasks
//! are gathered (nothing is copied while the plan is incomplete); if the
//! warm asked for a job, or has more keys to copy than the server's
//! threshold, the keys this warm claimed and that one CopyObject can copy
//! (at most 5 GiB) go into a CSV manifest and one job; everything else
//! (keys another warm holds, larger objects) goes through the engine as
//! usual, beside the job.
//!
//! A job's copies cannot be conditioned on the source ETag, so nothing it
//! reports is trusted as is: once it ends, the destination is listed and
//! each key is recorded only if it landed with the size planned; a key of
//! another size is `SourceChanged`, a key the report lists as failed is
//! that failure, and a key that did not land (a cancelled job) is settled
//! by the engine, like a key whose claim was lost meanwhile. The claims
//! are renewed while the job runs; a cancelled warm cancels its job. The
//! client request token is the operation's id: a resumed operation finds
//! its job again (and the check of what landed covers whatever that job
//! copied) instead of making a second.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot};

use expresscache::WarmSpec;

use super::claims::KeyClaims;
use super::listing::Lister;
use super::phase::CopyingStarted;
use super::settle::Settler;
use super::job_seen::{JobSeen, Judged};
use super::task::CopyTask;
use super::writer::EntrySender;
use super::WarmError;
use crate::batch::control::{JobError, JobSpec, JobState};
use crate::batch::Offload;
use crate::core::clock::Clock;
use crate::core::judge::Judge;
use crate::engine::CopyEngine;
use crate::core::limits::MAX_COPY_OBJECT;
use crate::index::{millis_of, Completion, Entry};
use crate::progress::Progress;
use crate::stop::StopSignal;
use crate::store::{ListQuery, ObjectStore};

/// Keys the engine settles at once beside a job, at least.
const ENGINE_TASKS: usize = 16;

/// Claims renewed (or released) at once while a job runs.
const RENEWALS_AT_ONCE: usize = 64;

/// Entries of what a job copied in flight to the writer at once.
const RECORDS_AT_ONCE: usize = 256;

/// How a job-copied key ended.
enum Landed {
    Recorded,
    /// Settle it through the engine (claim lost, or not copied).
    Engine,
}

/// Copies a warm's planned keys through an S3 Batch Operations job where
/// the plan calls for one, and the rest through the engine: what offload
/// uses of the warm.
pub(super) struct Offloader<'a> {
    pub o: &'a Offload,
    pub claims: &'a KeyClaims<'a>,
    /// Copies what the job does not (and what it did not land).
    pub settler: Settler<'a>,
    /// Counts the listing of what landed with the warm's listing requests.
    pub lister: &'a Lister<'a>,
    pub store: &'a dyn ObjectStore,
    pub engine: &'a CopyEngine,
    pub spec: &'a WarmSpec,
    pub progress: &'a Progress,
    /// The claim owner: the operation id (the attempt's).
    pub owner: &'a str,
    pub stop: &'a StopSignal,
    pub copying: &'a CopyingStarted,
    pub clock: &'a dyn Clock,
    pub judge: Judge,
    /// When the warm began (wall clock, as S3 stamps objects): the job
    /// copies only sources not modified since.
    pub started: std::time::SystemTime,
}

impl Offloader<'_> {
    /// Copies every task from `tasks`, through a job when the plan calls
    /// for one.
    pub async fn copy_all(
        &self,
        mut tasks: mpsc::Receiver<CopyTask>,
        entries: EntrySender,
    ) -> Result<(), WarmError> {
        // Dropped at the end: the writer ends when every sender is gone.
        let entries = &entries;
        let mut all = Vec::new();
        while let Some(t) = tasks.recv().await {
            all.push(t);
        }
        let (job, engine): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|t| t.claimed_at.is_some() && t.object.size <= MAX_COPY_OBJECT);
        // A job an earlier attempt created is followed whatever the new
        // plan's size: it copies these keys meanwhile.
        let wanted = self.spec.batch_operations
            || self.progress.batch_job().is_some()
            || self.o.threshold.is_some_and(|n| job.len() as u64 > n);
        let (job, engine) = if wanted && !job.is_empty() && !self.stop.is_set() {
            (job, engine)
        } else {
            (Vec::new(), job.into_iter().chain(engine).collect())
        };
        let by_engine = self.settle_all(engine, entries);
        let by_job = async {
            if job.is_empty() {
                return Ok(());
            }
            self.copy_by_job(job, entries).await
        };
        let ((), by_job) = tokio::join!(by_engine, by_job);
        by_job
    }

    /// Settles `tasks` through the engine, a bounded number at once.
    async fn settle_all(&self, tasks: Vec<CopyTask>, entries: &EntrySender) {
        // As many as the destination's adaptive limit can use (as the
        // engine's own pipeline does), at least a few.
        let at_once = (self.engine.limit_for(self.dir()) * 2).max(ENGINE_TASKS);
        let settler = &self.settler;
        stream::iter(tasks)
            .for_each_concurrent(at_once, |t| {
                self.copying.announce(self.progress);
                settler.run_task(t, entries)
            })
            .await;
    }

    async fn copy_by_job(
        &self,
        tasks: Vec<CopyTask>,
        entries: &EntrySender,
    ) -> Result<(), WarmError> {
        self.copying.announce(self.progress);
        let created_here = self.progress.batch_job().is_none();
        let job_id = match self.job_to_follow(&tasks).await {
            Ok(id) => id,
            Err(e) => {
                self.release_all(&tasks).await;
                return Err(e);
            }
        };
        let keys: Vec<String> = tasks.iter().map(|t| t.dest_key.clone()).collect();
        let tracked = tokio::select! {
            end = self.track_job(&job_id) => end,
            () = self.claims.keep_all(&keys, RENEWALS_AT_ONCE) => unreachable!("the renewals never end"),
        };
        if self.stop.reason() == Some(crate::stop::StopReason::Interrupted) {
            // Shutting down, or the run lost: the job goes on, and the
            // attempt that resumes the warm follows it (its id is in the
            // record); nothing is recorded or released here.
            return Ok(());
        }
        let end = match tracked {
            Ok(end) => end,
            Err(e) => {
                self.abandon(&job_id, &tasks).await;
                return Err(e);
            }
        };
        // Failed tasks first (the report), then what landed (the listing).
        let results = async {
            self.still_holding_the_run()?;
            let reported = self
                .o
                .failed_tasks(&report_prefix(self.owner), &job_id, end.state)
                .await
                .map_err(|e| WarmError::Batch(e.to_string()))?;
            Ok((reported, self.list_landed(&tasks).await?))
        };
        let (reported, landed) = match results.await {
            Ok(r) => r,
            Err(e) => {
                self.release_all(&tasks).await;
                return Err(e);
            }
        };
        let seen = self.job_seen(&end, created_here);
        let (to_engine, to_record) = self
            .sort_out(tasks, &seen, &reported, &landed, &job_id)
            .await;
        let to_engine = self.record_all(to_record, to_engine, entries).await;
        if end.state == JobState::Failed {
            self.release_all(&to_engine).await;
            return Err(WarmError::Batch(format!(
                "S3 Batch Operations job {job_id} failed: {}",
                end.failure_reasons.join("; ")
            )));
        }
        // Not copied by the job: the engine copies them under the claims
        // still held (renewed first; released if the warm was stopped);
        // keys whose claim was lost are decided anew.
        self.settle_all(to_engine, entries).await;
        Ok(())
    }

    /// How the tasks of the job that ended as `end` are judged.
    fn job_seen(&self, end: &crate::batch::JobStatus, created_here: bool) -> JobSeen {
        JobSeen {
            // Only what this job wrote: an object older than the job (less
            // the clock skew margin, and a second: S3 stamps whole
            // seconds) was there before it, whatever its size.
            written_after: end.created.map_or(std::time::UNIX_EPOCH, |t| {
                self.judge.settled_stamp(t)
            }),
            // The job's own guard (an earlier attempt's, when following
            // its job); this attempt's if the job did not say; none known:
            // nothing is the job's, the engine copies it all.
            guard: end
                .unmodified_since
                .or_else(|| created_here.then_some(self.started)),
            stopped: self.stop.is_set(),
        }
    }

    /// The job that copies `tasks`: an earlier attempt's (its id in this
    /// warm's record), or one started now.
    async fn job_to_follow(&self, tasks: &[CopyTask]) -> Result<String, WarmError> {
        match self.progress.batch_job() {
            Some(id) => {
                tracing::info!(operation_id = self.owner, job_id = %id,
                    "following the S3 Batch Operations job an earlier attempt created");
                Ok(id)
            }
            None => self.start_job(tasks).await,
        }
    }

    /// Each task after the job ended, as `seen` judges it: failed (the
    /// job's report says why) or released, or handed on: to the engine to
    /// copy, or to be recorded with the ETag the job's copy landed with.
    async fn sort_out(
        &self,
        tasks: Vec<CopyTask>,
        seen: &JobSeen,
        reported: &HashMap<String, (String, String)>,
        landed: &HashMap<String, (u64, String, Option<std::time::SystemTime>)>,
        job_id: &str,
    ) -> (Vec<CopyTask>, Vec<(CopyTask, String)>) {
        let mut to_engine = Vec::new();
        let mut to_record = Vec::new();
        for task in tasks {
            let landed = landed.get(&task.dest_key);
            match seen.judge(&task, reported.get(&task.object.key), landed) {
                Judged::Engine => to_engine.push(task),
                Judged::Record(etag) => to_record.push((task, etag)),
                Judged::Release => self.claims.release(&task.dest_key).await,
                Judged::Fail(code, message) => {
                    self.claims.release(&task.dest_key).await;
                    let message = if code == "SourceChanged" {
                        message
                    } else {
                        format!("S3 Batch Operations job {job_id}: {message}")
                    };
                    self.progress.fail(&task.object.key, &code, message);
                }
            }
        }
        (to_engine, to_record)
    }

    /// Records the job's copies in `to_record` (in the writer's batches:
    /// many in flight at once); returns `to_engine` with the keys whose
    /// claim was lost meanwhile added, to be decided anew.
    async fn record_all(
        &self,
        to_record: Vec<(CopyTask, String)>,
        to_engine: Vec<CopyTask>,
        entries: &EntrySender,
    ) -> Vec<CopyTask> {
        let again = std::sync::Mutex::new(to_engine);
        stream::iter(to_record)
            .for_each_concurrent(RECORDS_AT_ONCE, |(task, etag)| {
                let again = &again;
                async move {
                    match self.record(&task, &etag, entries).await {
                        Landed::Recorded => {
                            Progress::add(&self.progress.copied, 1);
                            Progress::add(&self.progress.bytes_copied, task.object.size);
                        }
                        Landed::Engine => {
                            again
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(CopyTask {
                                    claimed_at: None,
                                    wait_for: None,
                                    ..task
                                });
                        }
                    }
                }
            })
            .await;
        again.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the manifest of `tasks` and creates the job; records its id
    /// in the operation's log at once.
    async fn start_job(&self, tasks: &[CopyTask]) -> Result<String, WarmError> {
        self.still_holding_the_run()?;
        let failed = |e: JobError| WarmError::Batch(e.to_string());
        let dir = self.dir();
        let name = token(self.owner);
        // Named after the operation, as the token is: a CreateJob retried
        // by a resumed attempt asks for the very same job.
        let manifest_key = format!("expresscache/manifests/{name}.csv");
        let rows: Vec<(String, String)> = tasks
            .iter()
            .map(|t| (self.spec.source.to_string(), t.object.key.clone()))
            .collect();
        let (manifest_arn, manifest_etag) =
            self.o.put_manifest(&manifest_key, &rows).await.map_err(failed)?;
        let spec = JobSpec {
            client_request_token: name.clone(),
            manifest_arn,
            manifest_etag,
            target_arn: format!(
                "arn:aws:s3express:{}:{}:bucket/{dir}",
                self.o.region, self.o.account_id
            ),
            target_key_prefix: self.spec.destination_prefix.to_string(),
            report_bucket_arn: format!("arn:aws:s3:::{}", self.o.working_bucket),
            report_prefix: report_prefix(self.owner),
            role_arn: self.o.role_arn.clone(),
            description: format!("expresscache warm {name}"),
            unmodified_since: self.started,
        };
        let id = self.create_job(&spec).await?;
        // In the log at once: a resumed attempt follows this job.
        self.progress.set_batch_job(Some(&id));
        tracing::info!(operation_id = self.owner, job_id = %id, keys = tasks.len(),
            "copying through an S3 Batch Operations job");
        Ok(id)
    }

    /// After a failure while the job may still run: cancels it (best
    /// effort) and gives back the claims.
    async fn abandon(&self, job_id: &str, tasks: &[CopyTask]) {
        if let Err(e) = self.o.jobs.cancel_job(job_id).await {
            tracing::warn!(operation_id = self.owner, job_id, error = %e,
                "could not cancel the job of a failed warm");
        }
        self.release_all(tasks).await;
    }

    /// Gives back this warm's claims on `tasks`' keys.
    async fn release_all(&self, tasks: &[CopyTask]) {
        stream::iter(tasks.iter().filter(|t| t.claimed_at.is_some()))
            .for_each_concurrent(RENEWALS_AT_ONCE, |t| self.claims.release(&t.dest_key))
            .await;
    }

    /// CreateJob, retried while S3 Control is throttled or unreachable.
    async fn create_job(&self, spec: &JobSpec) -> Result<String, WarmError> {
        let backoff = expresscache::Backoff::new(self.o.poll.0, self.o.poll.1);
        for attempt in 1.. {
            self.still_holding_the_run()?;
            match self.o.jobs.create_job(spec).await {
                Ok(id) => return Ok(id),
                Err(JobError::Unavailable(e)) if attempt < 5 => {
                    tracing::warn!(operation_id = self.owner, error = %e, "CreateJob failed; retrying");
                    tokio::time::sleep(backoff.ceiling(attempt)).await;
                }
                Err(e) => {
                    return Err(WarmError::Batch(format!(
                        "creating the S3 Batch Operations job: {e}"
                    )))
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// `Err` once the run's deadline passed unrenewed: another attempt may
    /// hold the warm by now (this process was paused, or lost the index),
    /// so it starts no job, as the engine sends no copy.
    fn still_holding_the_run(&self) -> Result<(), WarmError> {
        if self.stop.lapsed() {
            return Err(WarmError::Batch(
                "the run's deadline passed before the S3 Batch Operations job was created; \
                 another attempt carries the warm"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Follows the job to its end, showing its progress; cancels it when
    /// the warm is stopped.
    async fn track_job(
        &self,
        job_id: &str,
    ) -> Result<crate::batch::JobStatus, WarmError> {
        let mut pause = self.o.poll.0;
        let mut cancelled = false;
        loop {
            if self.stop.reason() == Some(crate::stop::StopReason::Interrupted) {
                // The job outlives this attempt: the next one follows it.
                return Ok(crate::batch::JobStatus {
                    state: JobState::Running,
                    raw: String::new(),
                    total: 0,
                    succeeded: 0,
                    failed: 0,
                    failure_reasons: Vec::new(),
                    created: None,
                    unmodified_since: None,
                });
            }
            if self.stop.reason() == Some(crate::stop::StopReason::Cancelled) && !cancelled {
                match self.o.jobs.cancel_job(job_id).await {
                    Ok(status) => {
                        tracing::info!(
                            operation_id = self.owner,
                            job_id,
                            status,
                            "cancelled the job"
                        );
                        cancelled = true;
                    }
                    Err(e) => {
                        tracing::warn!(operation_id = self.owner, job_id, error = %e, "could not cancel the job; retrying")
                    }
                }
            }
            match self.o.jobs.describe_job(job_id).await {
                Ok(s) => {
                    // Shown live; its count is activity (a long job is not
                    // stuck).
                    self.progress
                        .set_job_progress(crate::core::operation::JobProgress {
                            status: s.raw.clone(),
                            total: s.total,
                            succeeded: s.succeeded,
                            failed: s.failed,
                        });
                    // A job that answers is activity, even before its first
                    // task (a job takes minutes to start).
                    self.progress.touch();
                    if s.state != JobState::Running {
                        if s.state == JobState::Failed {
                            tracing::warn!(operation_id = self.owner, job_id, reasons = ?s.failure_reasons, "the job failed");
                        }
                        return Ok(s);
                    }
                }
                Err(JobError::Unavailable(e)) => {
                    tracing::warn!(operation_id = self.owner, job_id, error = %e, "DescribeJob failed; retrying");
                }
                Err(e) => return Err(WarmError::Batch(format!("following job {job_id}: {e}"))),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.stop.stopped(), if !cancelled => {}
            }
            pause = (pause * 2).min(self.o.poll.1);
        }
    }

    /// The destination's objects under the tasks' listing prefixes: key →
    /// (size, ETag).
    async fn list_landed(
        &self,
        tasks: &[CopyTask],
    ) -> Result<HashMap<String, (u64, String, Option<std::time::SystemTime>)>, WarmError> {
        let wanted: std::collections::HashSet<&str> =
            tasks.iter().map(|t| t.dest_key.as_str()).collect();
        let mut landed = HashMap::new();
        for prefix in self.spec.listing_prefixes() {
            let dest_prefix = self.spec.dest_key(prefix.as_str());
            let mut token = None;
            loop {
                let query = ListQuery {
                    prefix: &dest_prefix,
                    start_after: None,
                    delimited: false,
                };
                let page = self
                    .store
                    .list_page(self.dir(), &query, token.take())
                    .await
                    .map_err(|source| WarmError::List {
                        bucket: self.dir().to_owned(),
                        prefix: dest_prefix.clone(),
                        source,
                    })?;
                self.lister.count_request();
                for obj in page.objects {
                    if wanted.contains(obj.key.as_str()) {
                        landed.insert(obj.key, (obj.size, obj.etag, obj.last_modified));
                    }
                }
                match page.next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
        }
        Ok(landed)
    }

    /// Records a key the job copied, through the entry writer (only if
    /// this warm's claim still holds).
    async fn record(&self, task: &CopyTask, dest_etag: &str, entries: &EntrySender) -> Landed {
        let entry = Entry {
            directory_bucket: self.dir().to_owned(),
            key: task.dest_key.clone(),
            source_bucket: self.spec.source.to_string(),
            source_key: task.object.key.clone(),
            source_etag: task.object.etag.clone(),
            size: task.object.size,
            source_last_modified: task.object.last_modified.and_then(millis_of),
            dest_etag: dest_etag.to_owned(),
            cached_at: self.clock.now(),
        };
        let (reply, recorded) = oneshot::channel();
        if entries.send((entry, reply)).await.is_err() {
            return Landed::Engine;
        }
        match recorded.await {
            Ok(Completion::Recorded) => Landed::Recorded,
            _ => Landed::Engine,
        }
    }

    /// The directory bucket, as the index names it.
    fn dir(&self) -> &str {
        self.spec.directory_bucket.as_str()
    }
}

/// Where the job's report goes: under the operation's name, so an
/// attempt that follows an earlier attempt's job reads that job's report.
fn report_prefix(owner: &str) -> String {
    format!("expresscache/reports/{}", token(owner))
}

/// The job's client request token: the operation's, not the attempt's,
/// so a resumed operation finds its job again instead of making a second
/// (a job is idempotent on it). At most 64 characters, as S3 Control takes.
fn token(owner: &str) -> String {
    let operation = crate::index::lineage(owner).map_or(owner, |l| l.trim_end_matches('#'));
    if operation.len() <= 64 {
        return operation.to_owned();
    }
    crate::auth::hash_token(operation)
        .iter()
        .take(32)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::job_seen::tests::task;
    use super::super::run::WarmRun;
    use super::*;
    use crate::warm::Warmer;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// S3 Control that counts the jobs asked of it.
    #[derive(Default)]
    struct CountedJobs(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl crate::batch::control::JobControl for CountedJobs {
        async fn create_job(&self, _: &JobSpec) -> Result<String, JobError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok("job".into())
        }
        async fn describe_job(&self, _: &str) -> Result<crate::batch::JobStatus, JobError> {
            Err(JobError::Unavailable("not in this test".into()))
        }
        async fn cancel_job(&self, _: &str) -> Result<String, JobError> {
            Err(JobError::Unavailable("not in this test".into()))
        }
    }

    #[tokio::test]
    async fn a_run_past_its_deadline_starts_no_job() {
        use crate::core::clock::{Clock, SystemClock};
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let w = Warmer::new(
            Arc::new(crate::store::MemoryStore::default()),
            Arc::new(crate::index::SqliteIndex::open_in_memory().unwrap()),
            Arc::clone(&clock),
            super::super::WarmSettings::default(),
        );
        let jobs = Arc::new(CountedJobs::default());
        // Nothing listens there: a manifest written or a job created would
        // fail otherwise, not with the deadline's reason.
        let nowhere = crate::testing::local_sdk_config("http://127.0.0.1:9");
        let o = Offload {
            jobs: jobs.clone(),
            s3: aws_sdk_s3::Client::new(&nowhere),
            working_bucket: "work".into(),
            role_arn: "arn:aws:iam::123456789012:role/batch".into(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            threshold: None,
            poll: (Duration::from_millis(1), Duration::from_millis(2)),
        };
        let spec = super::super::tests::spec(false);
        let (progress, _rx) = Progress::new("op".into(), Arc::clone(&clock));
        let stop = crate::stop::StopSignal::default();
        // The keeper last granted the run until a moment ago: this process
        // woke from a pause past it.
        stop.hold_until(clock.now() - 1, &clock);
        let run = WarmRun::new(&w, &spec, &progress, "op#00000001", &stop);
        let run = run.offloader(&o);
        let err = run.start_job(&[task(900, 16)]).await.unwrap_err();
        assert!(err.to_string().contains("deadline passed"), "{err}");
        assert_eq!(jobs.0.load(Ordering::Relaxed), 0, "no job created");
        assert_eq!(progress.batch_job(), None, "no job recorded");
        // Its manifest written meanwhile, the deadline passes before
        // CreateJob (or between its tries): still no job.
        let spec = JobSpec {
            client_request_token: "t".into(),
            manifest_arn: "arn:aws:s3:::work/m.csv".into(),
            manifest_etag: "e".into(),
            target_arn: "arn:aws:s3express:us-east-1:123456789012:bucket/d".into(),
            target_key_prefix: String::new(),
            report_bucket_arn: "arn:aws:s3:::work".into(),
            report_prefix: "r".into(),
            role_arn: o.role_arn.clone(),
            description: "d".into(),
            unmodified_since: SystemTime::now(),
        };
        let err = run.create_job(&spec).await.unwrap_err();
        assert!(err.to_string().contains("deadline passed"), "{err}");
        assert_eq!(jobs.0.load(Ordering::Relaxed), 0, "no job created");
    }
}
