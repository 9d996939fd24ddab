//! The tonic service: turns wire requests into validated specs, hands them to
//! the domain, and streams progress back.

mod audit;
mod convert;
mod dry_run;
mod error;

use std::pin::Pin;
use std::sync::Arc;

use expresscache::proto::v1 as pb;
use expresscache::proto::v1::cache_service_server::CacheService;
use expresscache::request::{ListFilter, ListSpec};
use expresscache::{EvictSpec, Limits, StatusQuery, WarmSpec};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub use error::ApiError;

use tracing::Instrument;

use crate::auth::Principal;
use crate::core::clock::Clock;
use crate::core::operation::OperationRecord;
use crate::evict::Evictor;
use crate::fleet::{FeedError, Operations, Subscription};
use crate::index::{CacheIndex, OpFilter};
use crate::policy::Policy;
use crate::store::{BucketChecks, ObjectStore};

/// The `expresscache.v1.CacheService` implementation.
#[derive(Debug)]
pub struct Api {
    store: Arc<dyn ObjectStore>,
    index: Arc<dyn CacheIndex>,
    ops: Arc<Operations>,
    evictor: Arc<Evictor>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// Cached entries one GetStatus call counts at most.
    status_count_limit: u64,
    /// Largest request message handled (tonic's own limit, above it, only
    /// guards memory).
    max_request_size: u64,
    /// Who may do what; `None`: single-tenant, everyone may do everything.
    policy: Option<Arc<Policy>>,
    /// Buckets found to exist a moment ago.
    buckets_seen: BucketChecks,
    /// Prices for dry runs' estimates.
    prices: Arc<crate::pricing::PriceTable>,
    /// Places for dry runs running at once.
    dry_runs: Arc<tokio::sync::Semaphore>,
}

/// How long a source bucket found to exist is not checked again.
const SOURCE_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// The same for a directory bucket: about one warm's time.
const DESTINATION_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl Api {
    pub fn new(ops: Arc<Operations>, evictor: Arc<Evictor>, limits: Limits) -> Self {
        Self {
            store: evictor.store.clone(),
            index: evictor.index.clone(),
            clock: Arc::clone(&evictor.clock),
            ops,
            evictor,
            limits,
            status_count_limit: 1_000_000,
            max_request_size: 2 * 1024 * 1024,
            policy: None,
            buckets_seen: BucketChecks::default(),
            prices: Arc::default(),
            dry_runs: Arc::new(tokio::sync::Semaphore::new(dry_run::MAX_DRY_RUNS)),
        }
    }

    /// Prices dry runs by `prices`.
    #[must_use]
    pub fn with_prices(mut self, prices: crate::pricing::PriceTable) -> Self {
        self.prices = Arc::new(prices);
        self
    }

    /// Checks every call against `policy`.
    #[must_use]
    pub fn with_policy(mut self, policy: Option<Arc<Policy>>) -> Self {
        self.policy = policy;
        self
    }

    /// Whether `who` may see (watch, cancel, list, ask about) `op`: its
    /// own, or anyone's if the policy says so (or there is none).
    fn may_see(&self, who: &Principal, op: &OperationRecord) -> bool {
        match &self.policy {
            None => true,
            Some(p) => {
                p.sees_all_operations(who)
                    || op
                        .owner
                        .as_deref()
                        .unwrap_or(Principal::anonymous().0.as_str())
                        == who.0
            }
        }
    }

    /// The operation `id` if `who` may see it; NOT_FOUND otherwise (an
    /// operation of someone else is not admitted to exist).
    async fn visible(&self, who: &Principal, id: String) -> Result<OperationRecord, ApiError> {
        match self.ops.status(&id).await? {
            Some(op) if self.may_see(who, &op) => Ok(op),
            _ => Err(ApiError::OperationNotFound(id)),
        }
    }

    /// Counts at most `n` cached entries per GetStatus call.
    #[must_use]
    pub fn with_status_count_limit(mut self, n: u64) -> Self {
        self.status_count_limit = n.max(1);
        self
    }

    /// Refuses requests larger than `bytes`.
    #[must_use]
    pub fn with_max_request_size(mut self, bytes: u64) -> Self {
        self.max_request_size = bytes;
        self
    }

    /// RESOURCE_EXHAUSTED for a request above the size limit: precise, and
    /// waiting does not help (no retry hint).
    fn check_size(&self, request: &impl prost::Message) -> Result<(), Status> {
        let size = request.encoded_len() as u64;
        if size <= self.max_request_size {
            return Ok(());
        }
        let mut details = tonic_types::ErrorDetails::new();
        details.set_error_info(
            "REQUEST_TOO_LARGE",
            "expresscache",
            [
                ("size".to_owned(), size.to_string()),
                ("limit".to_owned(), self.max_request_size.to_string()),
            ],
        );
        Err(<Status as tonic_types::StatusExt>::with_error_details(
            tonic::Code::ResourceExhausted,
            format!(
                "the request is {size} bytes; this server accepts at most {} (--max-request-size)",
                self.max_request_size
            ),
            details,
        ))
    }

    /// Checks that `bucket` exists and is reachable, unless it was found
    /// so a moment ago: a source within [`SOURCE_CHECK_TTL`] (one deleted
    /// meanwhile still fails the warm, at its listing); a directory bucket
    /// only within [`DESTINATION_CHECK_TTL`], since a warm whose objects
    /// are all hits sends it nothing.
    async fn check_bucket(&self, field: &'static str, bucket: &str) -> Result<(), ApiError> {
        let ttl = if field == "directory_bucket" {
            DESTINATION_CHECK_TTL
        } else {
            SOURCE_CHECK_TTL
        };
        self.buckets_seen
            .check(self.store.as_ref(), bucket, ttl)
            .await
            .map_err(|source| ApiError::Bucket {
                field,
                bucket: bucket.to_owned(),
                source,
            })
    }

    async fn warm(
        &self,
        who: &Principal,
        req: pb::WarmCacheRequest,
    ) -> Result<Subscription, ApiError> {
        let spec = WarmSpec::parse(&req, &self.limits)?;
        if spec.batch_operations && self.ops.warmer().batch.is_none() {
            return Err(ApiError::BatchNotConfigured);
        }
        if let Some(p) = &self.policy {
            p.check_warm(who, &spec)
                .map_err(|d| ApiError::Denied(who.clone(), d))?;
        }
        self.check_bucket("bucket", spec.source.as_str()).await?;
        self.check_bucket("directory_bucket", spec.directory_bucket.as_str())
            .await?;
        let owner = (*who != Principal::anonymous()).then(|| who.0.clone());
        Ok(self.ops.submit(spec, owner).await?)
    }

    /// This server's clock against S3's, and whether it holds off
    /// clock-judged work because of it.
    fn clock(&self) -> pb::ServerClock {
        let skew = crate::skew::global();
        pb::ServerClock {
            offset: skew.offset_ms().map(|ms| prost_types::Duration {
                seconds: ms / 1000,
                nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
            }),
            refusing: skew.check(self.ops.skew_margin()).err().unwrap_or_default(),
        }
    }

    async fn status(
        &self,
        who: &Principal,
        req: pb::GetStatusRequest,
    ) -> Result<pb::GetStatusResponse, ApiError> {
        match StatusQuery::parse(&req, &self.limits)? {
            StatusQuery::Operation(id) => {
                let status = self.visible(who, id).await?;
                Ok(pb::GetStatusResponse {
                    operation: Some(convert::operation_status(status)),
                    prefixes: vec![],
                    clock: Some(self.clock()),
                })
            }
            StatusQuery::Prefixes {
                directory_bucket,
                prefixes,
            } => {
                if let Some(p) = &self.policy {
                    p.check_status(who, &directory_bucket, &prefixes)
                        .map_err(|d| ApiError::Denied(who.clone(), d))?;
                }
                let prefixes: Vec<&str> = prefixes.iter().map(|p| p.as_str()).collect();
                let reports = crate::status::prefixes(
                    self.index.as_ref(),
                    directory_bucket.as_str(),
                    &prefixes,
                    self.clock.now(),
                    self.status_count_limit,
                )
                .await?;
                let out = reports.into_iter().map(convert::prefix_status).collect();
                Ok(pb::GetStatusResponse {
                    operation: None,
                    prefixes: out,
                    clock: Some(self.clock()),
                })
            }
        }
    }
}

/// The caller the authentication layer named (anonymous without one, as
/// in tests that call the service directly).
fn caller<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous)
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::WarmProgress, Status>> + Send>>;

/// An operation's feed as the progress stream of one call. If the caller
/// goes away the operation carries on; a draining server ends the stream
/// with UNAVAILABLE so the caller reattaches elsewhere.
fn forward(sub: Subscription, ops: &Arc<Operations>) -> ProgressStream {
    Box::pin(ops.feed(sub).map(|item| {
        item.map(convert::progress).map_err(|e| match e {
            FeedError::Draining => Status::unavailable(e.to_string()),
            FeedError::Vanished(_) => Status::internal(e.to_string()),
            FeedError::Index(e) => Status::from(ApiError::from(e)),
        })
    }))
}

#[tonic::async_trait]
impl CacheService for Api {
    type WarmCacheStream = ProgressStream;

    async fn warm_cache(
        &self,
        request: Request<pb::WarmCacheRequest>,
    ) -> Result<Response<Self::WarmCacheStream>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        if req.dry_run {
            // Nothing changes: no audit line, no operation.
            self.check_size(&req)?;
            return Ok(Response::new(self.dry_run(&who, &req).await?));
        }
        let entry = audit::Entry::warm(&who, &req);
        let result = async {
            self.check_size(&req)?;
            Ok::<_, Status>(self.warm(&who, req).await?)
        }
        .await;
        let id = match &result {
            Ok(sub) => sub.borrow().operation_id.clone(),
            Err(_) => String::new(),
        };
        entry.finish(&id, &result);
        Ok(Response::new(forward(result?, &self.ops)))
    }

    type WatchOperationStream = ProgressStream;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let who = caller(&request);
        let id = expresscache::request::parse_operation_id(
            "operation_id",
            &request.into_inner().operation_id,
        )
        .map_err(ApiError::from)?;
        if self.policy.is_some() {
            self.visible(&who, id.clone()).await?;
        }
        let sub = self
            .ops
            .watch(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::OperationNotFound(id))?;
        Ok(Response::new(forward(sub, &self.ops)))
    }

    async fn cancel_operation(
        &self,
        request: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::OperationStatus>, Status> {
        let who = caller(&request);
        let raw = request.into_inner().operation_id;
        let entry = audit::Entry::cancel(&who);
        let result = async {
            let id = expresscache::request::parse_operation_id("operation_id", &raw)
                .map_err(ApiError::from)?;
            if let Some(policy) = &self.policy {
                let op = self.visible(&who, id.clone()).await?;
                let own = op.owner.as_deref().unwrap_or(Principal::anonymous().0.as_str()) == who.0;
                if !own && !policy.may_cancel_others(&who) {
                    return Err(ApiError::Denied(
                        who.clone(),
                        crate::policy::Denial {
                            reason: "CANCEL_NOT_ALLOWED",
                            field: "operation_id",
                            message: format!(
                                "principal {:?} may not cancel another principal's operation (may_cancel_others is not set)",
                                who.0
                            ),
                        },
                    )
                    .into());
                }
            }
            let status = self
                .ops
                .cancel(&id)
                .await
                .map_err(ApiError::from)?
                .ok_or(ApiError::OperationNotFound(id))?;
            Ok::<_, Status>(convert::operation_status(status))
        }
        .await;
        entry.finish(&raw, &result);
        Ok(Response::new(result?))
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let who = caller(&request);
        let spec = ListSpec::parse(&request.into_inner()).map_err(ApiError::from)?;
        let filter = match spec.filter {
            ListFilter::All => OpFilter::All,
            ListFilter::Running => OpFilter::Running,
            ListFilter::Finished => OpFilter::Finished,
        };
        // Others' operations are left out; reading on (within a bound) so
        // a page is not empty while the caller's own lie further back.
        const MAX_SCANNED_PAGES: usize = 20;
        let mut operations = Vec::with_capacity(spec.page_size);
        let mut after = spec.after;
        let mut next = None;
        for _ in 0..MAX_SCANNED_PAGES {
            let want = spec.page_size - operations.len();
            let (page, more) = self
                .ops
                .list(filter, after.take(), want)
                .await
                .map_err(ApiError::from)?;
            operations.extend(page.into_iter().filter(|op| self.may_see(&who, op)));
            next = more;
            if operations.len() >= spec.page_size || next.is_none() {
                break;
            }
            after.clone_from(&next);
        }
        Ok(Response::new(pb::ListOperationsResponse {
            operations: operations
                .into_iter()
                .map(convert::operation_status)
                .collect(),
            // Continues after the last operation read, shown or not.
            next_page_token: next
                .map(|(t, id)| expresscache::request::encode_page_token(t, &id))
                .unwrap_or_default(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        self.check_size(&req)?;
        Ok(Response::new(self.status(&who, req).await?))
    }

    async fn evict(
        &self,
        request: Request<pb::EvictRequest>,
    ) -> Result<Response<pb::EvictResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let entry = audit::Entry::evict(&who, &req);
        let result = self.evict_now(&who, &req).await;
        entry.finish("", &result);
        Ok(Response::new(result?))
    }
}

impl Api {
    async fn evict_now(
        &self,
        who: &Principal,
        req: &pb::EvictRequest,
    ) -> Result<pb::EvictResponse, Status> {
        self.check_size(req)?;
        let spec = EvictSpec::parse(req, &self.limits).map_err(ApiError::from)?;
        if let Some(p) = &self.policy {
            p.check_evict(who, &spec)
                .map_err(|d| ApiError::Denied(who.clone(), d))?;
        }
        self.check_bucket("directory_bucket", spec.directory_bucket.as_str())
            .await?;
        // Detached from the call: a client that goes away mid-eviction must
        // not stop it between a delete and its record (the task runs to
        // the end; the caller just stops waiting for the answer).
        let evictor = Arc::clone(&self.evictor);
        let task = tokio::spawn(
            async move {
                let evicted = evictor.evict(&spec).await;
                crate::evict::export_evict(&evicted);
                evicted.map(|r| (spec, r))
            }
            .in_current_span(),
        );
        let (spec, report) = task
            .await
            .map_err(|e| Status::internal(format!("eviction task failed: {e}")))?
            .map_err(ApiError::from)?;
        let resp = convert::evict_response(report);
        tracing::info!(directory_bucket = %spec.directory_bucket, force = spec.force, deleted = resp.objects_deleted, kept = resp.objects_kept, failed = resp.failures.len() as u64 + resp.failures_omitted, "evicted");
        Ok(resp)
    }
}
