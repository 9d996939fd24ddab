//! The tests' fault proxy as a program, for benchmarks: put it between the
//! replicas and DynamoDB (AWS_ENDPOINT_URL_DYNAMODB) to enforce a per-item
//! write rate (DynamoDB's per-partition limit, scaled to what moto
//! serves), throttle or lose a share of calls, and count what the fleet
//! sent; or in front of an S3 server to make server-side copies cost what
//! S3's do (bench/large.sh): each CopyObject and UploadPartCopy is held for
//! its bytes at `--copy-request-mbps` (MB/s, one request) with all copies in
//! flight sharing `--copy-aggregate-mbps`. `--keep-host` forwards the
//! client's Host, for an upstream that checks signatures (garage);
//! `--virtual-part-copies` answers part copies itself and completes their
//! upload with one CopyObject upstream, signed with the AWS_* credentials
//! of the environment (garage hashes every byte of a part copy, a CPU cost
//! S3 does not have). Every half second it writes its counts as JSON to
//! `--stats`.
//!
//!   fault_proxy --upstream http://127.0.0.1:5000 \
//!     [--item-writes-per-second 25] [--throttle-share 0.25] \
//!     [--lose-write-share 0.15] [--copy-request-mbps 90 \
//!     --copy-aggregate-mbps 2000] [--keep-host] [--virtual-part-copies] \
//!     [--stats stats.json]
//!
//! Prints `listening http://127.0.0.1:PORT` once it listens.

use std::time::Duration;

use expresscache_server::testing::proxy::{CopyRates, Fault, FaultProxy, Match, Rule};

#[derive(Default)]
struct Args {
    upstream: String,
    item_writes: Option<f64>,
    throttle_share: f64,
    lose_share: f64,
    copy_request_mbps: Option<f64>,
    copy_aggregate_mbps: Option<f64>,
    keep_host: bool,
    virtual_part_copies: bool,
    stats: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--upstream" => a.upstream = value()?,
            "--item-writes-per-second" => a.item_writes = Some(number(value()?)?),
            "--throttle-share" => a.throttle_share = number(value()?)?,
            "--lose-write-share" => a.lose_share = number(value()?)?,
            "--copy-request-mbps" => a.copy_request_mbps = Some(number(value()?)?),
            "--copy-aggregate-mbps" => a.copy_aggregate_mbps = Some(number(value()?)?),
            "--keep-host" => a.keep_host = true,
            "--virtual-part-copies" => a.virtual_part_copies = true,
            "--stats" => a.stats = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.upstream.is_empty() {
        return Err("--upstream is required".into());
    }
    if a.copy_request_mbps.is_some() != a.copy_aggregate_mbps.is_some() {
        return Err("--copy-request-mbps and --copy-aggregate-mbps go together".into());
    }
    if [a.copy_request_mbps, a.copy_aggregate_mbps]
        .iter()
        .flatten()
        .any(|r| !(r.is_finite() && *r > 0.0))
    {
        return Err("copy rates must be positive MB/s".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a = args()?;
    let proxy = FaultProxy::start(&a.upstream).await;
    if a.keep_host {
        proxy.keep_client_host();
    }
    if a.virtual_part_copies {
        // The upstream's credentials from the standard environment.
        let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .endpoint_url(&a.upstream)
            .force_path_style(true)
            .build();
        proxy.virtualize_part_copies(aws_sdk_s3::Client::from_conf(conf));
    }
    if let (Some(one), Some(all)) = (a.copy_request_mbps, a.copy_aggregate_mbps) {
        proxy.charge_copies(CopyRates {
            per_request: one * 1e6,
            aggregate: all * 1e6,
        });
    }
    if let Some(rate) = a.item_writes {
        proxy.limit_item_writes(rate, rate);
    }
    if a.throttle_share > 0.0 {
        proxy.add(Rule::share(
            Match::dynamo_any(),
            Fault::DynamoThrottle,
            a.throttle_share,
            1,
        ));
    }
    if a.lose_share > 0.0 {
        proxy.add(Rule::share(
            Match::dynamo_writes(),
            Fault::LoseReplyAs500,
            a.lose_share,
            2,
        ));
    }
    println!("listening {}", proxy.endpoint);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(path) = &a.stats {
            let hottest = proxy.hottest_items(1);
            let copies = proxy.copy_charges();
            let stats = serde_json::json!({
                "dynamo_calls": proxy.count(&Match::dynamo_any()),
                "dynamo_writes": proxy.count(&Match::dynamo_writes()),
                "dynamo_by_call": proxy.dynamo_calls_by_table(),
                "item_throttles": proxy.item_throttles(),
                "injected": proxy.injected(),
                "hottest_item_writes": hottest.first().map_or(0, |(_, n)| *n),
                "hottest_item": hottest.first().map(|(k, _)| k.clone()),
                "copy_requests": copies.requests,
                "copy_bytes": copies.bytes,
                "copy_uncharged": copies.uncharged,
            });
            let tmp = format!("{path}.tmp");
            if std::fs::write(&tmp, stats.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}
