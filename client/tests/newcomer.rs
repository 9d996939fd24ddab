//! Errors that tell the truth: what a newcomer gets wrong first
//! (an `s3://` URL as a prefix, an endpoint without a scheme, no server
//! running, a `status` without a target, an empty prefix) answered with a
//! message that says what happened and what to type instead, through the
//! real `expresscache` and `expresscache-server` binaries.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{cli, int, json_lines, setup};
use expresscache_client::pb;
use expresscache_server::testing::{free_port, list_keys};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The CLI against `endpoint`, nothing else from the environment.
fn run_at(endpoint: &str, args: &[&str]) -> Output {
    Command::new(cli())
        .args(["--endpoint", endpoint])
        .args(args)
        .env_remove("EXPRESSCACHE_CA_CERT")
        .env_remove("EXPRESSCACHE_TOKEN")
        .output()
        .expect("run expresscache")
}

/// An endpoint where nothing listens (a port just freed): a command that
/// tried to connect would fail with a connection error, so a usage error
/// proves it never tried.
fn nowhere() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

const DIR: &str = "cache--use1-az4--x-s3";

#[test]
fn an_s3_url_given_as_a_prefix_is_refused_before_connecting_with_the_flags_it_meant() {
    let out = run_at(
        &nowhere(),
        &[
            "warm",
            "--bucket",
            "demo-src",
            "--prefix",
            "s3://demo-src/datasets/",
            "--directory-bucket",
            DIR,
            "--reconnect-attempts",
            "0",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        r#"error: invalid request: --prefix "s3://demo-src/datasets/": a prefix is a key prefix inside --bucket, not a URL; did you mean --bucket demo-src --prefix datasets/ ?"#
    );

    // Without --bucket at all: the missing source and the same hint.
    let out = run_at(
        &nowhere(),
        &[
            "warm",
            "--prefix",
            "s3://demo-src/datasets/",
            "--directory-bucket",
            DIR,
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("warm needs a source"), "{err}");
    assert!(
        err.contains("did you mean --bucket demo-src --prefix datasets/ ?"),
        "{err}"
    );
    assert!(!err.contains("cannot connect"), "{err}");
}

/// The server refuses it too, for a client that does not check first
/// (any gRPC client): INVALID_ARGUMENT with a field violation.
#[tokio::test]
async fn the_server_refuses_an_s3_url_as_a_prefix_from_any_client() {
    let s = setup(&["datasets/a"]).await;
    let request = pb::WarmCacheRequest {
        bucket: s.src.clone(),
        prefixes: vec![format!("s3://{}/datasets/", s.src)],
        directory_bucket: s.dir.clone(),
        ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    let violations = common::refused_field_violations(&s.server.endpoint, request).await;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "prefixes[0]");
    assert!(
        violations[0].description.contains(&format!(
            r#"did you mean bucket "{}" with prefix "datasets/"?"#,
            s.src
        )),
        "{}",
        violations[0].description
    );
    assert!(list_keys(&s.s3, &s.dir, "").await.is_empty());
}

#[tokio::test]
async fn an_s3_url_as_the_source_argument_warms_that_bucket_and_prefix() {
    let s = setup(&["datasets/a", "datasets/b", "models/m", "other/o"]).await;
    let datasets = format!("s3://{}/datasets/", s.src);
    let models = format!("s3://{}/models/", s.src);
    let out = s.server.run(&[
        "warm",
        &datasets,
        &models,
        "--directory-bucket",
        &s.dir,
        "--ttl",
        "1h",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let last = json_lines(&out).pop().expect("progress lines");
    assert_eq!(last["outcome"], "OUTCOME_SUCCEEDED");
    assert_eq!(int(&last["counters"]["objects_copied"]), Some(3), "{last}");
    assert_eq!(
        list_keys(&s.s3, &s.dir, "").await,
        ["datasets/a", "datasets/b", "models/m"]
    );

    // Another bucket by --bucket: which one is meant is not clear.
    let out = s.server.run(&[
        "warm",
        &datasets,
        "--bucket",
        "another-bucket",
        "--prefix",
        "x/",
        "--directory-bucket",
        &s.dir,
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("one warm reads one bucket"), "{err}");
    assert!(err.contains("another-bucket"), "{err}");
}

#[tokio::test]
async fn host_and_port_without_a_scheme_reach_the_server_over_plain_http() {
    let s = setup(&["d/a"]).await;
    let bare = format!("127.0.0.1:{}", s.server.port);
    let warm = run_at(
        &bare,
        &[
            "warm",
            "--bucket",
            &s.src,
            "--prefix",
            "d/",
            "--directory-bucket",
            &s.dir,
        ],
    );
    assert_eq!(warm.status.code(), Some(0), "{}", stderr(&warm));
    let status = run_at(
        &bare,
        &["status", "--directory-bucket", &s.dir, "--prefix", "d/"],
    );
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("1 objects"));
}

#[test]
fn other_endpoint_schemes_are_usage_errors_naming_the_accepted_forms() {
    let port = free_port();
    for (endpoint, extra) in [
        (format!("ftp://127.0.0.1:{port}"), ""),
        (
            "s3://demo-src/datasets/".to_owned(),
            "names data to warm, not the expresscache server",
        ),
    ] {
        let out = run_at(
            &endpoint,
            &["status", "--directory-bucket", DIR, "--prefix", "d/"],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {err}");
        assert!(err.contains("unsupported scheme"), "{err}");
        assert!(
            err.contains("http://HOST:PORT, https://HOST:PORT (TLS) or HOST:PORT (plain http)"),
            "{err}"
        );
        assert!(err.contains(extra), "{err}");
        assert!(!err.contains("cannot connect"), "{err}");
    }
}

#[test]
fn a_refused_connection_says_so_with_a_hint() {
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    for args in [
        &["status", "--directory-bucket", DIR, "--prefix", "d/"][..],
        &[
            "warm",
            "--bucket",
            "demo-src",
            "--prefix",
            "d/",
            "--directory-bucket",
            DIR,
            "--reconnect-attempts",
            "0",
        ][..],
    ] {
        let out = run_at(&endpoint, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with(&format!(
                "error: cannot connect to http://127.0.0.1:{port}: connection refused \
                 (is expresscache-server running there? start it with `expresscache-server --listen 127.0.0.1:{port}`"
            )),
            "{err}"
        );
        assert!(err.contains("EXPRESSCACHE_ENDPOINT"), "{err}");
        assert!(!err.contains("transport error"), "{err}");
        assert!(!err.contains("Error {"), "no Debug dump: {err}");
    }
}

#[test]
fn every_violation_is_printed_once_on_its_own_line_before_connecting() {
    let out = run_at(
        &nowhere(),
        &[
            "warm",
            "--bucket",
            "bad_bucket",
            "--prefix",
            "no-slash",
            "--directory-bucket",
            "cache--x-s3",
            "--ttl",
            "0s",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        !err.contains("cannot connect"),
        "checked before connecting: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "error: invalid request:", "{err}");
    assert_eq!(lines.len(), 5, "a line per violation: {err}");
    for (field, why) in [
        ("bucket", r#""bad_bucket" contains '_'"#),
        ("prefixes[0]", "must end in '/'"),
        ("directory_bucket", "lacks a zone id"),
        ("ttl", "must be greater than zero"),
    ] {
        assert_eq!(err.matches(why).count(), 1, "{why:?} once: {err}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("  {field}: ")) && l.contains(why)),
            "{field}: {err}"
        );
    }
}

/// What only the server knows (its --max-ttl, whether it accepts plain
/// buckets as destinations) it refuses; each violation is printed once.
#[tokio::test]
async fn a_servers_field_violations_are_printed_once() {
    let s = setup(&["d/a"]).await;
    let warm = |dir: &str| {
        s.server.run(&[
            "warm",
            "--bucket",
            &s.src,
            "--prefix",
            "d/",
            "--directory-bucket",
            dir,
            "--ttl",
            "60d",
        ])
    };
    let out = warm(&s.dir);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.matches("exceeds this server's maximum").count(),
        1,
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");

    let out = warm("plain-bucket-name");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0], "error: INVALID_ARGUMENT: invalid request:",
        "{err}"
    );
    assert_eq!(lines.len(), 3, "{err}");
    assert_eq!(
        err.matches("exceeds this server's maximum").count(),
        1,
        "{err}"
    );
    assert_eq!(err.matches("\"plain-bucket-name\"").count(), 1, "{err}");
}

#[test]
fn status_without_arguments_says_what_it_needs() {
    let out = run_at(&nowhere(), &["status"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: status needs what to show: "),
        "{err}"
    );
    assert!(err.contains("--operation ID"), "{err}");
    assert!(
        err.contains("--directory-bucket NAME--ZONE--x-s3 --prefix P"),
        "{err}"
    );
    assert!(!err.contains("cannot connect"), "{err}");

    let out = run_at(&nowhere(), &["status", "--directory-bucket", DIR]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs at least one --prefix"), "{err}");
}

/// A prefix that lists nothing is far more often a typo than the intent:
/// the warm fails unless --allow-empty, and the empty prefixes are named
/// either way.
#[tokio::test]
async fn an_empty_warm_fails_unless_allowed_and_names_the_empty_prefixes() {
    let s = setup(&["d/a"]).await;
    let warm = |extra: &[&str]| {
        let mut args = vec![
            "warm",
            "--bucket",
            &s.src,
            "--prefix",
            "empty/",
            "--directory-bucket",
            &s.dir,
        ];
        args.extend_from_slice(extra);
        s.server.run(&args)
    };
    let warning = format!("warning: no object under s3://{}/empty/", s.src);

    let refused = warm(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains(&warning), "{}", stderr(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("FAILED"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let allowed = warm(&["--allow-empty"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    assert_eq!(
        stderr(&allowed).lines().filter(|l| *l == warning).count(),
        1,
        "{}",
        stderr(&allowed)
    );

    let json = warm(&["--allow-empty", "--output", "json"]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let last = json_lines(&json).pop().expect("progress lines");
    assert_eq!(last["outcome"], "OUTCOME_SUCCEEDED");
    assert_eq!(last["empty_prefixes"], serde_json::json!(["empty/"]));
    assert!(
        !stderr(&json).contains("warning"),
        "JSON carries it instead"
    );
}

/// A precondition of the server's (here: a feature it is not configured
/// for; likewise missing AWS credentials or region) is one readable line
/// with its gRPC code, not retried, exit 1.
#[tokio::test]
async fn a_server_precondition_is_one_readable_line() {
    let s = setup(&["d/a"]).await;
    let out = s.server.run(&[
        "warm",
        "--batch-operations",
        "--bucket",
        &s.src,
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, no reconnects: {err}");
    assert!(err.starts_with("error: FAILED_PRECONDITION: "), "{err}");
    assert!(err.contains("(reason: BATCH_NOT_CONFIGURED)"), "{err}");
}

/// `expresscache-server` started with an environment that lacks what
/// `strip` names (and no AWS files or instance metadata to fall back on);
/// its exit code and standard error, within 30 s.
fn server_without(strip: &[&str]) -> (Option<i32>, String) {
    server_with(&[], strip)
}

/// Starts the server with `args`, without the variables `strip`, and
/// waits for it to exit: its exit code and stderr.
fn server_with(args: &[&str], strip: &[&str]) -> (Option<i32>, String) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::server_binary());
    cmd.args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", home.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("EXPRESSCACHE_INDEX", "sqlite://:memory:")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE");
    for name in strip {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the server kept running without {strip:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), stderr(&out))
}

#[test]
fn a_server_without_a_region_refuses_to_start_and_says_which_variable_to_set() {
    let (code, err) = server_without(&["AWS_REGION"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("error: no AWS region: set AWS_REGION"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn a_server_whose_tls_files_are_missing_refuses_to_start_before_it_says_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing-cert.pem");
    let key = dir.path().join("missing-key.pem");
    let (code, err) = server_with(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("missing-cert.pem"), "names the file: {err}");
    for said in ["listening", "serving TLS", "joined"] {
        assert!(!err.contains(said), "said {said:?} before failing: {err}");
    }
}

#[test]
fn a_server_without_credentials_refuses_to_start_and_says_how_to_give_them() {
    let (code, err) = server_without(&["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("error: no usable AWS credentials"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    assert!(!err.contains("listening"), "{err}");
}
