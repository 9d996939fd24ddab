//! Prometheus metrics: every name the server exports, what it means, and
//! the plain-HTTP `/metrics` endpoint (`--metrics-listen`).
//!
//! Built on the `metrics` facade with `metrics-exporter-prometheus`: the
//! code that counts says `counter!(NAME)` where the event happens, without
//! a registry threaded through every layer, and with no recorder installed
//! (metrics off, unit tests) those calls cost nothing. The exporter renders
//! the text exposition format, including histograms with fixed buckets.
//!
//! Labels are bounded sets only: an outcome, an S3 or index operation
//! name, the index backend, a destination bucket. Never a key, a prefix or
//! an operation id.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use expresscache::Counters;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

pub const WARMS_STARTED: &str = "expresscache_warms_started_total";
pub const WARMS_FINISHED: &str = "expresscache_warms_finished_total";
pub const WARMS_JOINED: &str = "expresscache_warms_joined_total";
pub const WARMS_FRESH: &str = "expresscache_warms_fresh_total";
pub const OBJECTS_LISTED: &str = "expresscache_objects_listed_total";
pub const OBJECTS_HIT: &str = "expresscache_objects_hit_total";
pub const OBJECTS_COPIED: &str = "expresscache_objects_copied_total";
pub const OBJECTS_FAILED: &str = "expresscache_objects_failed_total";
pub const OBJECTS_SHARED: &str = "expresscache_objects_shared_total";
pub const BYTES_LISTED: &str = "expresscache_listed_bytes_total";
pub const BYTES_COPIED: &str = "expresscache_copied_bytes_total";
pub const COPY_RETRIES: &str = "expresscache_copy_retries_total";
pub const THROTTLE_EVENTS: &str = "expresscache_throttle_events_total";
pub const S3_REQUEST_DURATION: &str = "expresscache_s3_request_duration_seconds";
pub const S3_LIST_REQUESTS: &str = "expresscache_s3_list_requests_total";
pub const S3_REQUESTS_IN_FLIGHT: &str = "expresscache_s3_requests_in_flight";
pub const S3_CONCURRENCY_LIMIT: &str = "expresscache_s3_concurrency_limit";
pub const INDEX_REQUEST_DURATION: &str = "expresscache_index_request_duration_seconds";
pub const INDEX_ERRORS: &str = "expresscache_index_errors_total";
/// This replica's clock minus S3's, from the `Date` of S3's replies
/// (positive: ahead).
pub const CLOCK_SKEW: &str = "expresscache_clock_skew_seconds";
/// DynamoDB requests found busy (throttled, 5xx, no answer) and sent again
/// after a pause, by call.
pub const INDEX_BUSY: &str = "expresscache_index_busy_total";
/// The adaptive limit of DynamoDB requests this replica has in flight.
pub const INDEX_CONCURRENCY_LIMIT: &str = "expresscache_index_concurrency_limit";
pub const SWEEPS: &str = "expresscache_sweeps_total";
pub const SWEEP_LEASES_STUCK: &str = "expresscache_sweep_leases_stuck";
pub const SWEEP_LEASE_FAILURES: &str = "expresscache_sweep_lease_failures_total";
pub const OBJECTS_DELETED: &str = "expresscache_objects_deleted_total";
pub const DELETE_FAILURES: &str = "expresscache_delete_failures_total";
pub const EVICTIONS: &str = "expresscache_evictions_total";
pub const OPERATIONS_RUNNING: &str = "expresscache_operations_running";
pub const OPERATIONS_QUEUED: &str = "expresscache_operations_queued";

/// Histogram buckets (seconds) for S3 and index requests: from a local
/// SQLite write to a multi-gigabyte server-side copy.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Says what each metric means (the exposition's `# HELP` lines).
fn describe() {
    for &(kind, name, unit, help) in METRICS {
        match (kind, unit) {
            (Kind::Counter, Some(unit)) => describe_counter!(name, unit, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: its kind, name, unit and what `/metrics` says of it.
const METRICS: &[(Kind, &str, Option<Unit>, &str)] = &[
    (Kind::Counter, WARMS_STARTED, None, "Warms started or resumed on this replica (a request_id attach is not one)"),
    (Kind::Counter, WARMS_FINISHED, None, "Warms finished, by outcome: succeeded, partially_failed, failed, cancelled"),
    (Kind::Counter, WARMS_JOINED, None, "Joins of a running warm of the same data instead of listing again (a warm whose leader ended without an outcome joins again, and counts again)"),
    (Kind::Counter, S3_LIST_REQUESTS, None, "Source listing requests (ListObjectsV2 pages), each billed by S3"),
    (Kind::Counter, WARMS_FRESH, None, "Warms answered from a recent SUCCEEDED warm within their max_staleness, without listing"),
    (Kind::Counter, OBJECTS_LISTED, None, "Objects found under warmed prefixes in the source"),
    (Kind::Counter, OBJECTS_HIT, None, "Objects already cached and current: not copied"),
    (Kind::Counter, OBJECTS_COPIED, None, "Objects copied into directory buckets"),
    (Kind::Counter, OBJECTS_FAILED, None, "Objects a warm could not copy"),
    (Kind::Counter, OBJECTS_SHARED, None, "Objects another warm was copying: waited for, not copied again"),
    (Kind::Counter, BYTES_LISTED, Some(Unit::Bytes), "Bytes of the objects listed"),
    (Kind::Counter, BYTES_COPIED, Some(Unit::Bytes), "Bytes copied into directory buckets"),
    (Kind::Counter, COPY_RETRIES, None, "Copy requests retried after a retryable error"),
    (Kind::Counter, THROTTLE_EVENTS, None, "Of the retries, throttling answers (SlowDown, 429, 503, timeouts)"),
    (Kind::Histogram, S3_REQUEST_DURATION, Some(Unit::Seconds), "Duration of one attempt of a copy-path S3 request, by operation and outcome (ok, error)"),
    (Kind::Gauge, S3_REQUESTS_IN_FLIGHT, None, "Copy-path S3 requests in flight"),
    (Kind::Gauge, S3_CONCURRENCY_LIMIT, None, "The adaptive concurrency limit of requests to each destination bucket"),
    (Kind::Histogram, INDEX_REQUEST_DURATION, Some(Unit::Seconds), "Duration of one index call, by operation and backend (sqlite, dynamodb)"),
    (Kind::Counter, INDEX_ERRORS, None, "Index calls that failed, by operation and backend"),
    (Kind::Counter, SWEEPS, None, "Expiry sweeper passes, by outcome (ok, error)"),
    (Kind::Gauge, SWEEP_LEASES_STUCK, None, "Expired leases whose last sweep failed (retried with backoff)"),
    (Kind::Counter, SWEEP_LEASE_FAILURES, None, "Sweeps of one expired lease that failed"),
    (Kind::Counter, OBJECTS_DELETED, None, "Objects deleted from directory buckets, by reason (sweep, evict)"),
    (Kind::Counter, DELETE_FAILURES, None, "Objects that could not be deleted, by reason (sweep, evict)"),
    (Kind::Counter, EVICTIONS, None, "Evict calls, by outcome (ok, error)"),
    (Kind::Gauge, CLOCK_SKEW, Some(Unit::Seconds), "This replica's clock minus S3's (from the Date of S3's replies); beyond half of --clock-skew-margin it does not sweep, evict or take over"),
    (Kind::Counter, INDEX_BUSY, None, "DynamoDB requests found throttled, failing with 5xx or unanswered, and sent again after a pause, by call"),
    (Kind::Gauge, INDEX_CONCURRENCY_LIMIT, None, "The adaptive limit of DynamoDB requests this replica has in flight (renewals of runs and heartbeats pass it)"),
    (Kind::Gauge, OPERATIONS_RUNNING, None, "Warms running on this replica"),
    (Kind::Gauge, OPERATIONS_QUEUED, None, "Warms waiting for a running slot on this replica"),
];

/// The `/metrics` endpoint, serving until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    pub local_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Installs the process-wide Prometheus recorder and serves `/metrics` on
/// `addr`. Fails (rather than running blind) if the address cannot be
/// bound or a recorder is already installed.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    let local_addr = listener.local_addr()?;
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    // Gauges exist from the start (a scrape before the first warm shows
    // zeros, not missing series an alert cannot tell from a broken target).
    for gauge in [
        S3_REQUESTS_IN_FLIGHT,
        OPERATIONS_RUNNING,
        OPERATIONS_QUEUED,
        SWEEP_LEASES_STUCK,
    ] {
        metrics::gauge!(gauge).set(0.0);
    }
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            // Histograms drain their samples on upkeep; a scrape does it
            // too, this bounds memory between scrapes.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let server = tokio::spawn(accept(listener, handle));
    Ok(MetricsServer {
        local_addr,
        tasks: vec![upkeep, server],
    })
}

async fn accept(listener: TcpListener, handle: PrometheusHandle) {
    use hyper::service::service_fn;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &handle)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

fn respond<B>(
    req: &hyper::Request<B>,
    handle: &PrometheusHandle,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            hyper::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (&hyper::Method::GET, _) => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Exports a warm's counters as they grow: each call adds what changed
/// since the last, so the totals move while a long warm runs and a warm
/// resumed from a checkpoint does not count its earlier progress twice.
#[derive(Debug)]
pub struct CounterExport {
    last: Mutex<Counters>,
}

impl CounterExport {
    /// Starts from `counters`, already counted (by an earlier attempt).
    pub fn starting_at(counters: Counters) -> Self {
        Self {
            last: Mutex::new(counters),
        }
    }

    /// Takes `counters` as already counted (growth that was not work,
    /// e.g. a warm answered from another's result).
    pub fn skip_to(&self, counters: &Counters) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = *counters;
    }

    /// Adds the growth since the last call.
    pub fn export(&self, now: &Counters) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let pairs = [
            (OBJECTS_LISTED, now.objects_listed, last.objects_listed),
            (OBJECTS_HIT, now.objects_hit, last.objects_hit),
            (OBJECTS_COPIED, now.objects_copied, last.objects_copied),
            (OBJECTS_FAILED, now.objects_failed, last.objects_failed),
            (OBJECTS_SHARED, now.objects_shared, last.objects_shared),
            (BYTES_LISTED, now.bytes_listed, last.bytes_listed),
            (BYTES_COPIED, now.bytes_copied, last.bytes_copied),
            (COPY_RETRIES, now.copy_retries, last.copy_retries),
            (THROTTLE_EVENTS, now.throttle_events, last.throttle_events),
        ];
        for (name, now, before) in pairs {
            // Counters only grow; a value that went down (never expected)
            // is not subtracted.
            if now > before {
                metrics::counter!(name).increment(now - before);
            }
        }
        *last = *now;
    }
}
