//! The benchmark's yardsticks, with nothing of expresscache in the way:
//!
//! - `raw_copy list BUCKET [PREFIX]`: a bare paginated ListObjectsV2 of the
//!   prefix (the floor for a re-warm, which must at least list);
//! - `raw_copy copy SRC DST [PREFIX] [CONCURRENCY]`: the best CopyObject rate
//!   a minimal concurrent loop gets from the server (the ceiling for a cold
//!   warm).
//!
//! S3 is configured from the standard AWS environment, like the server.
//! Prints one JSON line: `{"op", "objects", "seconds", "objects_per_second"}`.

use std::time::Instant;

use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    );
    let (op, src) = match (args.first(), args.get(1)) {
        (Some(op), Some(src)) => (op.as_str(), src.as_str()),
        _ => {
            return Err(
                "usage: raw_copy list BUCKET [PREFIX] | copy SRC DST [PREFIX] [CONCURRENCY]".into(),
            )
        }
    };
    let prefix_at = if op == "copy" { 3 } else { 2 };
    let prefix = args.get(prefix_at).cloned().unwrap_or_default();
    let started = Instant::now();
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(src)
        .prefix(&prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        keys.extend(
            page?
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    if op == "copy" {
        let dst = args.get(2).ok_or("copy needs a destination bucket")?;
        let concurrency: usize = args.get(4).map_or(Ok(64), |c| c.parse())?;
        let copied = futures::stream::iter(keys.iter())
            .map(|k| {
                s3.copy_object()
                    .bucket(dst)
                    .key(k)
                    .copy_source(expresscache_server::store::S3Store::copy_source(src, k))
                    .send()
            })
            .buffer_unordered(concurrency)
            .filter(|r| std::future::ready(r.is_ok()))
            .count()
            .await;
        if copied != keys.len() {
            return Err(format!("only {copied} of {} copies succeeded", keys.len()).into());
        }
    } else if op != "list" {
        return Err(format!("unknown op {op:?}").into());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"op\":\"{op}\",\"objects\":{},\"seconds\":{secs:.3},\"objects_per_second\":{:.1}}}",
        keys.len(),
        keys.len() as f64 / secs
    );
    Ok(())
}
