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
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::dry_run::MAX_SINGLE_COPY;
use super::planning::CopyTask;
use super::run::WarmRun;
use super::writer::EntrySender;
use super::WarmError;
use crate::batch::control::{JobError, JobSpec, JobState};
use crate::batch::Offload;
use crate::index::{millis_of, CacheIndex, Completion, Entry};
use crate::progress::Progress;
use crate::store::{ListQuery, ObjectStore};

/// Keys the engine settles at once beside a job.
const ENGINE_TASKS: usize = 64;

/// Claims renewed at once while a job runs.
const RENEWALS_AT_ONCE: usize = 32;

/// How a job-copied key ended.
enum Landed {
    Recorded,
    /// Settle it through the engine (claim lost, or not copied).
    Engine,
}

impl<S: ObjectStore, I: CacheIndex> WarmRun<'_, S, I> {
    /// The offload this warm may use: configured, and asked for or with a
    /// threshold to check.
    pub(super) fn offload(&self) -> Option<&Offload> {
        self.w
            .batch
            .as_deref()
            .filter(|o| self.spec.batch_operations || o.threshold.is_some())
    }

    /// Copies every task from `tasks`, through a job when the plan calls
    /// for one.
    pub(super) async fn copy_all_offloaded(
        &self,
        o: &Offload,
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
            .partition(|t| t.claimed_at.is_some() && t.object.size <= MAX_SINGLE_COPY);
        let wanted =
            self.spec.batch_operations || o.threshold.is_some_and(|n| job.len() as u64 > n);
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
            self.copy_by_job(o, job, entries).await
        };
        let ((), by_job) = tokio::join!(by_engine, by_job);
        by_job
    }

    /// Settles `tasks` through the engine, a bounded number at once.
    async fn settle_all(&self, tasks: Vec<CopyTask>, entries: &EntrySender) {
        stream::iter(tasks)
            .for_each_concurrent(ENGINE_TASKS, |t| self.run_task(t, entries))
            .await;
    }

    async fn copy_by_job(
        &self,
        o: &Offload,
        tasks: Vec<CopyTask>,
        entries: &EntrySender,
    ) -> Result<(), WarmError> {
        self.announce_copying();
        let failed = |e: JobError| WarmError::Batch(e.to_string());
        let dir = self.dir();
        // The report under the operation's name: an attempt that follows
        // an earlier attempt's job reads that job's report.
        let report_prefix = format!("expresscache/reports/{}", token(self.owner));
        let job_id = match self.progress.batch_job() {
            Some(id) => {
                tracing::info!(operation_id = self.owner, job_id = %id,
                    "following the S3 Batch Operations job an earlier attempt created");
                id
            }
            None => {
                let manifest_key = format!(
                    "expresscache/manifests/{}.csv",
                    self.owner.replace(['/', ':', '#'], "-")
                );
                let rows: Vec<(String, String)> = tasks
                    .iter()
                    .map(|t| (self.spec.source.to_string(), t.object.key.clone()))
                    .collect();
                let (manifest_arn, manifest_etag) =
                    o.put_manifest(&manifest_key, &rows).await.map_err(failed)?;
                let spec = JobSpec {
                    client_request_token: token(self.owner),
                    manifest_arn,
                    manifest_etag,
                    target_arn: format!(
                        "arn:aws:s3express:{}:{}:bucket/{dir}",
                        o.region, o.account_id
                    ),
                    target_key_prefix: self.spec.destination_prefix.to_string(),
                    report_bucket_arn: format!("arn:aws:s3:::{}", o.working_bucket),
                    report_prefix: report_prefix.clone(),
                    role_arn: o.role_arn.clone(),
                    description: format!("expresscache warm {}", self.owner),
                };
                let id = self.create_job(o, &spec).await?;
                // In the log at once: a resumed attempt follows this job.
                self.progress.set_batch_job(Some(&id));
                tracing::info!(operation_id = self.owner, job_id = %id, keys = tasks.len(),
                    "copying through an S3 Batch Operations job");
                id
            }
        };
        let keys: Vec<String> = tasks.iter().map(|t| t.dest_key.clone()).collect();
        let end = tokio::select! {
            end = self.track_job(o, &job_id) => end?,
            () = self.keep_all_claimed(&keys) => unreachable!("the renewals never end"),
        };
        // Failed tasks first (the report), then what landed (the listing).
        let reported = if end.state == JobState::Failed {
            HashMap::new()
        } else {
            o.failed_tasks(&report_prefix, &job_id)
                .await
                .map_err(failed)?
        };
        let landed = self.list_landed(&tasks).await?;
        let mut to_engine = Vec::new();
        for task in tasks {
            if let Some((code, message)) = reported.get(&task.object.key) {
                self.release(&task.dest_key).await;
                self.progress.fail(
                    &task.object.key,
                    code,
                    format!("S3 Batch Operations job {job_id}: {message}"),
                );
                continue;
            }
            match landed.get(&task.dest_key) {
                Some((size, _)) if *size != task.object.size => {
                    self.release(&task.dest_key).await;
                    self.progress.fail(
                        &task.object.key,
                        "SourceChanged",
                        format!(
                            "the job copied {size} bytes where the plan listed {}: the source changed \
                             after it was listed; warm again",
                            task.object.size
                        ),
                    );
                }
                Some((_, etag)) => match self.record(&task, etag, entries).await {
                    Landed::Recorded => {
                        Progress::add(&self.progress.copied, 1);
                        Progress::add(&self.progress.bytes_copied, task.object.size);
                    }
                    Landed::Engine => to_engine.push(CopyTask {
                        claimed_at: None,
                        wait_for: None,
                        ..task
                    }),
                },
                None if self.stop.is_set() => self.release(&task.dest_key).await,
                None => to_engine.push(task),
            }
        }
        if end.state == JobState::Failed {
            return Err(WarmError::Batch(format!(
                "S3 Batch Operations job {job_id} failed: {}",
                end.failure_reasons.join("; ")
            )));
        }
        // Not copied by the job (or its claim lost): the engine decides.
        let again: Vec<CopyTask> = to_engine
            .into_iter()
            .map(|t| CopyTask {
                claimed_at: None,
                wait_for: None,
                ..t
            })
            .collect();
        self.settle_all(again, entries).await;
        Ok(())
    }

    /// CreateJob, retried while S3 Control is throttled or unreachable.
    async fn create_job(&self, o: &Offload, spec: &JobSpec) -> Result<String, WarmError> {
        let mut pause = o.poll.0;
        for attempt in 1.. {
            match o.jobs.create_job(spec).await {
                Ok(id) => return Ok(id),
                Err(JobError::Unavailable(e)) if attempt < 5 => {
                    tracing::warn!(operation_id = self.owner, error = %e, "CreateJob failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(o.poll.1);
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

    /// Follows the job to its end, showing its progress; cancels it when
    /// the warm is stopped.
    async fn track_job(
        &self,
        o: &Offload,
        job_id: &str,
    ) -> Result<crate::batch::JobStatus, WarmError> {
        let mut pause = o.poll.0;
        let mut cancelled = false;
        let mut shown = 0u64;
        loop {
            if self.stop.is_set() && !cancelled {
                match o.jobs.cancel_job(job_id).await {
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
            match o.jobs.describe_job(job_id).await {
                Ok(s) => {
                    // Shown live; its count is activity (a long job is not
                    // stuck).
                    self.progress
                        .set_job_progress(crate::operation::JobProgress {
                            status: s.raw.clone(),
                            total: s.total,
                            succeeded: s.succeeded,
                            failed: s.failed,
                        });
                    let done = s.succeeded + s.failed;
                    if done > shown {
                        shown = done;
                        self.progress.touch();
                    }
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
            pause = (pause * 2).min(o.poll.1);
        }
    }

    /// Renews this warm's claims on `keys` every quarter of the claim TTL,
    /// for as long as it is polled.
    async fn keep_all_claimed(&self, keys: &[String]) {
        let every = (self.w.settings.claim_ttl / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            let deadline = self.claim_terms().deadline;
            stream::iter(keys)
                .for_each_concurrent(RENEWALS_AT_ONCE, |k| async move {
                    if let Err(e) = self.w.index.renew_claim(self.dir(), k, self.owner, deadline).await {
                        tracing::warn!(key = %k, error = %e, "could not extend a claim during the job");
                    }
                })
                .await;
        }
    }

    /// The destination's objects under the tasks' listing prefixes: key →
    /// (size, ETag).
    async fn list_landed(
        &self,
        tasks: &[CopyTask],
    ) -> Result<HashMap<String, (u64, String)>, WarmError> {
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
                    .w
                    .store
                    .list_page(self.dir(), &query, token.take())
                    .await
                    .map_err(|source| WarmError::List {
                        bucket: self.dir().to_owned(),
                        prefix: dest_prefix.clone(),
                        source,
                    })?;
                self.list_requests.fetch_add(1, Ordering::Relaxed);
                for o in page.objects {
                    if wanted.contains(o.key.as_str()) {
                        landed.insert(o.key, (o.size, o.etag));
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
            cached_at: self.w.clock.now(),
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
