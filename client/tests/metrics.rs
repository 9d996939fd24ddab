//! `/metrics` of the real server binary, scraped over HTTP after real
//! warms and an evict against moto: the exported counters equal what the
//! warms reported.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};

use common::{buckets, int, json_lines, Server};
use expresscache_server::testing::free_port;

/// GETs `path` from `port` over plain HTTP/1.1: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// The samples of a text exposition: `name{labels}` (labels as written,
/// sorted by the exporter) to value. Fails on a line that is neither a
/// comment nor a sample.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        out.insert(series.to_owned(), value);
    }
    out
}

fn scrape(port: u16) -> (String, HashMap<String, f64>) {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    let samples = parse(&body);
    (body, samples)
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}; have: {:?}", sorted_names(samples)))
}

fn sorted_names(samples: &HashMap<String, f64>) -> Vec<&String> {
    let mut v: Vec<_> = samples.keys().collect();
    v.sort();
    v
}

fn report_u64(report: &serde_json::Value, field: &str) -> f64 {
    int(&report["counters"][field]).unwrap_or_else(|| panic!("{field} in {report}")) as f64
}

#[tokio::test]
async fn scraped_counters_equal_what_the_warms_reported() {
    let keys: Vec<String> = (0..25).map(|i| format!("d/k{i:02}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (moto, _s3, src, dir) = buckets(&key_refs).await;
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = Server::start_with(&moto, &["--metrics-listen", &metrics_addr], &[]);

    let warm = || {
        let out = server.run(&[
            "warm",
            "--bucket",
            &src,
            "--prefix",
            "d/",
            "--directory-bucket",
            &dir,
            "--ttl",
            "1h",
            "--output",
            "json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", server.log());
        json_lines(&out).pop().expect("a final report")
    };
    let cold = warm();
    let (text, m) = scrape(metrics_port);
    assert_eq!(report_u64(&cold, "objects_copied"), 25.0);
    for (series, field) in [
        ("expresscache_objects_listed_total", "objects_listed"),
        ("expresscache_objects_copied_total", "objects_copied"),
        ("expresscache_copied_bytes_total", "bytes_copied"),
        ("expresscache_listed_bytes_total", "bytes_listed"),
    ] {
        assert_eq!(value(&m, series), report_u64(&cold, field), "{series}");
    }
    assert_eq!(value(&m, "expresscache_warms_started_total"), 1.0);
    assert_eq!(
        value(
            &m,
            r#"expresscache_warms_finished_total{outcome="succeeded"}"#
        ),
        1.0
    );
    // One successful CopyObject attempt per object copied.
    assert_eq!(
        value(
            &m,
            r#"expresscache_s3_request_duration_seconds_count{operation="copy_object",outcome="ok"}"#
        ),
        25.0
    );
    assert!(text.contains("# TYPE expresscache_s3_request_duration_seconds histogram"));
    assert!(text.contains("# HELP expresscache_objects_copied_total"));
    assert_eq!(value(&m, "expresscache_s3_requests_in_flight"), 0.0);
    assert_eq!(value(&m, "expresscache_operations_running"), 0.0);
    assert!(
        value(
            &m,
            &format!(r#"expresscache_s3_concurrency_limit{{bucket="{dir}"}}"#)
        ) >= 1.0
    );
    assert!(
        value(
            &m,
            r#"expresscache_index_request_duration_seconds_count{operation="complete_copies",backend="sqlite"}"#
        ) >= 1.0
    );
    // Bounded labels only: no key or prefix ever becomes a label value.
    assert!(!text.contains("d/k0"), "a key leaked into a label");

    let hot = warm();
    assert_eq!(report_u64(&hot, "objects_hit"), 25.0);
    let (_, m) = scrape(metrics_port);
    assert_eq!(value(&m, "expresscache_objects_hit_total"), 25.0);
    assert_eq!(value(&m, "expresscache_objects_listed_total"), 50.0);
    assert_eq!(value(&m, "expresscache_objects_copied_total"), 25.0);
    assert_eq!(
        value(
            &m,
            r#"expresscache_warms_finished_total{outcome="succeeded"}"#
        ),
        2.0
    );

    let out = server.run(&["evict", "--directory-bucket", &dir, "--prefix", "d/"]);
    assert_eq!(out.status.code(), Some(0), "{}", server.log());
    let (_, m) = scrape(metrics_port);
    assert_eq!(
        value(&m, r#"expresscache_evictions_total{outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"expresscache_objects_deleted_total{reason="evict"}"#),
        25.0
    );

    assert_eq!(http_get(metrics_port, "/other").0, 404);
}

#[test]
fn a_taken_metrics_port_fails_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(common::server_binary())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--index", "sqlite://:memory:", "--metrics-listen", &addr])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .expect("run the server");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("binding the metrics endpoint {addr}")),
        "{stderr}"
    );
}
