//! The tests' fault proxy as a program, for benchmarks: put it between the
//! replicas and DynamoDB (AWS_ENDPOINT_URL_DYNAMODB) to enforce a per-item
//! write rate (DynamoDB's per-partition limit, scaled to what moto
//! serves), throttle or lose a share of calls, and count what the fleet
//! sent. Every half second it writes its counts as JSON to `--stats`.
//!
//!   fault_proxy --upstream http://127.0.0.1:5000 --port 0 \
//!     [--item-writes-per-second 25] [--throttle-share 0.25] \
//!     [--lose-write-share 0.15] [--stats stats.json]
//!
//! Prints `listening http://127.0.0.1:PORT` once it listens.

use std::time::Duration;

use expresscache_server::testing::proxy::{Fault, FaultProxy, Match, Rule};

#[derive(Default)]
struct Args {
    upstream: String,
    item_writes: Option<f64>,
    throttle_share: f64,
    lose_share: f64,
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
            "--stats" => a.stats = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.upstream.is_empty() {
        return Err("--upstream is required".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a = args()?;
    let proxy = FaultProxy::start(&a.upstream).await;
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
            let stats = serde_json::json!({
                "dynamo_calls": proxy.count(&Match::dynamo_any()),
                "dynamo_writes": proxy.count(&Match::dynamo_writes()),
                "item_throttles": proxy.item_throttles(),
                "injected": proxy.injected(),
                "hottest_item_writes": hottest.first().map_or(0, |(_, n)| *n),
                "hottest_item": hottest.first().map(|(k, _)| k.clone()),
            });
            let tmp = format!("{path}.tmp");
            if std::fs::write(&tmp, stats.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}
