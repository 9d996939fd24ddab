//! Job control through S3 Control: `CreateJob` (an `S3PutObjectCopy` of a
//! CSV manifest into a directory bucket, with a report of failed tasks),
//! `DescribeJob` and `UpdateJobStatus`. Behind [`JobControl`], so the warm
//! that drives a job is tested against a fake endpoint speaking the same
//! wire format (moto does not implement S3 Control jobs).

use aws_sdk_s3control::types::{
    JobManifest, JobManifestFieldName, JobManifestFormat, JobManifestLocation, JobManifestSpec,
    JobOperation, JobReport, JobReportFormat, JobReportScope, RequestedJobStatus,
    S3CopyObjectOperation,
};

/// Why a job call failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Throttled or unreachable: waiting may help.
    #[error("S3 Control unavailable: {0}")]
    Unavailable(String),
    /// Refused (AccessDenied, an invalid request): waiting will not help.
    #[error("S3 Control refused the request: {code}: {message}")]
    Refused { code: String, message: String },
}

/// What a job copies, and where it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Idempotency: the same token never creates a second job (a resumed
    /// operation finds its job again).
    pub client_request_token: String,
    /// `arn:aws:s3:::bucket/key` of the CSV manifest, and its ETag.
    pub manifest_arn: String,
    pub manifest_etag: String,
    /// `arn:aws:s3express:REGION:ACCOUNT:bucket/NAME`.
    pub target_arn: String,
    /// Prepended to each key in the target (the warm's destination prefix).
    pub target_key_prefix: String,
    /// `arn:aws:s3:::bucket` of the working bucket, and the report prefix.
    pub report_bucket_arn: String,
    pub report_prefix: String,
    pub role_arn: String,
    pub description: String,
    /// Each task copies only if its source was not modified after this
    /// (when the warm began planning): a key that changed after it was
    /// listed fails its task (PreconditionFailed) instead of landing as
    /// content the plan never saw.
    pub unmodified_since: std::time::SystemTime,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// New, preparing, ready, active, pausing, paused, completing,
    /// cancelling, failing: not done.
    Running,
    Complete,
    Cancelled,
    Failed,
}

/// A job's state and progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub state: JobState,
    /// The status as S3 Control names it.
    pub raw: String,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Why a Failed job failed.
    pub failure_reasons: Vec<String>,
    /// When S3 Control created it: an object older than this in the
    /// destination was not written by it.
    pub created: Option<std::time::SystemTime>,
    /// Its guard: it copies only sources not modified after this. Read
    /// from the job itself, so an attempt that follows an earlier
    /// attempt's job judges what landed by that job's guard, not its own.
    pub unmodified_since: Option<std::time::SystemTime>,
}

/// The S3 Control calls a warm's offload makes.
#[async_trait::async_trait]
pub trait JobControl: Send + Sync + 'static {
    /// Creates the job (or finds the one created with the same token);
    /// returns its id.
    async fn create_job(&self, spec: &JobSpec) -> Result<String, JobError>;
    async fn describe_job(&self, job_id: &str) -> Result<JobStatus, JobError>;
    /// Asks for the job to be cancelled; returns its status then.
    async fn cancel_job(&self, job_id: &str) -> Result<String, JobError>;
}

/// [`JobControl`] through aws-sdk-s3control, for one account.
#[derive(Debug, Clone)]
pub struct S3ControlJobs {
    client: aws_sdk_s3control::Client,
    account_id: String,
}

/// An endpoint used as given: S3 Control's rules put the account id in
/// front of the host, which a local or test endpoint cannot answer.
#[derive(Debug)]
struct FixedEndpoint(String);

impl aws_sdk_s3control::config::endpoint::ResolveEndpoint for FixedEndpoint {
    fn resolve_endpoint<'a>(
        &'a self,
        _params: &'a aws_sdk_s3control::config::endpoint::Params,
    ) -> aws_sdk_s3control::config::endpoint::EndpointFuture<'a> {
        aws_sdk_s3control::config::endpoint::EndpointFuture::ready(Ok(
            aws_sdk_s3control::config::endpoint::Endpoint::builder()
                .url(self.0.clone())
                .build(),
        ))
    }
}

/// How long one S3 Control request may take: a request that never answers
/// fails (and is retried), it does not hang the warm.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl S3ControlJobs {
    /// Jobs of `account_id`, through the regional S3 Control endpoint of
    /// `sdk` (or `endpoint`, used as given, for a local or test endpoint);
    /// each request attempt gives up after `request_timeout`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        account_id: &str,
        endpoint: Option<&str>,
        request_timeout: std::time::Duration,
    ) -> Self {
        let mut config = aws_sdk_s3control::config::Builder::from(sdk).timeout_config(
            aws_sdk_s3control::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(request_timeout)
                .operation_timeout(request_timeout * 4)
                .build(),
        );
        if let Some(url) = endpoint {
            config = config.endpoint_resolver(FixedEndpoint(url.trim_end_matches('/').to_owned()));
        }
        Self {
            client: aws_sdk_s3control::Client::from_conf(config.build()),
            account_id: account_id.to_owned(),
        }
    }
}

fn job_error<E>(
    e: aws_sdk_s3control::error::SdkError<E, aws_sdk_s3control::config::http::HttpResponse>,
) -> JobError
where
    E: aws_sdk_s3control::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3control::error::SdkError;
    match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("Unknown").to_owned();
            let message = err.message().unwrap_or_default().to_owned();
            // By status too, as S3 Control's error codes vary: a server
            // error or a throttle may pass; a refusal will not.
            let status = se.raw().status().as_u16();
            let throttled = matches!(
                code.as_str(),
                "TooManyRequestsException" | "Throttling" | "ThrottlingException" | "SlowDown"
            );
            if status >= 500 || status == 429 || throttled {
                JobError::Unavailable(format!("{code}: {message}"))
            } else {
                JobError::Refused { code, message }
            }
        }
        // A request that could not be built will not build next time.
        SdkError::ConstructionFailure(_) => JobError::Refused {
            code: "InvalidRequest".into(),
            message: aws_sdk_s3control::error::DisplayErrorContext(&e).to_string(),
        },
        _ => JobError::Unavailable(aws_sdk_s3control::error::DisplayErrorContext(&e).to_string()),
    }
}

fn build_err(e: impl std::fmt::Display) -> JobError {
    JobError::Refused {
        code: "InvalidJob".into(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl JobControl for S3ControlJobs {
    async fn create_job(&self, spec: &JobSpec) -> Result<String, JobError> {
        let copy = S3CopyObjectOperation::builder()
            .target_resource(&spec.target_arn)
            .set_target_key_prefix(Some(spec.target_key_prefix.clone()).filter(|p| !p.is_empty()))
            // Directory buckets refuse object tags: an empty tag set, not
            // the source's.
            .set_new_object_tagging(Some(Vec::new()))
            .un_modified_since_constraint(aws_sdk_s3control::primitives::DateTime::from(
                spec.unmodified_since,
            ))
            .build();
        let manifest = JobManifest::builder()
            .spec(
                JobManifestSpec::builder()
                    .format(JobManifestFormat::S3BatchOperationsCsv20180820)
                    .fields(JobManifestFieldName::Bucket)
                    .fields(JobManifestFieldName::Key)
                    .build()
                    .map_err(build_err)?,
            )
            .location(
                JobManifestLocation::builder()
                    .object_arn(&spec.manifest_arn)
                    .e_tag(&spec.manifest_etag)
                    .build()
                    .map_err(build_err)?,
            )
            .build();
        let report = JobReport::builder()
            .bucket(&spec.report_bucket_arn)
            .prefix(&spec.report_prefix)
            .format(JobReportFormat::ReportCsv20180820)
            .enabled(true)
            .report_scope(JobReportScope::FailedTasksOnly)
            .build();
        let out = self
            .client
            .create_job()
            .account_id(&self.account_id)
            .confirmation_required(false)
            .operation(JobOperation::builder().s3_put_object_copy(copy).build())
            .manifest(manifest)
            .report(report)
            .client_request_token(&spec.client_request_token)
            .description(&spec.description)
            .priority(10)
            .role_arn(&spec.role_arn)
            .send()
            .await
            .map_err(job_error)?;
        out.job_id()
            .map(str::to_owned)
            .ok_or_else(|| JobError::Unavailable("CreateJob answered without a job id".into()))
    }

    async fn describe_job(&self, job_id: &str) -> Result<JobStatus, JobError> {
        let out = self
            .client
            .describe_job()
            .account_id(&self.account_id)
            .job_id(job_id)
            .send()
            .await
            .map_err(job_error)?;
        let job = out
            .job()
            .ok_or_else(|| JobError::Unavailable("DescribeJob answered without a job".into()))?;
        let raw = job
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        let state = match raw.as_str() {
            "Complete" => JobState::Complete,
            "Cancelled" => JobState::Cancelled,
            "Failed" => JobState::Failed,
            _ => JobState::Running,
        };
        let progress = job.progress_summary();
        let count = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        Ok(JobStatus {
            state,
            raw,
            total: count(progress.and_then(|p| p.total_number_of_tasks())),
            succeeded: count(progress.and_then(|p| p.number_of_tasks_succeeded())),
            failed: count(progress.and_then(|p| p.number_of_tasks_failed())),
            created: job
                .creation_time()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            unmodified_since: job
                .operation()
                .and_then(|o| o.s3_put_object_copy())
                .and_then(|c| c.un_modified_since_constraint())
                .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            failure_reasons: job
                .failure_reasons()
                .iter()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.failure_code().unwrap_or_default(),
                        r.failure_reason().unwrap_or_default()
                    )
                })
                .collect(),
        })
    }

    async fn cancel_job(&self, job_id: &str) -> Result<String, JobError> {
        let out = self
            .client
            .update_job_status()
            .account_id(&self.account_id)
            .job_id(job_id)
            .requested_job_status(RequestedJobStatus::Cancelled)
            .status_update_reason("the warm was cancelled")
            .send()
            .await
            .map_err(job_error)?;
        Ok(out
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default())
    }
}
