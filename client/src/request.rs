//! The warm a launcher asks for, validated as the server would.

use std::time::Duration;

use expresscache::{InvalidRequest, Limits, WarmSpec};

use crate::pb;

/// A warm to submit; build it with [`WarmRequest::new`] and the setters.
#[derive(Debug, Clone)]
pub struct WarmRequest {
    inner: pb::WarmCacheRequest,
}

impl WarmRequest {
    /// Warm from general-purpose `bucket` into `directory_bucket`. Without
    /// any [`prefix`](Self::prefix) the whole bucket is warmed; the TTL
    /// defaults to 24 hours.
    pub fn new(bucket: impl Into<String>, directory_bucket: impl Into<String>) -> Self {
        Self {
            inner: pb::WarmCacheRequest {
                bucket: bucket.into(),
                directory_bucket: directory_bucket.into(),
                ttl: Some(prost_types::Duration {
                    seconds: 24 * 3600,
                    nanos: 0,
                }),
                ..Default::default()
            },
        }
    }

    /// Adds a prefix (`""` for the whole bucket, otherwise ending in `/`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner.prefixes.push(prefix.into());
        self
    }

    /// How long the objects must stay cached.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.inner.ttl = Some(prost_types::Duration {
            seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(ttl.subsec_nanos()).unwrap_or(0),
        });
        self
    }

    /// Copy everything again, even objects cached and unchanged.
    pub fn force_copy(mut self, force: bool) -> Self {
        self.inner.force_copy = force;
        self
    }

    /// Cache source key K as `prefix` + K (`""` or ending in `/`), so several
    /// sources can share one directory bucket.
    pub fn destination_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner.destination_prefix = prefix.into();
        self
    }

    /// Answer at once from a SUCCEEDED warm of the same data that finished
    /// at most `window` ago, if its leases are live, instead of listing the
    /// source (changes within the window go unnoticed). Zero, the default:
    /// always list.
    pub fn max_staleness(mut self, window: Duration) -> Self {
        self.inner.max_staleness = (!window.is_zero()).then(|| prost_types::Duration {
            seconds: i64::try_from(window.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(window.subsec_nanos()).unwrap_or(0),
        });
        self
    }

    /// Copy through one S3 Batch Operations job instead of the server's
    /// copy engine (the server must be configured for it).
    pub fn batch_operations(mut self, batch: bool) -> Self {
        self.inner.batch_operations = batch;
        self
    }

    /// Plan only (see [`Client::plan`](crate::Client::plan)): list and
    /// compare with the cache, copy nothing, write no lease.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.inner.dry_run = dry_run;
        self
    }

    /// Idempotency key: resubmitting with the same id reattaches to the
    /// running operation instead of starting another. Without one,
    /// [`Client::warm_and_wait`](crate::Client::warm_and_wait) generates
    /// one, so its reconnects never start a second warm.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.inner.request_id = id.into();
        self
    }

    /// The request id, if one was set.
    pub fn get_request_id(&self) -> Option<&str> {
        (!self.inner.request_id.is_empty()).then_some(self.inner.request_id.as_str())
    }

    /// This request with a random request id if it had none.
    #[must_use]
    pub fn with_generated_request_id(mut self) -> Self {
        if self.inner.request_id.is_empty() {
            self.inner.request_id = format!("rs-{}", uuid::Uuid::new_v4());
        }
        self
    }

    /// The wire message, after the same validation the server applies (the
    /// TTL upper bound and whether general-purpose destinations are allowed
    /// are the server's settings to enforce).
    pub fn into_proto(self) -> Result<pb::WarmCacheRequest, InvalidRequest> {
        let mut req = self.inner;
        if req.prefixes.is_empty() {
            req.prefixes.push(String::new());
        }
        let limits = Limits {
            max_ttl: Duration::MAX,
            allow_general_purpose_destination: true,
            ..Limits::default()
        };
        WarmSpec::parse(&req, &limits)?;
        Ok(req)
    }
}
