//! An HTTP/1.1 fault-injection proxy for tests: it sits between an AWS
//! client for S3 or DynamoDB (the AWS SDK in a test, our in-process server,
//! or the real server binary started with `AWS_ENDPOINT_URL=<proxy
//! endpoint>`) and moto, forwards every request to the upstream, and injects
//! [`Fault`]s by [`Rule`].
//!
//! Faults at the HTTP layer reach parts of the system that a store-level
//! fault injector cannot: the SDK's own error classification, retries,
//! timeouts and connection pool, and effects that were applied upstream while
//! the reply was lost. For DynamoDB it also plays what moto never does:
//! throttles, including a per-item write rate limit
//! ([`FaultProxy::limit_item_writes`]).
//!
//! S3 requests are matched path-style (bucket = first path segment), which
//! is what the SDK sends to an IP-address endpoint such as the proxy's;
//! DynamoDB calls by their `x-amz-target` operation and the tables in their
//! JSON body. Bodies are buffered in memory: objects in tests are small.

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

mod copy_cost;
mod dynamo;
mod virtual_parts;

pub use copy_cost::{CopyCharges, CopyRates};
pub use dynamo::DEFAULT_KEY_ATTRIBUTES;

/// Continuation tokens minted by [`Fault::EmptyTruncatedPage`] start with this,
/// so the proxy recognises them on the next request and restores the original.
const TOKEN_PREFIX: &str = "faultproxy.";

/// The message of every injected S3 error, so a failure in a test log points
/// at the proxy rather than at moto.
const INJECTED_MESSAGE: &str = "injected by FaultProxy";

/// Which requests a [`Rule`] (or [`FaultProxy::count`]) applies to: every
/// condition that is set must hold.
///
/// The named S3 constructors match one S3 operation each. For a directory
/// bucket (name ending in `--x-s3`) the SDK first calls CreateSession
/// (`GET /bucket?session`); no named constructor except
/// [`Match::create_session`] matches that, so a rule on e.g.
/// [`Match::list_objects`] faults the listing, not the session it needs.
///
/// [`Match::dynamo`], [`Match::dynamo_writes`] and [`Match::dynamo_any`]
/// match DynamoDB calls (`POST /` with `x-amz-target:
/// DynamoDB_20120810.<Operation>`), optionally on one table
/// ([`Match::table`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    /// The HTTP method, if it matters.
    pub method: Option<Method>,
    /// Query parameters (by name) that must be present.
    pub query_has: Vec<String>,
    /// Query parameters (by name) that must be absent.
    pub not_query: Vec<String>,
    /// Request headers (by name, lowercase) that must be present.
    pub header: Vec<String>,
    /// Request headers (by name, lowercase) that must be absent.
    pub not_header: Vec<String>,
    /// The bucket (first path segment), if it matters.
    pub bucket: Option<String>,
    /// Whether the path must name an object key after the bucket
    /// (`Some(true)`), must not (`Some(false)`), or either (`None`).
    pub key: Option<bool>,
    /// If set, the request must be a DynamoDB call of one of these
    /// operations (the `x-amz-target` after its last dot), or of any
    /// operation if the list is empty.
    pub dynamo: Option<Vec<String>>,
    /// If set, the request must be a DynamoDB call that names this table
    /// (its `TableName`, or that of any item of a transaction or batch).
    pub table: Option<String>,
    /// If set, the request must have been signed after this time, by its
    /// SigV4 `x-amz-date` (whole seconds, so a request signed within the
    /// second before it does not match). Tells a request a paused process
    /// built after it woke from one it had built before it was paused and
    /// only sent on waking (no check in the process can stop that one).
    pub signed_after: Option<std::time::SystemTime>,
}

impl Match {
    /// Every request, including the SDK's CreateSession calls for directory
    /// buckets.
    pub fn any() -> Self {
        Self::default()
    }

    /// CopyObject: `PUT /bucket/key` with `x-amz-copy-source` and no
    /// `partNumber` (which would make it UploadPartCopy).
    pub fn copy_object() -> Self {
        Self::on(Method::PUT)
            .with_key(true)
            .with_header("x-amz-copy-source")
            .without_query("partNumber")
    }

    /// UploadPartCopy: `PUT /bucket/key?partNumber=..&uploadId=..` with
    /// `x-amz-copy-source`.
    pub fn upload_part_copy() -> Self {
        Self::on(Method::PUT)
            .with_key(true)
            .with_header("x-amz-copy-source")
            .with_query("partNumber")
    }

    /// PutObject: `PUT /bucket/key` without `x-amz-copy-source` or
    /// `partNumber`.
    pub fn put_object() -> Self {
        Self::on(Method::PUT)
            .with_key(true)
            .without_header("x-amz-copy-source")
            .without_query("partNumber")
    }

    /// GetObject: `GET /bucket/key` (not a multipart-upload listing).
    pub fn get_object() -> Self {
        Self::on(Method::GET)
            .with_key(true)
            .without_query("uploadId")
    }

    /// HeadObject: `HEAD /bucket/key`.
    pub fn head_object() -> Self {
        Self::on(Method::HEAD).with_key(true)
    }

    /// DeleteObjects: `POST /bucket?delete`.
    pub fn delete_objects() -> Self {
        Self::on(Method::POST).with_key(false).with_query("delete")
    }

    /// ListObjectsV2: `GET /bucket?list-type=2`.
    pub fn list_objects() -> Self {
        Self::on(Method::GET)
            .with_key(false)
            .with_query("list-type")
    }

    /// HeadBucket: `HEAD /bucket` with no key.
    pub fn head_bucket() -> Self {
        Self::on(Method::HEAD).with_key(false)
    }

    /// CreateMultipartUpload: `POST /bucket/key?uploads`.
    pub fn create_multipart_upload() -> Self {
        Self::on(Method::POST).with_key(true).with_query("uploads")
    }

    /// CompleteMultipartUpload: `POST /bucket/key?uploadId=..`.
    pub fn complete_multipart_upload() -> Self {
        Self::on(Method::POST).with_key(true).with_query("uploadId")
    }

    /// AbortMultipartUpload: `DELETE /bucket/key?uploadId=..`.
    pub fn abort_multipart_upload() -> Self {
        Self::on(Method::DELETE)
            .with_key(true)
            .with_query("uploadId")
    }

    /// CreateSession: `GET /bucket?session`, which the SDK sends before
    /// talking to a directory bucket (and again when the session expires).
    pub fn create_session() -> Self {
        Self::on(Method::GET).with_key(false).with_query("session")
    }

    /// A DynamoDB call of operation `op`, e.g. `"UpdateItem"` (header
    /// `x-amz-target` ends with `.{op}`).
    pub fn dynamo(op: impl Into<String>) -> Self {
        Self {
            dynamo: Some(vec![op.into()]),
            ..Self::default()
        }
    }

    /// A DynamoDB call that writes items: UpdateItem, PutItem, DeleteItem,
    /// TransactWriteItems or BatchWriteItem.
    pub fn dynamo_writes() -> Self {
        Self {
            dynamo: Some(dynamo::WRITE_OPS.iter().map(|&op| op.to_owned()).collect()),
            ..Self::default()
        }
    }

    /// Any DynamoDB call.
    pub fn dynamo_any() -> Self {
        Self {
            dynamo: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Restricts to DynamoDB calls that name table `name` (top-level
    /// `TableName`, or the table of any transact or batch item).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Some(name.into());
        self
    }

    /// Any request with this HTTP method.
    pub fn on(method: Method) -> Self {
        Self {
            method: Some(method),
            ..Self::default()
        }
    }

    /// Restricts to requests on bucket `name` (path-style: first path
    /// segment).
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.bucket = Some(name.into());
        self
    }

    /// Also requires query parameter `name`.
    pub fn with_query(mut self, name: impl Into<String>) -> Self {
        self.query_has.push(name.into());
        self
    }

    /// Also requires the absence of query parameter `name`.
    pub fn without_query(mut self, name: impl Into<String>) -> Self {
        self.not_query.push(name.into());
        self
    }

    /// Also requires request header `name`.
    pub fn with_header(mut self, name: impl Into<String>) -> Self {
        self.header.push(name.into().to_ascii_lowercase());
        self
    }

    /// Also requires that the path names (or does not name) an object key.
    pub fn with_key(mut self, key: bool) -> Self {
        self.key = Some(key);
        self
    }

    /// Also requires the absence of request header `name`.
    pub fn without_header(mut self, name: impl Into<String>) -> Self {
        self.not_header.push(name.into().to_ascii_lowercase());
        self
    }

    /// Also requires a SigV4 signing time (`x-amz-date`) after `t`.
    pub fn signed_after(mut self, t: std::time::SystemTime) -> Self {
        self.signed_after = Some(t);
        self
    }

    fn matches(&self, seen: &Seen) -> bool {
        self.method.as_ref().is_none_or(|m| *m == seen.method)
            && self.key.is_none_or(|k| k == seen.has_key)
            && self
                .bucket
                .as_ref()
                .is_none_or(|b| seen.bucket.as_deref() == Some(b.as_str()))
            && self.query_has.iter().all(|q| seen.has_query(q))
            && !self.not_query.iter().any(|q| seen.has_query(q))
            && self.header.iter().all(|h| seen.has_header(h))
            && !self.not_header.iter().any(|h| seen.has_header(h))
            && self.dynamo.as_ref().is_none_or(|ops| {
                seen.dynamo_op
                    .as_ref()
                    .is_some_and(|op| ops.is_empty() || ops.iter().any(|o| o == op))
            })
            && self
                .table
                .as_ref()
                .is_none_or(|t| seen.tables.iter().any(|s| s == t))
            && self
                .signed_after
                .is_none_or(|t| seen.signed.is_some_and(|s| s > t))
    }
}

/// What the proxy does to a request that a [`Rule`] picks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwards the request, waits for the whole upstream response, then
    /// closes the client's connection without sending a byte of it: the
    /// effect was applied, the reply lost. The client sees the connection
    /// close before any response.
    LoseReply,
    /// Never answers and does not forward: the connection stays open and idle
    /// until the client gives up (other connections are served as usual).
    Hang,
    /// For ListObjectsV2: answers 200 with a valid `ListBucketResult` that
    /// has no `<Contents>`, `<KeyCount>0</KeyCount>`,
    /// `<IsTruncated>true</IsTruncated>` and a `<NextContinuationToken>` that
    /// encodes the request's own continuation token (or its absence). A later
    /// request carrying such a token is forwarded with the original token
    /// restored (or the parameter removed), so the listing continues exactly
    /// where it was. Not forwarded.
    ///
    /// Each minted token is unique, so the SDK paginator's duplicate-token
    /// check does not stop a listing that gets several empty pages in a row.
    EmptyTruncatedPage,
    /// Answers `status` with an S3 XML error body
    /// (`<Error><Code>{code}</Code><Message>injected by FaultProxy</Message>
    /// <RequestId>..</RequestId></Error>`), e.g. 503 `SlowDown`, 500
    /// `InternalError`, 403 `AccessDenied`, 404 `NoSuchBucket`. Not forwarded.
    /// A status outside 100..=999 is sent as 500.
    Status {
        /// The HTTP status.
        status: u16,
        /// The S3 error code.
        code: String,
    },
    /// Sleeps this long, then forwards normally.
    Delay(Duration),
    /// Forwards normally, then moves the reply's `Date` header by this many
    /// seconds (negative: into the past): an endpoint whose clock differs
    /// from the client's.
    ShiftDate(i64),
    /// Forwards the request, waits for the whole upstream response, then
    /// answers 500 instead of it: DynamoDB's `InternalServerError` (JSON)
    /// for a DynamoDB call, S3's `InternalError` (XML) otherwise. The effect
    /// was applied; the client sees a server error and may retry.
    LoseReplyAs500,
    /// Answers `status` with a DynamoDB JSON error body
    /// (`{"__type":"com.amazonaws.dynamodb.v20120810#{error_type}",
    /// "message":"injected by FaultProxy"}`), e.g. 400
    /// `ProvisionedThroughputExceededException`, 400 `ThrottlingException`,
    /// 400 `RequestLimitExceeded`, 500 `InternalServerError`, 503
    /// `ServiceUnavailable`. Not forwarded. A status outside 100..=999 is
    /// sent as 500.
    Dynamo {
        /// The HTTP status.
        status: u16,
        /// The DynamoDB error type, without its namespace.
        error_type: String,
    },
    /// Forwards normally, then takes the refused item out of a DynamoDB
    /// ConditionalCheckFailedException (and out of each cancellation
    /// reason of a TransactionCanceledException): an endpoint that does not
    /// honour `ReturnValuesOnConditionCheckFailure` (DynamoDB Local before
    /// 2.0), where every refusal looks like one of a missing item.
    DropRefusedItem,
    /// Answers with the throttle DynamoDB sends for the call: for
    /// TransactWriteItems and TransactGetItems, 400
    /// `TransactionCanceledException` with one cancellation reason per
    /// TransactItem, `ThrottlingError` for the first and `None` for the
    /// rest; for any other request, 400
    /// `ProvisionedThroughputExceededException`. Not forwarded.
    DynamoThrottle,
    /// A TransactWriteItems of more items than this is refused as a whole,
    /// as DynamoDB Local 1.11 refuses more than 10 (400
    /// `ValidationException`, "... Member must have length less than or
    /// equal to N"). Any other call is forwarded.
    DynamoTransactionLimit(usize),
}

impl Fault {
    /// [`Fault::Status`] with `status` and `code`.
    pub fn status(status: u16, code: impl Into<String>) -> Self {
        Self::Status {
            status,
            code: code.into(),
        }
    }

    /// [`Fault::Dynamo`] with `status` and `error_type`, e.g.
    /// `Fault::dynamo(400, "ProvisionedThroughputExceededException")`.
    pub fn dynamo(status: u16, error_type: impl Into<String>) -> Self {
        Self::Dynamo {
            status,
            error_type: error_type.into(),
        }
    }
}

/// A reproducible pseudo-random share of requests (see [`Rule::share`]):
/// the same seed picks the same requests out of the same sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// The share in units of 2^-53 (2^53 = every request).
    threshold: u64,
    seed: u64,
}

impl Share {
    /// A share of `fraction` (clamped to 0..=1; NaN counts as 0) drawn
    /// from a generator seeded with `seed`.
    pub fn new(fraction: f64, seed: u64) -> Self {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        Self {
            // At most 2^53, which f64 holds exactly.
            threshold: (fraction * SHARE_ONE as f64) as u64,
            seed,
        }
    }

    /// The share, 0..=1.
    pub fn fraction(&self) -> f64 {
        self.threshold as f64 / SHARE_ONE as f64
    }

    /// The generator's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// A [`Share`] of 1.
const SHARE_ONE: u64 = 1 << 53;

/// The next number of the splitmix64 sequence at `state`.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fault to inject into matching requests.
///
/// Rules are checked in insertion order; the first one that applies (its
/// matcher matches, its every-n counter fires, its share draw picks the
/// request and its `times` is not used up) injects its fault, and later
/// rules do not see that request. At most one fault per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Which requests this rule considers.
    pub matcher: Match,
    /// What to do to a request it picks.
    pub fault: Fault,
    /// How many faults it injects at most; `None` = no limit.
    pub times: Option<u64>,
    /// Picks only every n-th matching request (1 = each; 0 counts as 1).
    pub every: u64,
    /// Lets this many matching requests through untouched first.
    pub skip: u64,
    /// Picks only a pseudo-random share of the requests the other
    /// conditions pick; `None` = all of them.
    pub share: Option<Share>,
}

impl Rule {
    /// Faults every matching request.
    pub fn always(matcher: Match, fault: Fault) -> Self {
        Self {
            matcher,
            fault,
            times: None,
            every: 1,
            skip: 0,
            share: None,
        }
    }

    /// Lets the first `n` matching requests through, then faults every
    /// later one.
    pub fn after(matcher: Match, fault: Fault, n: u64) -> Self {
        Self {
            skip: n,
            ..Self::always(matcher, fault)
        }
    }

    /// Faults the first `n` matching requests, then lets them through.
    pub fn times(matcher: Match, fault: Fault, n: u64) -> Self {
        Self {
            times: Some(n),
            ..Self::always(matcher, fault)
        }
    }

    /// Faults every `n`-th matching request (the n-th, 2n-th, ...).
    pub fn every(matcher: Match, fault: Fault, n: u64) -> Self {
        Self {
            every: n,
            ..Self::always(matcher, fault)
        }
    }

    /// Faults a pseudo-random `fraction` (0..=1) of matching requests, each
    /// independently, from a generator seeded with `seed`: the same
    /// sequence of matching requests gets the same faults on every run.
    pub fn share(matcher: Match, fault: Fault, fraction: f64, seed: u64) -> Self {
        Self {
            share: Some(Share::new(fraction, seed)),
            ..Self::always(matcher, fault)
        }
    }
}

/// A rule with its counters.
#[derive(Debug)]
struct Armed {
    rule: Rule,
    /// Matching requests this rule has considered (while not used up).
    matched: u64,
    /// Faults it has injected.
    fired: u64,
    /// The state of its share's generator.
    rng: u64,
}

impl Armed {
    /// Whether this rule faults `seen`, counting it either way.
    fn fires(&mut self, seen: &Seen) -> bool {
        if !self.rule.matcher.matches(seen) || self.rule.times.is_some_and(|t| self.fired >= t) {
            return false;
        }
        self.matched += 1;
        if self.matched <= self.rule.skip {
            return false;
        }
        if !(self.matched - self.rule.skip).is_multiple_of(self.rule.every.max(1)) {
            return false;
        }
        if let Some(share) = self.rule.share {
            // 53 random bits against the threshold in units of 2^-53.
            if splitmix64(&mut self.rng) >> 11 >= share.threshold {
                return false;
            }
        }
        self.fired += 1;
        true
    }
}

/// What the matchers look at in one request, kept for [`FaultProxy::count`].
#[derive(Debug)]
struct Seen {
    method: Method,
    bucket: Option<String>,
    has_key: bool,
    /// Query parameter names, percent-decoded.
    query: Vec<String>,
    /// Header names (lowercase, as `http` stores them).
    headers: Vec<String>,
    /// The operation, for a DynamoDB call.
    dynamo_op: Option<String>,
    /// The tables a DynamoDB call names.
    tables: Vec<String>,
    /// When the request was signed (its `x-amz-date`), if it says.
    signed: Option<std::time::SystemTime>,
}

/// A SigV4 `x-amz-date` (`20261205T153019Z`, ISO 8601 basic format) as a
/// time.
fn signing_time(basic: &str) -> Option<std::time::SystemTime> {
    let b = basic.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let extended = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &basic[0..4],
        &basic[4..6],
        &basic[6..8],
        &basic[9..11],
        &basic[11..13],
        &basic[13..15]
    );
    let t = aws_sdk_s3::primitives::DateTime::from_str(
        &extended,
        aws_sdk_s3::primitives::DateTimeFormat::DateTime,
    )
    .ok()?;
    std::time::SystemTime::try_from(t).ok()
}

impl Seen {
    fn of(parts: &hyper::http::request::Parts) -> Self {
        let path = parts.uri.path();
        let path = path.strip_prefix('/').unwrap_or(path);
        let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
        Self {
            method: parts.method.clone(),
            bucket: (!bucket.is_empty()).then(|| decode(bucket)),
            has_key: !key.is_empty(),
            query: query_pairs(parts.uri.query().unwrap_or(""))
                .map(|(name, _)| decode(name))
                .collect(),
            headers: parts
                .headers
                .keys()
                .map(|h| h.as_str().to_owned())
                .collect(),
            dynamo_op: None,
            tables: Vec::new(),
            signed: parts
                .headers
                .get("x-amz-date")
                .and_then(|v| v.to_str().ok())
                .and_then(signing_time),
        }
    }

    /// With what the matchers look at in DynamoDB call `call`.
    fn with_call(mut self, call: Option<&dynamo::Call>) -> Self {
        if let Some(call) = call {
            self.dynamo_op = Some(call.op.clone());
            self.tables = call.tables.clone();
        }
        self
    }

    fn has_query(&self, name: &str) -> bool {
        self.query.iter().any(|q| q == name)
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// The rules and the log of requests, behind one lock so that a request is
/// recorded and judged atomically; and the DynamoDB per-item bookkeeping.
#[derive(Debug, Default)]
struct State {
    rules: Vec<Armed>,
    seen: Vec<Seen>,
    /// DynamoDB calls by "operation first-table", counted as they come.
    dynamo_calls: std::collections::BTreeMap<String, u64>,
    gauges: Vec<(Match, Arc<Gauge>)>,
    dynamo: dynamo::DynamoState,
}

/// Requests of one kind in flight through the proxy (from arrival until
/// the answer is produced; a hung one stays in flight), and the most at
/// once: what a test reads to check how much load clients put on a bucket.
#[derive(Debug, Default)]
pub struct Gauge {
    current: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    /// The most requests in flight at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }
}

/// One request counted by a [`Gauge`] until dropped.
struct InFlight(Arc<Gauge>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the connection tasks share.
struct Shared {
    /// `scheme://authority` of the upstream, no trailing slash.
    upstream: String,
    /// The upstream's authority, sent as `Host`.
    authority: HeaderValue,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Mutex<State>,
    injected: AtomicU64,
    /// Refusals whose item [`Fault::DropRefusedItem`] took out.
    stripped: AtomicU64,
    oversized: AtomicU64,
    /// Numbers request ids and minted continuation tokens.
    seq: AtomicU64,
    /// What copies cost, once [`FaultProxy::charge_copies`] set it.
    copy_cost: std::sync::OnceLock<copy_cost::CopyCost>,
    /// Part copies answered here, once
    /// [`FaultProxy::virtualize_part_copies`] set it.
    virtual_parts: std::sync::OnceLock<virtual_parts::VirtualParts>,
    /// Forward the client's `Host` (an upstream that checks SigV4, such as
    /// garage, needs the one the client signed).
    keep_host: std::sync::atomic::AtomicBool,
}

/// An HTTP/1.1 proxy on 127.0.0.1 that forwards to an upstream S3 and
/// DynamoDB endpoint (moto) and injects faults by [`Rule`]. Stops (aborting
/// its connections) on drop.
pub struct FaultProxy {
    /// Where clients connect: `http://127.0.0.1:PORT`.
    pub endpoint: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint)
            .field("upstream", &self.shared.upstream)
            .field("injected", &self.injected())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream`
    /// (e.g. `http://127.0.0.1:5000`), with no rules.
    ///
    /// # Panics
    /// If `upstream` is not an `http://host:port` URL or no port is free.
    pub async fn start(upstream: &str) -> Self {
        let uri: Uri = upstream
            .parse()
            .unwrap_or_else(|e| panic!("bad upstream {upstream:?}: {e}"));
        assert_eq!(
            uri.scheme_str(),
            Some("http"),
            "upstream {upstream:?} must be plain http"
        );
        let authority = uri
            .authority()
            .unwrap_or_else(|| panic!("upstream {upstream:?} has no host"))
            .as_str()
            .to_owned();
        let mut builder = Client::builder(TokioExecutor::new());
        // A fresh upstream connection per request: moto may close idle
        // connections at any time, and a reused dead one would show up in a
        // test as a fault nobody injected.
        builder.pool_max_idle_per_host(0);
        let shared = Arc::new(Shared {
            upstream: format!("http://{authority}"),
            authority: HeaderValue::from_str(&authority).expect("authority is a header value"),
            client: builder.build(HttpConnector::new()),
            state: Mutex::new(State::default()),
            injected: AtomicU64::new(0),
            stripped: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            copy_cost: std::sync::OnceLock::new(),
            virtual_parts: std::sync::OnceLock::new(),
            keep_host: std::sync::atomic::AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Self {
            endpoint: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// Adds a rule after the existing ones.
    pub fn add(&self, rule: Rule) {
        let rng = rule.share.map_or(0, |s| s.seed());
        self.shared.lock().rules.push(Armed {
            rule,
            matched: 0,
            fired: 0,
            rng,
        });
    }

    /// Drops all rules; later requests pass through untouched.
    pub fn clear(&self) {
        self.shared.lock().rules.clear();
    }

    /// DynamoDB calls so far, by operation and the first table each names
    /// ("UpdateItem t-operations").
    pub fn dynamo_calls_by_table(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared.lock().dynamo_calls.clone()
    }

    /// How many requests matching `m` the proxy has received since it
    /// started, faulted or not.
    pub fn count(&self, m: &Match) -> u64 {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| m.matches(s))
            .count() as u64
    }

    /// Counts the requests matching `m` in flight from now on.
    pub fn track(&self, m: Match) -> Arc<Gauge> {
        let gauge = Arc::new(Gauge::default());
        self.shared.lock().gauges.push((m, Arc::clone(&gauge)));
        gauge
    }

    /// How many refusals [`Fault::DropRefusedItem`] took the item out of.
    pub fn stripped(&self) -> u64 {
        self.shared.stripped.load(Ordering::SeqCst)
    }

    /// How many transactions [`Fault::DynamoTransactionLimit`] refused.
    pub fn oversized_transactions(&self) -> u64 {
        self.shared.oversized.load(Ordering::SeqCst)
    }

    /// How many faults the proxy has injected so far (all rules, including
    /// cleared ones; not the throttles of [`FaultProxy::limit_item_writes`],
    /// which [`FaultProxy::item_throttles`] counts).
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Limits the writes to each DynamoDB item to `per_second` on average,
    /// with bursts of up to `burst` (at least 1), as DynamoDB throttles a
    /// hot item: a token bucket per (table, item key), starting full. Every
    /// item of a write call (UpdateItem, PutItem, DeleteItem, and each item
    /// of a TransactWriteItems, ConditionCheck included, or of a
    /// BatchWriteItem) takes a token; a call that any of its items' buckets
    /// cannot pay for takes none, is not forwarded, and is answered 400
    /// `ProvisionedThroughputExceededException`, or for a transaction
    /// `TransactionCanceledException` with `ThrottlingError` as the reason
    /// of each item that was short. Replaces an earlier limit (and its
    /// buckets); [`FaultProxy::clear`] leaves it in place.
    ///
    /// Rules are judged first: a request a rule answers by itself is not
    /// counted against the limit. An item is named by its table and `Key`;
    /// for a put, by the item's key attributes (see
    /// [`FaultProxy::set_key_attributes`]).
    pub fn limit_item_writes(&self, per_second: f64, burst: f64) {
        self.shared
            .lock()
            .dynamo
            .set_limit(Some((per_second, burst)));
    }

    /// Lifts the per-item write limit.
    pub fn unlimit_item_writes(&self) {
        self.shared.lock().dynamo.set_limit(None);
    }

    /// How many DynamoDB write calls the per-item write limit has refused.
    pub fn item_throttles(&self) -> u64 {
        self.shared.lock().dynamo.throttles()
    }

    /// The `n` DynamoDB items with the most writes forwarded upstream, most
    /// first (ties by name), with their counts (a lost reply's write
    /// counts; a throttled or faulted one does not). An item is named
    /// `"{table} {key}"`, the key as JSON with its attribute names sorted,
    /// e.g. `t {"pk":{"S":"a"},"sk":{"S":"b"}}`.
    pub fn hottest_items(&self, n: usize) -> Vec<(String, u64)> {
        self.shared.lock().dynamo.hottest(n)
    }

    /// The attribute names that make up an item's key in a put (which
    /// sends the whole item) on a table whose key schema the proxy has not
    /// seen in a CreateTable call; [`DEFAULT_KEY_ATTRIBUTES`] until set.
    /// A put item with none of them is named by all its attributes.
    pub fn set_key_attributes(&self, names: &[&str]) {
        self.shared
            .lock()
            .dynamo
            .set_key_attributes(names.iter().map(|&n| n.to_owned()).collect());
    }
}

impl FaultProxy {
    /// From now on, holds every CopyObject and UploadPartCopy for its bytes
    /// at `rates` before forwarding it: the benchmark's S3 that costs what
    /// S3 costs (see `copy_cost`). Set once; a second call is ignored.
    pub fn charge_copies(&self, rates: CopyRates) {
        let _ = self.shared.copy_cost.set(copy_cost::CopyCost::new(rates));
    }

    /// What [`FaultProxy::charge_copies`] has charged so far.
    pub fn copy_charges(&self) -> CopyCharges {
        self.shared
            .copy_cost
            .get()
            .map(copy_cost::CopyCost::charges)
            .unwrap_or_default()
    }

    /// From now on, answers UploadPartCopy here (after its charge, if
    /// copies are charged) and completes such an upload with one CopyObject
    /// of its source through `upstream` (a client of the upstream with the
    /// credentials it checks): see `virtual_parts` for why and when.
    pub fn virtualize_part_copies(&self, upstream: aws_sdk_s3::Client) {
        let _ = self
            .shared
            .virtual_parts
            .set(virtual_parts::VirtualParts::new(upstream));
    }

    /// Forwards the `Host` each client sent instead of the upstream's: for
    /// an upstream that checks signatures (garage), which cover `Host`.
    pub fn keep_client_host(&self) {
        self.shared.keep_host.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks' JoinSet, which aborts
        // them all when the task is dropped.
        self.task.abort();
    }
}

/// Accepts connections until aborted, serving each in its own task so that a
/// hung one blocks nothing else.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                conns.spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            // E.g. out of file descriptors: back off rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Serves one client connection (keep-alive: any number of requests) until
/// the client closes it or a [`Fault::LoseReply`] kills it.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&kill), req))
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    // Dropping the connection closes the socket without writing the
    // response hyper is waiting for.
    tokio::select! {
        _ = conn => {}
        () = kill.notified() => {}
    }
}

/// Handles one request: records it, picks a fault, and answers.
async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the whole body first, whatever the fault: the connection can only
    // be reused once it is consumed, and forwarding needs it anyway.
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, format!("fault proxy: {e}"))),
    };
    let call = dynamo::Call::parse(&parts.headers, &body);
    let call = call.as_ref();
    let (fault, _in_flight) = shared.judge(Seen::of(&parts).with_call(call), call);
    if let Some(fault) = &fault {
        tracing::info!(
            ?fault,
            method = %parts.method,
            uri = %parts.uri,
            dynamo_op = call.map(|c| c.op.as_str()),
            "fault proxy injecting"
        );
    }
    let path_and_query = restore_token(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    match fault {
        None => Ok(shared.pass(parts, &path_and_query, body, call).await),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(shared.pass(parts, &path_and_query, body, call).await)
        }
        Some(Fault::DropRefusedItem) => {
            let resp = shared.pass(parts, &path_and_query, body, call).await;
            let (resp, stripped) = dynamo::drop_refused_item(resp).await;
            if stripped {
                shared.stripped.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp)
        }
        Some(Fault::ShiftDate(secs)) => {
            let mut resp = shared.pass(parts, &path_and_query, body, call).await;
            shift_date(resp.headers_mut(), secs);
            Ok(resp)
        }
        Some(Fault::Status { status, code }) => Ok(shared.s3_error(status, &code)),
        Some(Fault::Dynamo { status, error_type }) => Ok(dynamo::error(
            status,
            &error_type,
            INJECTED_MESSAGE,
            shared.request_id(),
        )),
        Some(Fault::DynamoThrottle) => Ok(dynamo::throttle(
            call,
            None,
            INJECTED_MESSAGE,
            shared.request_id(),
        )),
        Some(Fault::DynamoTransactionLimit(limit)) => {
            match call.and_then(dynamo::Call::write_transaction_items) {
                Some(n) if n > limit => Ok({
                    shared.oversized.fetch_add(1, Ordering::SeqCst);
                    dynamo::error(
                        400,
                        "ValidationException",
                        &format!(
                        "1 validation error detected: Value '[...]' at 'transactItems' failed to \
                         satisfy constraint: Member must have length less than or equal to {limit}"
                    ),
                        shared.request_id(),
                    )
                }),
                _ => Ok(shared.pass(parts, &path_and_query, body, call).await),
            }
        }
        Some(Fault::EmptyTruncatedPage) => Ok(shared.empty_page(&parts, &path_and_query)),
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::LoseReply) => {
            let _applied = shared.pass(parts, &path_and_query, body, call).await;
            kill.notify_one();
            std::future::pending().await
        }
        Some(Fault::LoseReplyAs500) => {
            let _applied = shared.pass(parts, &path_and_query, body, call).await;
            Ok(if call.is_some() {
                dynamo::error(
                    500,
                    "InternalServerError",
                    INJECTED_MESSAGE,
                    shared.request_id(),
                )
            } else {
                shared.s3_error(500, "InternalError")
            })
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `seen` (and what DynamoDB call `call` tells about its
    /// tables) and returns the fault of the first rule that fires, and the
    /// request's places in the gauges that track it.
    fn judge(&self, seen: Seen, call: Option<&dynamo::Call>) -> (Option<Fault>, Vec<InFlight>) {
        let mut state = self.lock();
        if let Some(call) = call {
            state.dynamo.learn(call);
        }
        if let Some(op) = &seen.dynamo_op {
            let table = seen.tables.first().map_or("", String::as_str);
            *state
                .dynamo_calls
                .entry(format!("{op} {table}"))
                .or_insert(0) += 1;
        }
        let fault = state
            .rules
            .iter_mut()
            .find_map(|r| r.fires(&seen).then(|| r.rule.fault.clone()));
        let in_flight = state
            .gauges
            .iter()
            .filter(|(m, _)| m.matches(&seen))
            .map(|(_, g)| g.enter())
            .collect();
        state.seen.push(seen);
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        (fault, in_flight)
    }

    fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// A request id for an injected answer.
    fn request_id(&self) -> String {
        format!("faultproxy-{}", self.next_id())
    }

    /// Forwards the request, unless it is a DynamoDB write that the
    /// per-item write limit refuses: that one is answered with a throttle.
    async fn pass(
        &self,
        parts: hyper::http::request::Parts,
        path_and_query: &str,
        body: Bytes,
        call: Option<&dynamo::Call>,
    ) -> Response<Full<Bytes>> {
        if let Some(call) = call {
            let admitted = self.lock().dynamo.admit(call, tokio::time::Instant::now());
            if let Err(short) = admitted {
                tracing::info!(op = %call.op, tables = ?call.tables, "fault proxy throttling a write over the per-item limit");
                return dynamo::throttle(
                    Some(call),
                    Some(short.as_slice()),
                    "injected by FaultProxy: per-item write limit",
                    self.request_id(),
                );
            }
        }
        let Some(cost) = self.copy_cost.get() else {
            return self.forward(parts, path_and_query, body).await;
        };
        cost.charge(&parts.method, &parts.headers).await;
        if let Some(v) = self.virtual_parts.get() {
            if let Some(answer) = v.intercept(&parts).await {
                return answer;
            }
        }
        let (method, request) = (parts.method.clone(), parts.headers.clone());
        let seen = Seen::of(&parts);
        let key = parts
            .uri
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .map(|(_, k)| decode(k));
        let query = parts.uri.query().unwrap_or("").to_owned();
        let resp = self.forward(parts, path_and_query, body).await;
        if resp.status().is_success() {
            let body = resp
                .body()
                .clone()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            cost.learn(
                &method,
                seen.bucket.as_deref(),
                key.as_deref().filter(|k| !k.is_empty()),
                &query,
                &request,
                resp.headers(),
                &body,
            );
        }
        resp
    }

    /// Sends the request to the upstream and returns its response, body
    /// buffered; an upstream failure becomes a 502.
    async fn forward(
        &self,
        mut parts: hyper::http::request::Parts,
        path_and_query: &str,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let head = parts.method == Method::HEAD;
        parts.uri = match format!("{}{path_and_query}", self.upstream).parse() {
            Ok(uri) => uri,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("fault proxy: {e}")),
        };
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::EXPECT);
        // The body is buffered now: hyper sets the length from it.
        parts.headers.remove(header::CONTENT_LENGTH);
        // moto does not check SigV4, so the signed Host need not survive;
        // an upstream that does is told so (keep_client_host).
        if !self.keep_host.load(Ordering::Relaxed) || !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, self.authority.clone());
        }
        let resp = match self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("fault proxy upstream: {e}"),
                )
            }
        };
        let (mut parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("fault proxy upstream: {e}"),
                )
            }
        };
        strip_hop_by_hop(&mut parts.headers);
        // A HEAD reply's length is the object's, not the (empty) body's; any
        // other reply's length is recomputed from the buffered body.
        if !head {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        parts.version = Version::HTTP_11;
        Response::from_parts(parts, Full::new(body))
    }

    /// An S3-style XML error response.
    fn s3_error(&self, status: u16, code: &str) -> Response<Full<Bytes>> {
        let id = self.request_id();
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code>\
             <Message>{INJECTED_MESSAGE}</Message><RequestId>{id}</RequestId></Error>",
            xml_escape(code)
        );
        let mut resp = xml_response(xml);
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Ok(id) = HeaderValue::try_from(id) {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-amz-request-id"), id);
        }
        resp
    }

    /// An empty, truncated ListObjectsV2 page whose next token resumes at
    /// `path_and_query`'s (restored) continuation token.
    fn empty_page(
        &self,
        parts: &hyper::http::request::Parts,
        path_and_query: &str,
    ) -> Response<Full<Bytes>> {
        let received = parts.uri.query().unwrap_or("");
        let restored = path_and_query.split_once('?').map_or("", |(_, q)| q);
        let next = mint_token(
            self.next_id(),
            query_value(restored, "continuation-token").as_deref(),
        );
        let bucket = Seen::of(parts).bucket.unwrap_or_default();
        let mut xml = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        let mut element = |name: &str, value: &str| {
            xml.push_str(&format!("<{name}>{}</{name}>", xml_escape(value)));
        };
        element("Name", &bucket);
        element(
            "Prefix",
            &query_value(received, "prefix").unwrap_or_default(),
        );
        if let Some(d) = query_value(received, "delimiter") {
            element("Delimiter", &d);
        }
        element(
            "MaxKeys",
            &query_value(received, "max-keys").unwrap_or_else(|| "1000".to_owned()),
        );
        element("KeyCount", "0");
        element("IsTruncated", "true");
        if let Some(t) = query_value(received, "continuation-token") {
            element("ContinuationToken", &t);
        }
        element("NextContinuationToken", &next);
        if let Some(s) = query_value(received, "start-after") {
            element("StartAfter", &s);
        }
        xml.push_str("</ListBucketResult>");
        xml_response(xml)
    }
}

/// Moves the `Date` header of `headers` by `secs` seconds (set to now,
/// moved, if there was none).
fn shift_date(headers: &mut HeaderMap, secs: i64) {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    let now = DateTime::from(std::time::SystemTime::now()).secs();
    let at = headers
        .get(header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok())
        .map_or(now, |d| d.secs());
    let shifted = DateTime::from_secs(at.saturating_add(secs));
    if let Some(v) = shifted
        .fmt(DateTimeFormat::HttpDate)
        .ok()
        .and_then(|s| HeaderValue::from_str(&s).ok())
    {
        headers.insert(header::DATE, v);
    }
}

/// A 200 response with an XML body.
fn xml_response(xml: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(xml)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}

/// A plain-text response for the proxy's own failures.
fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp
}

/// Removes the headers that describe one hop's connection rather than the
/// message (RFC 9110 §7.6.1), including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The raw `(name, value)` pairs of a query string.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The percent-decoded value of query parameter `name`, if present.
fn query_value(query: &str, name: &str) -> Option<String> {
    query_pairs(query)
        .find(|(n, _)| decode(n) == name)
        .map(|(_, v)| decode(v))
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// A continuation token for [`Fault::EmptyTruncatedPage`]: unique by `nonce`,
/// carrying the original token (hex, so it survives any encoding) or its
/// absence.
fn mint_token(nonce: u64, original: Option<&str>) -> String {
    match original {
        None => format!("{TOKEN_PREFIX}{nonce}.n"),
        Some(t) => {
            let hex: String = t.bytes().map(|b| format!("{b:02x}")).collect();
            format!("{TOKEN_PREFIX}{nonce}.t{hex}")
        }
    }
}

/// The original token a [`mint_token`] token carries: `None` if `token` is
/// not one of ours, `Some(None)` if the original had no token.
fn unmint_token(token: &str) -> Option<Option<String>> {
    let (_, carried) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    if carried == "n" {
        return Some(None);
    }
    let hex = carried.strip_prefix('t')?.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok().map(Some)
}

/// `path_and_query` with a proxy-minted continuation token replaced by the
/// original one, or removed if there was none.
fn restore_token(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let mut pairs = Vec::new();
    for raw in query.split('&') {
        let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
        if decode(name) == "continuation-token" {
            if let Some(original) = unmint_token(&decode(value)) {
                if let Some(t) = original {
                    pairs.push(format!(
                        "continuation-token={}",
                        utf8_percent_encode(&t, NON_ALPHANUMERIC)
                    ));
                }
                continue;
            }
        }
        pairs.push(raw.to_owned());
    }
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The inverse of [`xml_escape`].
fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::signing_time;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_sigv4_date_reads_as_its_time() {
        assert_eq!(
            signing_time("20261205T153019Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_484_619))
        );
        assert_eq!(signing_time("2026-12-05T15:30:19Z"), None);
        assert_eq!(signing_time("20261205T153019"), None);
    }
}
