//! `ObjectStore`: the narrow slice of S3 the service uses.
//!
//! The warm, evict and status logic calls S3 through this trait (as
//! `Arc<dyn ObjectStore>`); [`S3Store`]
//! talks to S3 (or any S3-compatible endpoint) through aws-sdk-s3. For
//! tests only (the `testing` feature), `MemoryStore` is an in-memory double
//! with request counters and `FaultStore` wraps either and injects
//! failures.

mod checks;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
mod faults;
#[cfg(any(test, feature = "testing"))]
mod memory;
mod s3;

use std::time::SystemTime;

pub use checks::BucketChecks;
#[cfg(any(test, feature = "testing"))]
pub use faults::{FaultStore, Op};
#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryStore;
pub(crate) use s3::timed_out;
pub use s3::S3Store;

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    /// The ETag as S3 returns it, quotes included.
    pub etag: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

/// What one listing asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery<'a> {
    /// Only keys starting with this.
    pub prefix: &'a str,
    /// Only keys after this one (S3's `StartAfter`).
    pub start_after: Option<&'a str>,
    /// Roll the keys that have a `/` after the prefix into common prefixes
    /// (S3's `Delimiter=/`): the direct children only.
    pub delimited: bool,
}

impl<'a> ListQuery<'a> {
    /// Every key under `prefix`.
    pub fn prefix(prefix: &'a str) -> Self {
        Self {
            prefix,
            start_after: None,
            delimited: false,
        }
    }

    /// Only keys after `key`.
    #[must_use]
    pub fn start_after(mut self, key: &'a str) -> Self {
        self.start_after = Some(key);
        self
    }

    /// The direct children of the prefix: objects, and common prefixes
    /// ending in `/`.
    #[must_use]
    pub fn delimited(mut self) -> Self {
        self.delimited = true;
        self
    }
}

/// One page of a key-ordered listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// In a delimited listing, the common prefixes of this page (each
    /// ending in `/`), in ascending order; they count toward the page size
    /// as S3 counts them.
    pub common_prefixes: Vec<String>,
    /// Token for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A server-side copy of one object version.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    pub source_bucket: &'a str,
    pub source_key: &'a str,
    /// The copy only happens if the source still has this ETag, so what
    /// lands is the version the plan saw.
    pub source_etag: &'a str,
    pub dest_bucket: &'a str,
    pub dest_key: &'a str,
}

/// One part of a multipart copy: bytes `first_byte..=last_byte` of the
/// source, conditional on its ETag like the whole-object copy.
#[derive(Debug, Clone)]
pub struct PartCopy<'a> {
    pub copy: CopyRequest<'a>,
    pub upload_id: &'a str,
    /// 1-based.
    pub part_number: i32,
    pub first_byte: u64,
    pub last_byte: u64,
}

/// What a successful copy produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// ETag of the new destination object.
    pub etag: String,
}

/// One object to delete. With `etag` set the delete is fenced: it only
/// happens if the object still has that ETag, so a newer copy written
/// meanwhile is never removed (S3 Express One Zone honours this; endpoints
/// that ignore it delete unconditionally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTarget {
    pub key: String,
    pub etag: Option<String>,
}

/// A key that a batch delete could not remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    pub key: String,
    pub code: String,
    pub message: String,
}

/// Why a store call failed. "The service said no" variants are split from
/// "we could not reach it" ([`StoreError::Transport`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("object {0:?} does not exist")]
    NoSuchKey(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// An `If-Match` condition failed: the source changed since it was listed.
    #[error("precondition failed: the object changed since it was listed")]
    PreconditionFailed,
    /// The server asked us to slow down (503 SlowDown, throttling).
    #[error("throttled: {0}")]
    Throttled(String),
    /// Any other error response.
    #[error("{code} (HTTP {status}): {message}")]
    Service {
        code: String,
        status: u16,
        message: String,
    },
    /// No response: connection refused or reset, timeout, DNS.
    #[error("could not reach the object store: {0}")]
    Transport(String),
    /// The caller stopped (cancel, shutdown) before the request was sent.
    #[error("stopped before the request was sent")]
    Stopped,
    /// We could not even build the request (a bug or an impossible input).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request could not be made with this server's AWS configuration
    /// (no credentials, a credentials provider that fails, no region):
    /// waiting does not fix it, the operator does.
    #[error("AWS configuration: {0}")]
    Config(String),
    /// The service answered something that breaks the protocol or what the
    /// copy promised (a truncated page without a token, a multipart result
    /// of the wrong size, no upload id).
    #[error("{code}: {message}")]
    Unexpected { code: &'static str, message: String },
}

/// What kind of failure a [`StoreError`] is: the one classification the
/// copy engine (retry, back-off), the API (status codes) and reports share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The service asked us to slow down (503 SlowDown, 429, throttling).
    Throttle,
    /// No answer: refused or reset connection, timeout.
    Unreachable,
    /// The service failed on its side (5xx other than 503).
    ServerError,
    /// The bucket or key does not exist.
    NotFound,
    /// Access denied.
    Denied,
    /// A condition failed: the source changed since it was listed.
    Precondition,
    /// The request was wrong (4xx, or we could not build it).
    Invalid,
    /// The answer broke the protocol or the copy's promise.
    Unexpected,
    /// The caller stopped.
    Stopped,
    /// This server's AWS configuration cannot make the request.
    Configuration,
}

impl ErrorClass {
    /// Whether trying the same call again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttle | ErrorClass::Unreachable | ErrorClass::ServerError
        )
    }

    /// Whether the adaptive concurrency should back off: the service is
    /// overloaded or the path to it congested (timeouts, resets).
    pub fn backs_off(self) -> bool {
        matches!(self, ErrorClass::Throttle | ErrorClass::Unreachable)
    }
}

impl StoreError {
    /// The kind of failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::NoSuchBucket(_) | StoreError::NoSuchKey(_) => ErrorClass::NotFound,
            StoreError::AccessDenied(_) => ErrorClass::Denied,
            StoreError::PreconditionFailed => ErrorClass::Precondition,
            StoreError::Throttled(_) => ErrorClass::Throttle,
            StoreError::Service { status, .. } if *status == 429 || *status == 503 => {
                ErrorClass::Throttle
            }
            StoreError::Service { status, .. } if *status >= 500 => ErrorClass::ServerError,
            StoreError::Service { .. } | StoreError::Invalid(_) => ErrorClass::Invalid,
            StoreError::Transport(_) => ErrorClass::Unreachable,
            StoreError::Config(_) => ErrorClass::Configuration,
            StoreError::Unexpected { .. } => ErrorClass::Unexpected,
            StoreError::Stopped => ErrorClass::Stopped,
        }
    }

    /// Whether trying the same call again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.class().is_retryable()
    }

    /// A short machine-readable code for reports.
    pub fn code(&self) -> &str {
        match self {
            StoreError::NoSuchBucket(_) => "NoSuchBucket",
            StoreError::NoSuchKey(_) => "NoSuchKey",
            StoreError::AccessDenied(_) => "AccessDenied",
            StoreError::PreconditionFailed => "SourceChanged",
            StoreError::Throttled(_) => "SlowDown",
            StoreError::Service { code, .. } => code,
            StoreError::Transport(_) => "Transport",
            StoreError::Stopped => "Stopped",
            StoreError::Invalid(_) => "InvalidRequest",
            StoreError::Config(_) => "AwsConfiguration",
            StoreError::Unexpected { code, .. } => code,
        }
    }
}

/// The S3 operations expresscache needs. Implementations must list keys in
/// ascending byte order, as S3 general-purpose buckets do.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` if `bucket` exists and is reachable with our credentials.
    async fn check_bucket(&self, bucket: &str) -> Result<(), StoreError>;

    /// One page of the listing `query` asks for, continuing from
    /// `continuation`.
    async fn list_page(
        &self,
        bucket: &str,
        query: &ListQuery<'_>,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError>;

    /// Server-side copy, conditional on the source ETag.
    async fn copy_object(&self, req: &CopyRequest<'_>) -> Result<Copied, StoreError>;

    /// Starts a multipart upload of `copy`'s destination key, with the
    /// source's content headers (Content-Type, -Encoding, -Disposition,
    /// -Language, Cache-Control) and user metadata, as a CopyObject would
    /// carry them; returns its upload id.
    async fn create_multipart(&self, copy: &CopyRequest<'_>) -> Result<String, StoreError>;

    /// Copies one byte range of the source as one part; returns its ETag.
    async fn upload_part_copy(&self, part: &PartCopy<'_>) -> Result<String, StoreError>;

    /// Assembles the parts, `(part number, ETag)` in ascending order.
    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Copied, StoreError>;

    /// Abandons an upload and frees its parts.
    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError>;

    /// The upload ids of the multipart uploads of exactly `key` that were
    /// neither completed nor aborted (a copier's that died, or one that is
    /// frozen and may still send its Complete).
    async fn unfinished_uploads(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError>;

    /// Size and ETag of one object.
    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError>;

    /// Deletes up to 1,000 objects; returns those that could not be deleted.
    async fn delete_objects(
        &self,
        bucket: &str,
        targets: &[DeleteTarget],
    ) -> Result<Vec<DeleteFailure>, StoreError>;
}

/// Most keys one DeleteObjects call accepts.
pub const DELETE_BATCH: usize = crate::core::limits::KEYS_PER_REQUEST;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_classification_drives_retry_and_back_off() {
        let service = |status: u16| StoreError::Service {
            code: "X".into(),
            status,
            message: String::new(),
        };
        let cases = [
            (
                StoreError::Throttled("SlowDown".into()),
                ErrorClass::Throttle,
                true,
                true,
            ),
            (service(503), ErrorClass::Throttle, true, true),
            (service(429), ErrorClass::Throttle, true, true),
            (
                StoreError::Transport("reset".into()),
                ErrorClass::Unreachable,
                true,
                true,
            ),
            (service(500), ErrorClass::ServerError, true, false),
            (service(400), ErrorClass::Invalid, false, false),
            (
                StoreError::Invalid("builder".into()),
                ErrorClass::Invalid,
                false,
                false,
            ),
            (
                StoreError::NoSuchKey("k".into()),
                ErrorClass::NotFound,
                false,
                false,
            ),
            (
                StoreError::AccessDenied("no".into()),
                ErrorClass::Denied,
                false,
                false,
            ),
            (
                StoreError::PreconditionFailed,
                ErrorClass::Precondition,
                false,
                false,
            ),
            (
                StoreError::Unexpected {
                    code: "SizeMismatch",
                    message: String::new(),
                },
                ErrorClass::Unexpected,
                false,
                false,
            ),
            (StoreError::Stopped, ErrorClass::Stopped, false, false),
        ];
        for (e, class, retry, back_off) in cases {
            assert_eq!(e.class(), class, "{e:?}");
            assert_eq!(e.is_retryable(), retry, "{e:?}");
            assert_eq!(e.class().backs_off(), back_off, "{e:?}");
        }
    }
}
