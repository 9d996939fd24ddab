//! A job array's launchers, from one process: `--n` warms started at once
//! over one connection (HTTP/2 streams), each waiting until its data is
//! ready. Prints one JSON line: how many, errors, time-to-ready p50/p99/max
//! (seconds), and how many joined a running warm or were answered within
//! their max_staleness. Used by bench/herd.sh; not a test.
//!
//!   cargo run --release -p expresscache-client --example herd -- \
//!     --endpoint http://127.0.0.1:50051 --bucket SRC --directory-bucket DIR \
//!     --prefix d0/ --prefix d1/ [--n 1000] [--distinct 100 --distinct-prefix u/]

use std::time::{Duration, Instant};

use expresscache_client::{Client, WarmRequest};

struct Args {
    endpoint: String,
    bucket: String,
    directory_bucket: String,
    prefixes: Vec<String>,
    n: usize,
    /// How many launchers ask for a prefix of their own instead.
    distinct: usize,
    distinct_prefix: String,
    max_staleness: Duration,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        endpoint: "http://127.0.0.1:50051".into(),
        bucket: String::new(),
        directory_bucket: String::new(),
        prefixes: Vec::new(),
        n: 1000,
        distinct: 0,
        distinct_prefix: "u/".into(),
        max_staleness: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => a.endpoint = value()?,
            "--bucket" => a.bucket = value()?,
            "--directory-bucket" => a.directory_bucket = value()?,
            "--prefix" => a.prefixes.push(value()?),
            "--n" => a.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--distinct" => {
                a.distinct = value()?.parse().map_err(|e| format!("--distinct: {e}"))?
            }
            "--distinct-prefix" => a.distinct_prefix = value()?,
            "--max-staleness" => {
                a.max_staleness = Duration::from_secs(
                    value()?
                        .parse()
                        .map_err(|e| format!("--max-staleness: {e}"))?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.bucket.is_empty() || a.directory_bucket.is_empty() || a.prefixes.is_empty() {
        return Err("--bucket, --directory-bucket and --prefix are required".into());
    }
    Ok(a)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("herd: {e}");
            std::process::exit(2);
        }
    };
    let client = match Client::connect(&a.endpoint).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herd: {e}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.n {
        let mut client = client.clone();
        let mut req = WarmRequest::new(&a.bucket, &a.directory_bucket)
            .ttl(Duration::from_secs(3600))
            .max_staleness(a.max_staleness);
        if i < a.distinct {
            req = req.prefix(format!("{}{i:03}/", a.distinct_prefix));
        } else {
            for p in &a.prefixes {
                req = req.prefix(p.clone());
            }
        }
        tasks.spawn(async move {
            let t0 = Instant::now();
            let r = client.warm_and_wait(req, |_| {}).await;
            (t0.elapsed().as_secs_f64(), r)
        });
    }
    let (mut times, mut errors, mut joined, mut fresh) = (Vec::new(), 0, 0, 0);
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((t, Ok(report))) if report.succeeded() => {
                times.push(t);
                joined += usize::from(report.joined_operation_id.is_some());
                fresh += usize::from(report.fresh_from_operation_id.is_some());
            }
            Ok((_, Ok(report))) => {
                errors += 1;
                first_error.get_or_insert(format!("{:?}: {:?}", report.outcome, report.error));
            }
            Ok((_, Err(e))) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"n\":{},\"errors\":{},\"p50_s\":{:.3},\"p99_s\":{:.3},\"max_s\":{:.3},\"wall_s\":{:.3},\"joined\":{},\"fresh\":{},\"first_error\":{:?}}}",
        a.n,
        errors,
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times.last().copied().unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64(),
        joined,
        fresh,
        first_error.unwrap_or_default()
    );
}
