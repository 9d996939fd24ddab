//! The one place where domain errors become gRPC statuses.

use expresscache::InvalidRequest;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::evict::EvictError;
use crate::fleet::SubmitError;
use crate::index::IndexError;
use crate::store::{ErrorClass, StoreError};

/// Everything an RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// A bucket named in field `field` failed its existence/access check.
    #[error("{field}: {source}")]
    Bucket {
        field: &'static str,
        bucket: String,
        source: StoreError,
    },
    #[error("operation {0:?} not found")]
    OperationNotFound(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Evict(#[from] EvictError),
    /// The policy refuses this principal this request.
    #[error("{1}")]
    Denied(crate::auth::Principal, crate::policy::Denial),
    #[error("this server runs {limit} dry runs at once already; retry shortly")]
    DryRunsBusy { limit: usize },
    #[error("batch_operations: this server is not configured for S3 Batch Operations (--batch-role-arn, --batch-working-bucket)")]
    BatchNotConfigured,
}

/// An index failure as a status: one that waiting may fix (throttled,
/// unreachable) is UNAVAILABLE with a retry hint, a request too large for
/// the index's items FAILED_PRECONDITION, the rest INTERNAL.
fn index_status(e: &IndexError) -> Status {
    if let IndexError::Unavailable(_) = e {
        tracing::warn!(error = %e, "index unavailable");
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(std::time::Duration::from_secs(1)));
        return Status::with_error_details(
            Code::Unavailable,
            format!("cache index unavailable, retry: {e}"),
            details,
        );
    }
    if let IndexError::TooLarge(_) = e {
        // The request is too large for this index's items (DynamoDB holds
        // 400 KB an item): the caller can split it; nothing is broken.
        tracing::warn!(error = %e, "request too large for the index");
        return Status::failed_precondition(format!("too large for the cache index: {e}"));
    }
    tracing::error!(error = %e, "index failure");
    Status::internal(format!("cache index failure: {e}"))
}

/// The gRPC code for a store failure, from its one classification: what
/// waiting may fix is UNAVAILABLE (a retryable 500 included).
fn store_code(e: &StoreError) -> Code {
    match e.class() {
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::Denied => Code::PermissionDenied,
        ErrorClass::Throttle | ErrorClass::Unreachable | ErrorClass::ServerError => {
            Code::Unavailable
        }
        ErrorClass::Precondition | ErrorClass::Configuration => Code::FailedPrecondition,
        ErrorClass::Stopped => Code::Cancelled,
        ErrorClass::Invalid | ErrorClass::Unexpected => Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let msg = e.to_string();
        match e {
            ApiError::Invalid(inv) => inv.to_status(),
            ApiError::Bucket {
                field,
                bucket,
                source,
            } => Status::with_error_details(
                store_code(&source),
                msg,
                ErrorDetails::with_resource_info("s3_bucket", bucket, "", format!("{field}: {source}")),
            ),
            ApiError::OperationNotFound(id) => Status::with_error_details(
                Code::NotFound,
                msg,
                ErrorDetails::with_resource_info("operation", id, "", "no such operation"),
            ),
            ApiError::Submit(SubmitError::RequestIdConflict {
                request_id,
                operation_id,
            }) => Status::with_error_details(
                Code::AlreadyExists,
                msg,
                ErrorDetails::with_resource_info(
                    "operation",
                    operation_id,
                    "",
                    format!("request_id {request_id:?} belongs to this operation, which was submitted with different fields; use a new request_id"),
                ),
            ),
            ApiError::Submit(SubmitError::Draining) => {
                let mut details = ErrorDetails::new();
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                Status::with_error_details(Code::Unavailable, msg, details)
            }
            ApiError::Denied(who, denial) => {
                let mut details = ErrorDetails::new();
                let mut metadata = std::collections::HashMap::from([("principal".to_owned(), who.0)]);
                if !denial.field.is_empty() {
                    metadata.insert("field".to_owned(), denial.field.to_owned());
                }
                details.set_error_info(denial.reason, "expresscache", metadata);
                Status::with_error_details(Code::PermissionDenied, msg, details)
            }
            ApiError::Submit(SubmitError::Busy { .. }) => exhausted(msg, "SERVER_BUSY", None),
            ApiError::BatchNotConfigured => {
                let mut details = ErrorDetails::new();
                details.set_error_info("BATCH_NOT_CONFIGURED", "expresscache", []);
                details.add_bad_request_violation("batch_operations", msg.clone());
                Status::with_error_details(Code::FailedPrecondition, msg, details)
            }
            ApiError::DryRunsBusy { limit } => {
                exhausted(msg, "DRY_RUN_LIMIT", Some(("limit", limit.to_string())))
            }
            ApiError::Submit(SubmitError::PrincipalBusy { principal, .. }) => {
                exhausted(msg, "PRINCIPAL_LIMIT", Some(("principal", principal)))
            }
            ApiError::Submit(SubmitError::Index(e))
            | ApiError::Index(e)
            | ApiError::Evict(EvictError::Index(e)) => index_status(&e),
            ApiError::Evict(EvictError::Store { source, .. }) => {
                Status::new(store_code(&source), msg)
            }
            // Waiting does not fix a clock: the operator does.
            ApiError::Evict(EvictError::ClockSkew(_)) => Status::with_error_details(
                Code::FailedPrecondition,
                msg,
                ErrorDetails::with_error_info(
                    "CLOCK_SKEW",
                    "expresscache",
                    std::collections::HashMap::<String, String>::new(),
                ),
            ),
        }
    }
}

/// RESOURCE_EXHAUSTED for a limit of this server's: why (`reason`, with
/// one `detail`), and to try again in 5 s.
fn exhausted(msg: String, reason: &str, detail: Option<(&str, String)>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(std::time::Duration::from_secs(5)));
    let metadata: std::collections::HashMap<String, String> =
        detail.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    details.set_error_info(reason, "expresscache", metadata);
    Status::with_error_details(Code::ResourceExhausted, msg, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retryable_server_error_is_unavailable_not_internal() {
        let e = StoreError::Service {
            code: "InternalError".into(),
            status: 500,
            message: "try again".into(),
        };
        assert_eq!(store_code(&e), Code::Unavailable);
        assert_eq!(
            store_code(&StoreError::Invalid("bug".into())),
            Code::Internal
        );
        assert_eq!(
            store_code(&StoreError::NoSuchBucket("b".into())),
            Code::NotFound
        );
    }

    #[test]
    fn an_index_error_is_unavailable_if_waiting_helps_failed_precondition_if_too_large() {
        let code = |e: IndexError| index_status(&e).code();
        assert_eq!(
            code(IndexError::Unavailable("throttled".into())),
            Code::Unavailable
        );
        assert_eq!(
            code(IndexError::TooLarge(
                "warm fewer or shorter prefixes".into()
            )),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(IndexError::Storage("access denied".into())),
            Code::Internal
        );
    }
}
