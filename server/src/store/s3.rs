//! [`ObjectStore`] over aws-sdk-s3.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::create_session::CreateSessionError;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, TaggingDirective,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{
    Copied, CopyRequest, DeleteFailure, DeleteTarget, ListPage, ListQuery, ObjectMeta, ObjectStore,
    PartCopy, StoreError,
};

/// `x-amz-copy-source` is `bucket/key` URL-encoded; `/` stays literal and the
/// RFC 3986 unreserved characters need no escaping. Everything else (spaces,
/// quotes, `+`, `%`, non-ASCII) is escaped, so odd keys copy intact.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An [`ObjectStore`] backed by an `aws_sdk_s3::Client`.
///
/// Two clients share one configuration but not one retry policy. The calls
/// that the service retries itself (copies and their multipart steps, by
/// the copy engine; deletes, by the evictor) go out exactly once per
/// attempt, so every throttle and timeout reaches the engine's adaptive
/// limit and retry budget instead of being absorbed (and multiplied) by
/// the SDK's own retries. Listing and bucket checks, which nothing above
/// retries, keep the SDK's standard retries.
#[derive(Debug, Clone)]
pub struct S3Store {
    /// SDK retries on; each attempt bounded by the request timeout.
    retrying: aws_sdk_s3::Client,
    /// One attempt per call; the caller bounds and retries it.
    single: aws_sdk_s3::Client,
    /// Bound on one attempt of a call without a size-scaled budget.
    request_timeout: Duration,
}

/// How long establishing a connection may take before the attempt fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl S3Store {
    /// A store over `client` with the default 30 s request timeout.
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self::with_request_timeout(client, Duration::from_secs(30))
    }

    /// The client with SDK retries, each attempt bounded by the request
    /// timeout (for S3 calls outside the store: the Batch offload's).
    pub fn retrying_client(&self) -> &aws_sdk_s3::Client {
        &self.retrying
    }

    /// A store over `client` whose un-sized calls (listing, bucket checks,
    /// deletes) give up an attempt after `request_timeout`; copies are
    /// bounded by the copy engine in proportion to their size.
    pub fn with_request_timeout(client: aws_sdk_s3::Client, request_timeout: Duration) -> Self {
        use aws_sdk_s3::config::retry::RetryConfig;
        use aws_sdk_s3::config::timeout::TimeoutConfig;
        let conf = client.config().to_builder();
        let retrying = conf
            .clone()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(request_timeout)
                    .build(),
            )
            .build();
        let single = conf
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build(),
            )
            .build();
        Self {
            retrying: aws_sdk_s3::Client::from_conf(retrying),
            single: aws_sdk_s3::Client::from_conf(single),
            request_timeout,
        }
    }

    /// The `x-amz-copy-source` value for `bucket`/`key`.
    pub fn copy_source(bucket: &str, key: &str) -> String {
        format!("{bucket}/{}", utf8_percent_encode(key, COPY_SOURCE))
    }
}

fn to_system_time(t: &DateTime) -> Option<SystemTime> {
    let secs = u64::try_from(t.secs()).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, t.subsec_nanos()))
}

/// A call that got no answer in time: retryable, like any transport failure.
pub(crate) fn timed_out(call: &str, after: Duration) -> StoreError {
    StoreError::Transport(format!("{call} got no answer within {after:?} (timed out)"))
}

type SessionError = SdkError<CreateSessionError, HttpResponse>;

/// The CreateSession service error inside `err`'s source chain, if any.
fn session_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a SessionError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<SessionError>() {
            if matches!(s, SdkError::ServiceError(_)) {
                return Some(s);
            }
        }
        cur = e.source();
    }
    None
}

/// Maps an SDK error onto [`StoreError`]. `subject` names the bucket or key
/// the call was about, for the not-found variants.
fn classify<E>(err: &SdkError<E, HttpResponse>, bucket: &str, key: Option<&str>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or_default().to_owned();
            let message = se.err().message().unwrap_or_default().to_owned();
            match (code.as_str(), status) {
                ("NoSuchBucket", _) => StoreError::NoSuchBucket(bucket.to_owned()),
                ("NoSuchKey", _) => StoreError::NoSuchKey(key.unwrap_or_default().to_owned()),
                // HEAD answers with a bare status and no body: about a
                // bucket (HeadBucket) or a key (HeadObject).
                ("NotFound" | "", 404) => match key {
                    None => StoreError::NoSuchBucket(bucket.to_owned()),
                    Some(k) => StoreError::NoSuchKey(k.to_owned()),
                },
                ("AccessDenied" | "Forbidden", _) | (_, 403) => {
                    StoreError::AccessDenied(if message.is_empty() {
                        format!("access to bucket {bucket:?} denied")
                    } else {
                        message
                    })
                }
                ("PreconditionFailed", _) | (_, 412) => StoreError::PreconditionFailed,
                ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded", _)
                | (_, 503) => {
                    StoreError::Throttled(if message.is_empty() { code } else { message })
                }
                _ => StoreError::Service {
                    code: if code.is_empty() {
                        format!("Http{status}")
                    } else {
                        code
                    },
                    status,
                    message,
                },
            }
        }
        SdkError::DispatchFailure(_) => match session_error(err) {
            // A directory bucket call first asks for an S3 Express session;
            // when that is refused (no such bucket, access denied) the SDK
            // reports a dispatch failure wrapping CreateSession's answer.
            Some(session) => classify(session, bucket, key),
            // A connection that failed or timed out is worth another try;
            // a request that could not be sent at all (the credentials
            // provider failed, no region) is the configuration's.
            None => match err {
                // Classified "other" failures (an incomplete reply) are
                // transient; unclassified and user ones are not.
                SdkError::DispatchFailure(d)
                    if !(d.is_io() || d.is_timeout() || d.as_other().is_some()) =>
                {
                    StoreError::Config(DisplayErrorContext(err).to_string())
                }
                _ => StoreError::Transport(DisplayErrorContext(err).to_string()),
            },
        },
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            StoreError::Transport(DisplayErrorContext(err).to_string())
        }
        // Construction and serialization failures: ours, not the service's.
        _ => StoreError::Invalid(DisplayErrorContext(err).to_string()),
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn check_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        self.retrying
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e, bucket, None))
    }

    async fn list_page(
        &self,
        bucket: &str,
        query: &ListQuery<'_>,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        let prefix = query.prefix;
        let out = self
            .retrying
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_start_after(query.start_after.map(str::to_owned))
            .set_delimiter(query.delimited.then(|| "/".to_owned()))
            .set_continuation_token(continuation)
            .send()
            .await
            .map_err(|e| classify(&e, bucket, None))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_owned(),
                    etag: o.e_tag().unwrap_or_default().to_owned(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    last_modified: o.last_modified().and_then(to_system_time),
                })
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .collect();
        let next = match (out.is_truncated(), out.next_continuation_token()) {
            (Some(true), Some(token)) => Some(token.to_owned()),
            // Truncated without a way to go on: ending here would report a
            // partial listing as the whole.
            (Some(true), None) => {
                return Err(StoreError::Unexpected {
                    code: "TruncatedWithoutToken",
                    message: format!(
                        "ListObjectsV2 of s3://{bucket}/{prefix} answered a truncated page \
                         without a continuation token"
                    ),
                })
            }
            _ => None,
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next,
        })
    }

    async fn copy_object(&self, req: &CopyRequest<'_>) -> Result<Copied, StoreError> {
        let out = self
            .single
            .copy_object()
            .bucket(req.dest_bucket)
            .key(req.dest_key)
            .copy_source(Self::copy_source(req.source_bucket, req.source_key))
            .copy_source_if_match(req.source_etag)
            // Directory buckets reject object tags (501), so never carry
            // the source's tags over.
            .tagging_directive(TaggingDirective::Replace)
            .send()
            .await
            .map_err(|e| classify(&e, req.source_bucket, Some(req.source_key)))?;
        let etag = out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_owned();
        Ok(Copied { etag })
    }

    async fn create_multipart(&self, copy: &CopyRequest<'_>) -> Result<String, StoreError> {
        // What CopyObject copies by itself, UploadPartCopy does not: the
        // source's headers and metadata go on the upload. (Not conditional
        // on the ETag: the parts are, so a newer source fails the copy.)
        let (src, src_key) = (copy.source_bucket, copy.source_key);
        let source = self
            .single
            .head_object()
            .bucket(src)
            .key(src_key)
            .send()
            .await
            .map_err(|e| classify(&e, src, Some(src_key)))?;
        let (bucket, key) = (copy.dest_bucket, copy.dest_key);
        let out = self
            .single
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_content_type(source.content_type().map(str::to_owned))
            .set_content_encoding(source.content_encoding().map(str::to_owned))
            .set_content_disposition(source.content_disposition().map(str::to_owned))
            .set_content_language(source.content_language().map(str::to_owned))
            .set_cache_control(source.cache_control().map(str::to_owned))
            .set_metadata(source.metadata().cloned())
            .send()
            .await
            .map_err(|e| classify(&e, bucket, Some(key)))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Unexpected {
                code: "NoUploadId",
                message: "CreateMultipartUpload returned no upload id".into(),
            })
    }

    async fn upload_part_copy(&self, part: &PartCopy<'_>) -> Result<String, StoreError> {
        let c = &part.copy;
        let out = self
            .single
            .upload_part_copy()
            .bucket(c.dest_bucket)
            .key(c.dest_key)
            .upload_id(part.upload_id)
            .part_number(part.part_number)
            .copy_source(Self::copy_source(c.source_bucket, c.source_key))
            .copy_source_if_match(c.source_etag)
            .copy_source_range(format!("bytes={}-{}", part.first_byte, part.last_byte))
            .send()
            .await
            .map_err(|e| classify(&e, c.source_bucket, Some(c.source_key)))?;
        Ok(out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_owned())
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Copied, StoreError> {
        let parts = parts
            .iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build())
            .collect();
        let out = self
            .single
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(&e, bucket, Some(key)))?;
        Ok(Copied {
            etag: out.e_tag().unwrap_or_default().to_owned(),
        })
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.single
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e, bucket, Some(key)))
    }

    async fn unfinished_uploads(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError> {
        // Directory buckets take only prefixes that end in '/': the key's
        // folder, filtered to the key.
        let folder = key.rfind('/').map(|i| &key[..=i]);
        let mut ids = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let out = self
                .retrying
                .list_multipart_uploads()
                .bucket(bucket)
                .set_prefix(folder.map(str::to_owned))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| classify(&e, bucket, Some(key)))?;
            ids.extend(
                out.uploads()
                    .iter()
                    .filter(|u| u.key() == Some(key))
                    .filter_map(|u| u.upload_id().map(str::to_owned)),
            );
            if out.is_truncated() != Some(true) {
                return Ok(ids);
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            id_marker = out.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                // Truncated without a way on: what was seen is all there
                // is to abort; saying so beats looping forever.
                return Err(StoreError::Unexpected {
                    code: "TruncatedWithoutMarker",
                    message: format!(
                        "ListMultipartUploads of s3://{bucket}/{} answered a truncated page \
                         without a marker",
                        folder.unwrap_or_default()
                    ),
                });
            }
        }
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        let out = self
            .single
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(&e, bucket, Some(key)))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            etag: out.e_tag().unwrap_or_default().to_owned(),
            size: out
                .content_length()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            last_modified: out.last_modified().and_then(to_system_time),
        })
    }

    async fn delete_objects(
        &self,
        bucket: &str,
        targets: &[DeleteTarget],
    ) -> Result<Vec<DeleteFailure>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let objects = targets
            .iter()
            .map(|t| {
                ObjectIdentifier::builder()
                    .key(&t.key)
                    .set_e_tag(t.etag.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let call = self
            .single
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send();
        let out = tokio::time::timeout(self.request_timeout, call)
            .await
            .map_err(|_| timed_out("DeleteObjects", self.request_timeout))?
            .map_err(|e| classify(&e, bucket, None))?;
        Ok(out
            .errors()
            .iter()
            .map(|e| DeleteFailure {
                key: e.key().unwrap_or_default().to_owned(),
                code: e.code().unwrap_or("Unknown").to_owned(),
                message: e.message().unwrap_or_default().to_owned(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::copy_object::CopyObjectError;
    use aws_sdk_s3::operation::head_bucket::HeadBucketError;
    use aws_sdk_s3::primitives::SdkBody;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    fn head_error(status: u16, code: Option<&str>) -> SdkError<HeadBucketError, HttpResponse> {
        let mut meta = ErrorMetadata::builder();
        if let Some(c) = code {
            meta = meta.code(c);
        }
        SdkError::service_error(HeadBucketError::generic(meta.build()), response(status))
    }

    #[test]
    fn a_request_that_could_not_be_sent_is_the_configurations_a_broken_connection_is_not() {
        use aws_sdk_s3::error::ConnectorError;
        let failed = |c: ConnectorError| -> SdkError<HeadBucketError, HttpResponse> {
            SdkError::dispatch_failure(c)
        };
        // What a credentials provider that fails looks like to the caller.
        let config = classify(
            &failed(ConnectorError::other("no credentials".into(), None)),
            "b",
            None,
        );
        assert!(matches!(config, StoreError::Config(_)), "{config:?}");
        assert_eq!(config.class(), crate::store::ErrorClass::Configuration);
        assert!(!config.is_retryable());
        let reset = classify(&failed(ConnectorError::io("reset".into())), "b", None);
        assert!(matches!(reset, StoreError::Transport(_)), "{reset:?}");
        let cut = classify(
            &failed(ConnectorError::other(
                "incomplete".into(),
                Some(aws_smithy_types::retry::ErrorKind::TransientError),
            )),
            "b",
            None,
        );
        assert!(cut.is_retryable(), "{cut:?}");
    }

    fn copy_error(status: u16, code: &str) -> SdkError<CopyObjectError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        SdkError::service_error(CopyObjectError::generic(meta), response(status))
    }

    #[test]
    fn service_answers_map_to_precise_errors() {
        assert_eq!(
            classify(&head_error(404, None), "b", None),
            StoreError::NoSuchBucket("b".into()),
            "HeadBucket's bare 404"
        );
        assert!(matches!(
            classify(&head_error(403, None), "b", None),
            StoreError::AccessDenied(_)
        ));
        assert_eq!(
            classify(&copy_error(412, "PreconditionFailed"), "b", Some("k")),
            StoreError::PreconditionFailed
        );
        assert_eq!(
            classify(&copy_error(404, "NoSuchKey"), "b", Some("k")),
            StoreError::NoSuchKey("k".into())
        );
        let slow = classify(&copy_error(503, "SlowDown"), "b", Some("k"));
        assert!(matches!(slow, StoreError::Throttled(_)) && slow.is_retryable());
        let internal = classify(&copy_error(500, "InternalError"), "b", Some("k"));
        assert!(internal.is_retryable(), "{internal:?}");
        let denied = classify(&copy_error(403, "AccessDenied"), "b", Some("k"));
        assert!(!denied.is_retryable());
    }

    #[test]
    fn copy_source_escapes_everything_but_slashes() {
        assert_eq!(S3Store::copy_source("b", "a/b c.txt"), "b/a/b%20c.txt");
        assert_eq!(
            S3Store::copy_source("b", "q\"'+%ü~_-"),
            "b/q%22%27%2B%25%C3%BC~_-"
        );
    }
}
