//! The connection to a service, and the calls a launcher makes.

use std::sync::Arc;
use std::time::Duration;

use expresscache::proto::v1::cache_service_client::CacheServiceClient;
use tonic::transport::Channel;

use crate::endpoints::Endpoints;
use crate::progress::{Progress, WarmReport};
use crate::retry::{retryable, RetryPolicy};
use crate::{pb, ClientError, WarmRequest};

/// A connection to an expresscache service: one server, or several
/// replicas of one fleet, tried in turn.
///
/// [`warm_and_wait`](Self::warm_and_wait) and
/// [`watch_and_wait`](Self::watch_and_wait) survive a dropped connection
/// and a restarting server by the [`RetryPolicy`]; the other calls are
/// made once (an UNAVAILABLE moves the next call to the next endpoint) and
/// bounded by the call timeout, if one is set.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Arc<Endpoints>,
    inner: CacheServiceClient<Channel>,
    retry: RetryPolicy,
    call_timeout: Option<Duration>,
}

impl Client {
    /// Connects to `endpoint`, e.g. `http://127.0.0.1:50051`, or to the
    /// first that answers of a comma-separated list of replicas.
    pub async fn connect(endpoint: impl AsRef<str>) -> Result<Self, ClientError> {
        let endpoints = Endpoints::parse(endpoint.as_ref()).map_err(ClientError::BadEndpoint)?;
        Self::connect_to(Arc::new(endpoints)).await
    }

    /// Connects to the first of `endpoints` that answers.
    pub async fn connect_to(endpoints: Arc<Endpoints>) -> Result<Self, ClientError> {
        let channel = endpoints.connect().await?;
        Ok(Self {
            endpoints,
            inner: CacheServiceClient::new(channel),
            retry: RetryPolicy::default(),
            call_timeout: None,
        })
    }

    /// Connects to the first of `endpoints` that answers, reconnecting by
    /// the retry policy while none does (a launcher that starts while the
    /// service restarts).
    pub async fn connect_with_retry(
        endpoints: Arc<Endpoints>,
        retry: RetryPolicy,
    ) -> Result<Self, ClientError> {
        let mut attempt = 0;
        loop {
            match Self::connect_to(Arc::clone(&endpoints)).await {
                Ok(c) => return Ok(c.with_retry(retry)),
                Err(e) if retryable(&e) && attempt < retry.attempts => {
                    attempt += 1;
                    if let Some(hook) = &retry.on_retry {
                        hook(&e, attempt, retry.attempts);
                    }
                    tokio::time::sleep(retry.pause(&e, attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reconnects by `retry` (default: [`RetryPolicy::default`]).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Bounds every unary call (status, evict, cancel, listing) by
    /// `timeout`; the waits for a warm are bounded by the warm itself.
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// The endpoint this client talks to now.
    pub fn endpoint(&self) -> &str {
        self.endpoints.current()
    }

    /// `message` with the credentials' token (streams: no timeout).
    fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        self.endpoints.credentials().authorize(&mut r);
        r
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = self.authorized(message);
        if let Some(t) = self.call_timeout {
            r.set_timeout(t);
        }
        r
    }

    /// Marks the current endpoint failed and connects to the next that
    /// answers.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.endpoints.failed();
        self.inner = CacheServiceClient::new(self.endpoints.connect().await?);
        Ok(())
    }

    /// A unary call's error, after which the next call goes to the next
    /// endpoint if this one is unavailable.
    async fn noted<T>(
        &mut self,
        r: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, ClientError> {
        match r {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                if s.code() == tonic::Code::Unavailable && self.endpoints.as_slice().len() > 1 {
                    let _ = self.reconnect().await;
                }
                Err(s.into())
            }
        }
    }

    /// Submits a warm and returns its progress stream as sent on the wire
    /// (no reconnects: [`warm_and_wait`](Self::warm_and_wait) is the call
    /// that survives a broken connection).
    pub async fn warm(
        &mut self,
        request: WarmRequest,
    ) -> Result<tonic::Streaming<pb::WarmProgress>, ClientError> {
        let req = self.authorized(request.into_proto()?);
        Ok(self.inner.warm_cache(req).await?.into_inner())
    }

    /// Submits a warm and returns its operation id as soon as the server
    /// names it (the stream's first message), without waiting for the
    /// warm: it runs on, detached from the call; follow it with
    /// [`watch_and_wait`](Self::watch_and_wait) or
    /// [`operation_status`](Self::operation_status). A request without a
    /// request id gets a random one.
    pub async fn submit(&mut self, request: WarmRequest) -> Result<String, ClientError> {
        let mut stream = self.warm(request.with_generated_request_id()).await?;
        while let Some(p) = stream.message().await? {
            if !p.operation_id.is_empty() {
                return Ok(p.operation_id);
            }
        }
        Err(ClientError::StreamEnded(String::new()))
    }

    /// Plans `request` without warming (a dry run): lists the source and
    /// compares it with the cache, calling `on_progress` with the listing's
    /// progress, and returns the plan: what would be copied and what is
    /// cached, per prefix, and what the warm would cost by the engine and by
    /// S3 Batch Operations. Nothing is copied, leased or recorded; a
    /// dropped connection ends it (run it again).
    pub async fn plan(
        &mut self,
        request: WarmRequest,
        mut on_progress: impl FnMut(&pb::WarmProgress),
    ) -> Result<pb::WarmPlan, ClientError> {
        let mut stream = self.warm(request.dry_run(true)).await?;
        while let Some(p) = stream.message().await? {
            if !p.operation_id.is_empty() {
                // A server that predates dry runs ignores the field and
                // warms: stop it at once and say so.
                let id = p.operation_id.clone();
                drop(stream);
                let _ = self.cancel(id.clone()).await;
                return Err(ClientError::PlanFailed(format!(
                    "the server does not support dry runs (it started warm {id}, now cancelled); upgrade it"
                )));
            }
            on_progress(&p);
            if p.phase == pb::Phase::Done as i32 {
                if p.outcome == pb::Outcome::Succeeded as i32 {
                    return p.plan.ok_or_else(|| {
                        ClientError::PlanFailed("the final message carries no plan".into())
                    });
                }
                return Err(ClientError::PlanFailed(p.error));
            }
        }
        Err(ClientError::StreamEnded(String::new()))
    }

    /// Submits a warm, calls `on_progress` for every update, and returns
    /// the final report once the warm is done (every object present and
    /// current, or why not).
    ///
    /// A dropped connection or a restarting server does not end the wait:
    /// the client reconnects (to the next endpoint, by the retry policy)
    /// and reattaches — by the request id until the operation is known (a
    /// request without one gets a random id, so a reconnect does not start
    /// a second warm), then by the operation id (had it ended meanwhile,
    /// its final state is the answer, not a new warm). The retry policy
    /// bounds the reconnects in a row; progress received starts the count
    /// again.
    pub async fn warm_and_wait(
        &mut self,
        request: WarmRequest,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<WarmReport, ClientError> {
        let req = request.with_generated_request_id().into_proto()?;
        self.wait(Some(req), None, &mut on_progress).await
    }

    /// Follows a warm to its final report, reconnecting by the retry
    /// policy: submits `submit` until the operation id is known (the
    /// request id reattaches), then watches that operation.
    async fn wait(
        &mut self,
        submit: Option<pb::WarmCacheRequest>,
        mut operation: Option<String>,
        on_progress: &mut impl FnMut(&Progress),
    ) -> Result<WarmReport, ClientError> {
        let mut attempt = 0;
        loop {
            let mut progressed = false;
            let mut note = |p: &Progress| {
                progressed = true;
                on_progress(p);
            };
            let stream = match (operation.clone(), &submit) {
                (Some(id), _) => {
                    let req = self.authorized(pb::WatchOperationRequest { operation_id: id });
                    self.inner.watch_operation(req).await
                }
                (None, Some(req)) => {
                    let req = self.authorized(req.clone());
                    self.inner.warm_cache(req).await
                }
                (None, None) => unreachable!("a wait has a request or an operation"),
            };
            let result = follow(stream, &mut operation, &mut note).await;
            if progressed {
                // A separate break, not the same outage going on.
                attempt = 0;
            }
            match result {
                Err(e) if retryable(&e) && attempt < self.retry.attempts => {
                    attempt += 1;
                    self.pause_and_reconnect(&e, attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn pause_and_reconnect(&mut self, e: &ClientError, attempt: u32) {
        if let Some(hook) = &self.retry.on_retry {
            hook(e, attempt, self.retry.attempts);
        }
        tokio::time::sleep(self.retry.pause(e, attempt)).await;
        // A failed reconnect leaves the broken channel: the next attempt
        // fails at once and counts, so the policy still bounds the wait.
        let _ = self.reconnect().await;
    }

    /// Follows an operation as sent on the wire: its current state at
    /// once, then every update, ending with the final (phase DONE) message.
    pub async fn watch(
        &mut self,
        operation_id: impl Into<String>,
    ) -> Result<tonic::Streaming<pb::WarmProgress>, ClientError> {
        let req = self.authorized(pb::WatchOperationRequest {
            operation_id: operation_id.into(),
        });
        Ok(self.inner.watch_operation(req).await?.into_inner())
    }

    /// Follows an operation until it is done; returns its final report.
    /// Reconnects like [`warm_and_wait`](Self::warm_and_wait).
    pub async fn watch_and_wait(
        &mut self,
        operation_id: impl Into<String>,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<WarmReport, ClientError> {
        self.wait(None, Some(operation_id.into()), &mut on_progress)
            .await
    }

    /// Cancels a running warm and waits until it stopped; returns its final
    /// state (a finished operation is returned unchanged).
    pub async fn cancel(
        &mut self,
        operation_id: impl Into<String>,
    ) -> Result<pb::OperationStatus, ClientError> {
        let req = self.request(pb::CancelOperationRequest {
            operation_id: operation_id.into(),
        });
        let r = self.inner.cancel_operation(req).await;
        self.noted(r).await
    }

    /// One page of recent operations, newest first. Pass the previous
    /// page's `next_page_token` to continue; it is empty on the last page.
    pub async fn list_operations(
        &mut self,
        filter: pb::OperationFilter,
        page_size: u32,
        page_token: impl Into<String>,
    ) -> Result<pb::ListOperationsResponse, ClientError> {
        let req = self.request(pb::ListOperationsRequest {
            filter: filter as i32,
            page_size,
            page_token: page_token.into(),
        });
        let r = self.inner.list_operations(req).await;
        self.noted(r).await
    }

    /// The request and latest progress of an operation.
    pub async fn operation_status(
        &mut self,
        operation_id: impl Into<String>,
    ) -> Result<pb::OperationStatus, ClientError> {
        let req = self.request(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::OperationId(
                operation_id.into(),
            )),
        });
        let r = self.inner.get_status(req).await;
        self.noted(r)
            .await?
            .operation
            .ok_or_else(|| tonic::Status::internal("server sent no operation status").into())
    }

    /// How warm each prefix of `directory_bucket` is.
    pub async fn prefix_status(
        &mut self,
        directory_bucket: impl Into<String>,
        prefixes: Vec<String>,
    ) -> Result<Vec<pb::PrefixStatus>, ClientError> {
        Ok(self
            .prefix_status_with_clock(directory_bucket, prefixes)
            .await?
            .prefixes)
    }

    /// [`prefix_status`](Self::prefix_status), with the answering server's
    /// clock against S3's.
    pub async fn prefix_status_with_clock(
        &mut self,
        directory_bucket: impl Into<String>,
        prefixes: Vec<String>,
    ) -> Result<pb::GetStatusResponse, ClientError> {
        let req = self.request(pb::GetStatusRequest {
            target: Some(pb::get_status_request::Target::Prefixes(pb::PrefixQuery {
                directory_bucket: directory_bucket.into(),
                prefixes,
            })),
        });
        let r = self.inner.get_status(req).await;
        self.noted(r).await
    }

    /// Ends the leases of `prefixes` now and deletes their cached objects,
    /// except those another live lease still covers (unless `force`).
    pub async fn evict(
        &mut self,
        directory_bucket: impl Into<String>,
        prefixes: Vec<String>,
        force: bool,
    ) -> Result<pb::EvictResponse, ClientError> {
        let req = self.request(pb::EvictRequest {
            directory_bucket: directory_bucket.into(),
            prefixes,
            force,
        });
        let r = self.inner.evict(req).await;
        self.noted(r).await
    }
}

/// Reads a progress stream to its final message, noting the operation id
/// as soon as it is known.
async fn follow(
    stream: Result<tonic::Response<tonic::Streaming<pb::WarmProgress>>, tonic::Status>,
    operation: &mut Option<String>,
    on_progress: &mut impl FnMut(&Progress),
) -> Result<WarmReport, ClientError> {
    let mut stream = stream?.into_inner();
    while let Some(p) = stream.message().await? {
        if operation.is_none() && !p.operation_id.is_empty() {
            *operation = Some(p.operation_id.clone());
        }
        let progress = Progress::from(p);
        on_progress(&progress);
        if progress.is_final() {
            return Ok(WarmReport::from_final(progress.proto().clone()));
        }
    }
    Err(ClientError::StreamEnded(
        operation.clone().unwrap_or_default(),
    ))
}
