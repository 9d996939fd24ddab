//! The `expresscache` binary against the real `expresscache-server` binary,
//! configured only through the standard AWS environment variables, with S3
//! served by moto.

mod common;

use std::process::Command;

use common::{cli, int, json_lines, setup, Server};
use expresscache_server::testing::{
    create_bucket, create_directory_bucket, free_port, list_keys, put, unique,
    unique_directory_bucket, Moto,
};

#[tokio::test]
async fn warm_json_output_and_exit_codes() {
    let s = setup(&["d/a", "d/b", "d/c"]).await;
    let warm = |extra: &[&str]| {
        let mut args = vec![
            "warm",
            "--bucket",
            &s.src,
            "--prefix",
            "d/",
            "--directory-bucket",
            &s.dir,
            "--ttl",
            "1h",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        s.server.run(&args)
    };

    let first = warm(&[]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let lines = json_lines(&first);
    let last = lines.last().expect("progress lines");
    assert_eq!(last["outcome"], "OUTCOME_SUCCEEDED");
    assert_eq!(last["phase"], "PHASE_DONE");
    assert_eq!(
        (
            int(&last["counters"]["objects_listed"]),
            int(&last["counters"]["objects_hit"])
        ),
        (Some(3), Some(0))
    );
    assert_eq!(
        (
            int(&last["counters"]["objects_copied"]),
            int(&last["counters"]["objects_failed"])
        ),
        (Some(3), Some(0))
    );
    assert_eq!(int(&last["counters"]["bytes_copied"]), Some(9));
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|l| l["outcome"] == "OUTCOME_UNSPECIFIED"));

    let second = json_lines(&warm(&[]));
    let last = second.last().expect("progress lines");
    assert_eq!(
        (
            int(&last["counters"]["objects_hit"]),
            int(&last["counters"]["objects_copied"])
        ),
        (Some(3), Some(0))
    );

    let bad = warm(&["--request-id", "has space"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "invalid request is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("request_id"));

    let missing = s.server.run(&[
        "warm",
        "--bucket",
        "no-such-bucket-here",
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
    ]);
    assert_eq!(
        missing.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// `warm --dry-run` through the real binaries: the plan on stdout (JSON:
/// one object; text: a table and both estimates), exit 0, nothing copied;
/// a price table given to the server prices the estimate.
#[tokio::test]
async fn a_dry_run_prints_the_plan_and_copies_nothing() {
    let prices = tempfile::tempdir().unwrap();
    let table = prices.path().join("prices.toml");
    std::fs::write(
        &table,
        "source = \"test prices\"\nexpress_put_per_1000 = 1000.0\nsource_list_per_1000 = 0.0\n",
    )
    .unwrap();
    let table = table.to_str().unwrap().to_owned();
    let s = common::setup_with(&["d/a", "d/b", "e/c"], &["--price-table", &table]).await;
    let plan = |output: &str| {
        s.server.run(&[
            "warm",
            "--dry-run",
            "--bucket",
            &s.src,
            "--prefix",
            "d/",
            "--prefix",
            "e/",
            "--directory-bucket",
            &s.dir,
            "--output",
            output,
        ])
    };
    let out = plan("json");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "one object: the plan");
    let p = &lines[0];
    assert_eq!(p["prefixes"][0]["prefix"], "d/");
    assert_eq!(p["prefixes"][0]["objects_to_copy"], "2");
    assert_eq!(p["prefixes"][1]["objects_to_copy"], "1");
    assert_eq!(p["prices"], "test prices");
    // 3 copies at $1,000 per 1,000 requests, listings free.
    assert_eq!(p["engine"]["usd"].as_f64(), Some(3.0), "{p}");
    let text = plan("text");
    assert_eq!(text.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("cost by engine: $3.0000"), "{stdout}");
    assert!(stdout.contains("cost by S3 Batch Operations"), "{stdout}");
    assert!(
        list_keys(&s.s3, &s.dir, "").await.is_empty(),
        "a dry run copies nothing"
    );
}

#[tokio::test]
async fn text_output_in_a_log_is_plain_lines() {
    let s = setup(&["d/a", "d/b"]).await;
    let out = s.server.run(&[
        "warm",
        "--bucket",
        &s.src,
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !text.contains('\x1b') && !text.contains('\r'),
        "control codes in {text:?}"
    );
    assert!(text.lines().count() >= 2, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap_or_default()
            .contains("SUCCEEDED: 2 listed, 0 hits, 2 copied, 0 failed"),
        "{text}"
    );

    let status = s
        .server
        .run(&["status", "--directory-bucket", &s.dir, "--prefix", "d/"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("2 objects"), "{status}");

    let evict = s.server.run(&[
        "evict",
        "--directory-bucket",
        &s.dir,
        "--prefix",
        "d/",
        "--output",
        "json",
    ]);
    assert_eq!(evict.status.code(), Some(0));
    assert_eq!(int(&json_lines(&evict)[0]["objects_deleted"]), Some(2));
}

#[tokio::test]
async fn partial_failure_has_its_own_exit_code() {
    let s = setup(&["d/a", "d/b"]).await;
    assert_eq!(
        s.server
            .run(&[
                "warm",
                "--bucket",
                &s.src,
                "--prefix",
                "d/",
                "--directory-bucket",
                &s.dir
            ])
            .status
            .code(),
        Some(0)
    );
    // A second source with one overlapping key: that key is cached from the
    // first source and must not be overwritten.
    let other = unique("other");
    create_bucket(&s.s3, &other).await;
    put(&s.s3, &other, "d/a", b"other".to_vec()).await;
    put(&s.s3, &other, "d/new", b"new".to_vec()).await;

    let out = s.server.run(&[
        "warm",
        "--bucket",
        &other,
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
        "--output",
        "json",
    ]);

    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = json_lines(&out).pop().expect("lines");
    assert_eq!(last["outcome"], "OUTCOME_PARTIALLY_FAILED");
    assert_eq!(last["failures"][0]["key"], "d/a");
    assert_eq!(last["failures"][0]["code"], "KeyClash");
    assert_eq!(int(&last["counters"]["objects_copied"]), Some(1));
}

#[test]
fn usage_and_connection_errors_have_distinct_codes() {
    let usage = Command::new(cli())
        .args(["warm", "--bucket", "b"])
        .output()
        .expect("run");
    assert_eq!(usage.status.code(), Some(2));
    let port = free_port();
    let down = Command::new(cli())
        .args([
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "warm",
            "--bucket",
            "src-b",
            "--prefix",
            "",
            "--directory-bucket",
            "c--use1-az4--x-s3",
            "--reconnect-attempts",
            "0",
        ])
        .output()
        .expect("run");
    assert_eq!(
        down.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

#[tokio::test]
async fn the_server_sweeps_expired_objects_by_itself() {
    let moto = Moto::start();
    let s3 = moto.s3();
    let (src, dir) = (unique("src"), unique_directory_bucket());
    create_bucket(&s3, &src).await;
    create_directory_bucket(&s3, &dir).await;
    for k in ["s/1", "s/2", "keep/1"] {
        put(&s3, &src, k, k.as_bytes()).await;
    }
    let server = Server::start_with(&moto, &["--sweep-interval", "200ms"], &[]);
    let warm = |prefix: &str, ttl: &str| {
        server.run(&[
            "warm",
            "--bucket",
            &src,
            "--prefix",
            prefix,
            "--directory-bucket",
            &dir,
            "--ttl",
            ttl,
        ])
    };
    assert_eq!(warm("s/", "1s").status.code(), Some(0));
    assert_eq!(warm("keep/", "1h").status.code(), Some(0));
    assert_eq!(list_keys(&s3, &dir, "").await.len(), 3);

    // Bounded wait for the server's own sweeper (TTL 1s, sweep every 200ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let keys = list_keys(&s3, &dir, "").await;
        if keys == ["keep/1"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired objects not swept: {keys:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let status = server.run(&[
        "status",
        "--directory-bucket",
        &dir,
        "--prefix",
        "s/",
        "--output",
        "json",
    ]);
    let v = &json_lines(&status)[0];
    assert_eq!(
        (
            int(&v["cached_objects"]),
            v["leases"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
}
