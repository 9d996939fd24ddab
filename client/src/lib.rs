//! Async client for expresscache, the service that warms S3 Express One Zone
//! directory buckets from general-purpose S3 buckets.
//!
//! The call a job launcher needs is [`Client::warm_and_wait`]: submit a warm,
//! follow its progress, and get the final [`WarmReport`] once every object is
//! present and current in the directory bucket (or could not be made so).
//!
//! ```no_run
//! use std::time::Duration;
//! use expresscache_client::{Client, Outcome, WarmRequest};
//!
//! # async fn launch() -> Result<(), expresscache_client::ClientError> {
//! let mut client = Client::connect("http://127.0.0.1:50051").await?;
//! let request = WarmRequest::new("genomics-raw", "genomics-cache--use1-az4--x-s3")
//!     .prefix("runs/2026-11-26/")
//!     .ttl(Duration::from_secs(6 * 3600))
//!     .request_id("slurm-job-81234");
//! let report = client
//!     .warm_and_wait(request, |p| {
//!         if let Some(c) = &p.counters {
//!             eprintln!("{} of {} copied", c.objects_copied, c.objects_to_copy);
//!         }
//!     })
//!     .await?;
//! assert_eq!(report.outcome, Outcome::Succeeded, "cache not ready: {report:?}");
//! // ... start the compute job here ...
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

pub use expresscache::proto::v1 as pb;
use expresscache::proto::v1::cache_service_client::CacheServiceClient;
pub use expresscache::proto::v1::{Outcome, Phase};
use expresscache::{InvalidRequest, Limits, WarmSpec};
use tonic::transport::{Channel, Endpoint};

/// What can go wrong talking to the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request is invalid; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The endpoint URL is malformed or the connection could not be made.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    /// The service answered with an error status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    /// An endpoint list that cannot be used; nothing was sent.
    #[error("{0}")]
    BadEndpoint(String),
    /// The progress stream ended without a final message.
    #[error("progress stream of operation {0:?} ended before the warm finished")]
    StreamEnded(String),
}

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

    /// Idempotency key: resubmitting with the same id reattaches to the
    /// running operation instead of starting another.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.inner.request_id = id.into();
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

/// The final state of a warm.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmReport {
    pub operation_id: String,
    pub outcome: Outcome,
    pub counters: pb::Counters,
    /// The first failed keys with their errors.
    pub failures: Vec<pb::KeyFailure>,
    /// Failed keys not listed in `failures`.
    pub failures_omitted: u64,
    /// Operation-level error when the outcome is FAILED.
    pub error: Option<String>,
    /// The final progress message as received.
    pub last: pb::WarmProgress,
}

impl WarmReport {
    /// Builds the report from a final (phase DONE) progress message.
    pub fn from_final(last: pb::WarmProgress) -> Self {
        Self {
            operation_id: last.operation_id.clone(),
            outcome: Outcome::try_from(last.outcome).unwrap_or(Outcome::Unspecified),
            counters: last.counters.unwrap_or_default(),
            failures: last.failures.clone(),
            failures_omitted: last.failures_omitted,
            error: (!last.error.is_empty()).then(|| last.error.clone()),
            last,
        }
    }
}

/// Whether a progress message is the last one of its operation.
pub fn is_final(p: &pb::WarmProgress) -> bool {
    p.phase == Phase::Done as i32
}

/// A connection to an expresscache server.
#[derive(Debug, Clone)]
pub struct Client {
    inner: CacheServiceClient<Channel>,
}

/// The endpoints of one service's replicas, tried in turn: a launcher
/// given all of them survives the loss of the one it talks to (a warm
/// reattaches elsewhere by its request id).
#[derive(Debug)]
pub struct Endpoints {
    list: Vec<String>,
    /// Where the next connect starts.
    next: std::sync::atomic::AtomicUsize,
    /// The one connected to last.
    current: std::sync::atomic::AtomicUsize,
}

impl Endpoints {
    /// One endpoint, or several separated by commas, e.g.
    /// `http://a:50051,http://b:50051`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let list: Vec<String> = list.split(',').map(|e| e.trim().to_owned()).collect();
        if list.iter().any(String::is_empty) {
            return Err(format!(
                "endpoint list {list:?} has an empty entry; give URLs separated by commas"
            ));
        }
        Ok(Self {
            list,
            next: 0.into(),
            current: 0.into(),
        })
    }

    pub fn as_slice(&self) -> &[String] {
        &self.list
    }

    /// Connects to the first endpoint that answers, starting where the
    /// last failure left off; the error of the last one tried if none does.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        use std::sync::atomic::Ordering::Relaxed;
        let start = self.next.load(Relaxed);
        let mut last = None;
        for i in 0..self.list.len() {
            let idx = (start + i) % self.list.len();
            match Client::connect_one(&self.list[idx]).await {
                Ok(c) => {
                    self.current.store(idx, Relaxed);
                    self.next.store(idx, Relaxed);
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::BadEndpoint("no endpoint given".into())))
    }

    /// Notes that the endpoint connected to last failed: the next
    /// [`connect`](Self::connect) starts at the one after it.
    pub fn failed(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let failed = self.current.load(Relaxed);
        self.next.store((failed + 1) % self.list.len(), Relaxed);
    }

    /// The endpoint connected to last.
    pub fn current(&self) -> &str {
        &self.list[self.current.load(std::sync::atomic::Ordering::Relaxed)]
    }
}

impl Client {
    /// Connects to `endpoint`, e.g. `http://127.0.0.1:50051`, or to the
    /// first that answers of a comma-separated list of replicas.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, ClientError> {
        let endpoint = endpoint.into();
        if endpoint.contains(',') {
            let endpoints = Endpoints::parse(&endpoint).map_err(ClientError::BadEndpoint)?;
            return endpoints.connect().await;
        }
        Self::connect_one(&endpoint).await
    }

    async fn connect_one(endpoint: &str) -> Result<Self, ClientError> {
        let endpoint = endpoint.to_owned();
        let connect_err = |source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(connect_err)?
            // Short: with several replicas, a dead one must not hold up
            // trying the next.
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(connect_err)?;
        Ok(Self {
            inner: CacheServiceClient::new(channel),
        })
    }

    /// Submits a warm and returns its progress stream; the last message has
    /// phase DONE and the outcome.
    pub async fn warm(
        &mut self,
        request: WarmRequest,
    ) -> Result<tonic::Streaming<pb::WarmProgress>, ClientError> {
        let req = request.into_proto()?;
        Ok(self.inner.warm_cache(req).await?.into_inner())
    }

    /// Submits a warm, calls `on_progress` for every update, and returns the
    /// final report once the warm is done.
    pub async fn warm_and_wait(
        &mut self,
        request: WarmRequest,
        mut on_progress: impl FnMut(&pb::WarmProgress),
    ) -> Result<WarmReport, ClientError> {
        let mut stream = self.warm(request).await?;
        let mut operation_id = String::new();
        while let Some(p) = stream.message().await? {
            operation_id.clone_from(&p.operation_id);
            on_progress(&p);
            if is_final(&p) {
                return Ok(WarmReport::from_final(p));
            }
        }
        Err(ClientError::StreamEnded(operation_id))
    }

    /// Follows an operation: its current state at once, then every update,
    /// ending with the final (phase DONE) message.
    pub async fn watch(
        &mut self,
        operation_id: impl Into<String>,
    ) -> Result<tonic::Streaming<pb::WarmProgress>, ClientError> {
        Ok(self
            .inner
            .watch_operation(pb::WatchOperationRequest {
                operation_id: operation_id.into(),
            })
            .await?
            .into_inner())
    }

    /// Follows an operation until it is done; returns its final report.
    pub async fn watch_and_wait(
        &mut self,
        operation_id: impl Into<String>,
        mut on_progress: impl FnMut(&pb::WarmProgress),
    ) -> Result<WarmReport, ClientError> {
        let operation_id = operation_id.into();
        let mut stream = self.watch(operation_id.clone()).await?;
        while let Some(p) = stream.message().await? {
            on_progress(&p);
            if is_final(&p) {
                return Ok(WarmReport::from_final(p));
            }
        }
        Err(ClientError::StreamEnded(operation_id))
    }

    /// Cancels a running warm and waits until it stopped; returns its final
    /// state (a finished operation is returned unchanged).
    pub async fn cancel(
        &mut self,
        operation_id: impl Into<String>,
    ) -> Result<pb::OperationStatus, ClientError> {
        Ok(self
            .inner
            .cancel_operation(pb::CancelOperationRequest {
                operation_id: operation_id.into(),
            })
            .await?
            .into_inner())
    }

    /// One page of recent operations, newest first. Pass the previous
    /// page's `next_page_token` to continue; it is empty on the last page.
    pub async fn list_operations(
        &mut self,
        filter: pb::OperationFilter,
        page_size: u32,
        page_token: impl Into<String>,
    ) -> Result<pb::ListOperationsResponse, ClientError> {
        Ok(self
            .inner
            .list_operations(pb::ListOperationsRequest {
                filter: filter as i32,
                page_size,
                page_token: page_token.into(),
            })
            .await?
            .into_inner())
    }

    /// The request and latest progress of an operation.
    pub async fn operation_status(
        &mut self,
        operation_id: impl Into<String>,
    ) -> Result<pb::OperationStatus, ClientError> {
        let resp = self
            .inner
            .get_status(pb::GetStatusRequest {
                target: Some(pb::get_status_request::Target::OperationId(
                    operation_id.into(),
                )),
            })
            .await?
            .into_inner();
        resp.operation
            .ok_or_else(|| tonic::Status::internal("server sent no operation status").into())
    }

    /// How warm each prefix of `directory_bucket` is.
    pub async fn prefix_status(
        &mut self,
        directory_bucket: impl Into<String>,
        prefixes: Vec<String>,
    ) -> Result<Vec<pb::PrefixStatus>, ClientError> {
        let resp = self
            .inner
            .get_status(pb::GetStatusRequest {
                target: Some(pb::get_status_request::Target::Prefixes(pb::PrefixQuery {
                    directory_bucket: directory_bucket.into(),
                    prefixes,
                })),
            })
            .await?
            .into_inner();
        Ok(resp.prefixes)
    }

    /// Ends the leases of `prefixes` now and deletes their cached objects,
    /// except those another live lease still covers (unless `force`).
    pub async fn evict(
        &mut self,
        directory_bucket: impl Into<String>,
        prefixes: Vec<String>,
        force: bool,
    ) -> Result<pb::EvictResponse, ClientError> {
        Ok(self
            .inner
            .evict(pb::EvictRequest {
                directory_bucket: directory_bucket.into(),
                prefixes,
                force,
            })
            .await?
            .into_inner())
    }
}
