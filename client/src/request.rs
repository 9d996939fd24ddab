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
    /// Without prefixes or keys the whole bucket is warmed.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner.prefixes.push(prefix.into());
        self
    }

    /// Warms the exact key `key` (a source key, not ending in `/`)
    /// instead of prefixes: a request names either prefixes or keys. A key
    /// the source does not hold fails the warm's key with `NoSuchKey`;
    /// adding a key twice is adding it once. The warm lists and leases the
    /// keys' directories (see `WarmCacheRequest.keys`).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.inner.keys.push(key.into());
        self
    }

    /// [`key`](Self::key) for each of `keys`.
    pub fn keys<K: Into<String>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.inner.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Warms only keys matching the glob `pattern` (or any other include
    /// pattern): matched against the whole source key from the bucket's
    /// root; `*` stays within a directory, `**` crosses them (see
    /// `WarmCacheRequest.include`).
    pub fn include(mut self, pattern: impl Into<String>) -> Self {
        self.inner.include.push(pattern.into());
        self
    }

    /// Never warms keys matching the glob `pattern` (exclude wins over
    /// include).
    pub fn exclude(mut self, pattern: impl Into<String>) -> Self {
        self.inner.exclude.push(pattern.into());
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

    /// Accept a warm in which no prefix lists any object (by default the
    /// server fails it: an empty result is far more often a mistyped
    /// prefix than the intent). Either way the final progress names the
    /// empty prefixes (`empty_prefixes`, [`WarmReport::empty_prefixes`](crate::WarmReport::empty_prefixes)).
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.inner.allow_empty = allow;
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

    /// Checks the request as the server would, within what a client can
    /// know ([`client_limits`]): every violation at once, nothing sent.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        self.clone().into_proto().map(|_| ())
    }

    /// The wire message, after the same validation the server applies
    /// (within [`client_limits`]).
    pub fn into_proto(self) -> Result<pb::WarmCacheRequest, InvalidRequest> {
        let mut req = self.inner;
        if req.prefixes.is_empty() && req.keys.is_empty() {
            req.prefixes.push(String::new());
        }
        // A key added twice is one key (the wire refuses duplicates).
        let mut seen = std::collections::HashSet::new();
        req.keys.retain(|k| seen.insert(k.clone()));
        WarmSpec::parse(&req, &client_limits())?;
        Ok(req)
    }
}

/// The bounds a client checks requests against before sending them: the
/// fixed ones (names, prefixes, at most 1,000 of them, TTL above zero)
/// exactly as a server does, and those that are a server's settings at
/// their most lenient, leaving them to the server: any TTL from the
/// lowest `--min-ttl` a server accepts (1 ms) up, and general-purpose
/// destinations (`--allow-general-purpose-destination`).
pub fn client_limits() -> Limits {
    Limits {
        max_ttl: Duration::MAX,
        min_ttl: Duration::from_millis(1),
        allow_general_purpose_destination: true,
        ..Limits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: &WarmRequest) -> Vec<String> {
        r.validate()
            .unwrap_err()
            .violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_request_is_checked_locally_with_every_violation() {
        let bad = WarmRequest::new("Bad_Bucket", "cache--x-s3")
            .prefix("s3://demo-src/datasets/")
            .ttl(Duration::ZERO);
        assert_eq!(
            fields(&bad),
            ["bucket", "prefixes[0]", "directory_bucket", "ttl"]
        );
        let good = WarmRequest::new("demo-src", "cache--use1-az4--x-s3").prefix("datasets/");
        assert!(good.validate().is_ok());
        // A server's own settings are left to it: a short TTL a server
        // may allow, a general-purpose destination.
        let lenient = WarmRequest::new("demo-src", "plain-bucket")
            .prefix("d/")
            .ttl(Duration::from_millis(200));
        assert!(lenient.validate().is_ok());
    }

    #[test]
    fn keys_and_patterns_reach_the_wire_and_keys_are_not_the_whole_bucket() {
        let req = WarmRequest::new("demo-src", "cache--use1-az4--x-s3")
            .key("d/a.bin")
            .keys(["d/b.bin", "d/a.bin"])
            .include("**/*.bin")
            .exclude("tmp/**");
        let wire = req.into_proto().unwrap();
        assert!(wire.prefixes.is_empty(), "keys, not the whole bucket");
        assert_eq!(wire.keys, ["d/a.bin", "d/b.bin"], "each key once");
        assert_eq!((wire.include.len(), wire.exclude.len()), (1, 1));
        let bad = WarmRequest::new("demo-src", "cache--use1-az4--x-s3").include("a[");
        assert_eq!(fields(&bad), ["include[0]"]);
        let both = WarmRequest::new("demo-src", "cache--use1-az4--x-s3")
            .prefix("d/")
            .key("d/a");
        assert_eq!(fields(&both), ["keys"]);
    }

    #[test]
    fn allow_empty_reaches_the_wire() {
        let req = WarmRequest::new("demo-src", "cache--use1-az4--x-s3").allow_empty(true);
        assert!(req.into_proto().unwrap().allow_empty);
    }
}
