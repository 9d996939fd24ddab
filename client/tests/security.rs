//! Transport security and identity, end to end: the real server binary
//! with certificates made in the test, the real CLI as the client.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{buckets, cli, json_lines, server_binary, Server};

/// The CLI against `server` over TLS, with `extra` options before the
/// command's arguments.
fn run(server: &Server, extra: &[&str], args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(cli())
        .args(["--endpoint", &format!("https://127.0.0.1:{}", server.port)])
        .args(extra)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("EXPRESSCACHE_TOKEN")
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `status` of the directory bucket: a unary call, no reconnects.
fn status_args(dir: &str) -> Vec<String> {
    ["status", "--directory-bucket", dir, "--prefix", "d/"]
        .map(str::to_owned)
        .to_vec()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_and_only_them() {
    let (moto, _s3, src, dir) = buckets(&["d/a", "d/b"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "good");
    let other = Ca::new(tmp.path(), "other");
    let cert = ca.server("server");
    let server = Server::start_with(
        &moto,
        &["--tls-cert", p(&cert.cert), "--tls-key", p(&cert.key)],
        &[],
    );
    let trust = ["--ca-cert", p(&ca.cert)];
    let warm = run(
        &server,
        &trust,
        &[
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
        ],
        &[],
    );
    assert_eq!(
        warm.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&warm),
        server.log()
    );
    assert_eq!(
        json_lines(&warm).last().unwrap()["counters"]["objects_copied"],
        "2"
    );

    let wrong_ca = run(
        &server,
        &["--ca-cert", p(&other.cert)],
        &refs(&status_args(&dir)),
        &[],
    );
    assert_eq!(wrong_ca.status.code(), Some(5), "{}", stderr(&wrong_ca));
    // Plaintext to a TLS port gets nowhere either.
    let plain = server.run(&refs(&status_args(&dir)));
    assert_ne!(plain.status.code(), Some(0), "{}", stderr(&plain));
}

#[tokio::test]
async fn mutual_tls_names_the_caller_and_refuses_a_foreign_or_expired_certificate() {
    let (moto, _s3, src, dir) = buckets(&["d/a"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "good");
    let other = Ca::new(tmp.path(), "other");
    let cert = ca.server("server");
    let server = Server::start_with(
        &moto,
        &[
            "--tls-cert",
            p(&cert.cert),
            "--tls-key",
            p(&cert.key),
            "--tls-client-ca",
            p(&ca.cert),
        ],
        &[],
    );
    let as_client = |c: &common::pki::Issued, args: &[&str]| {
        run(
            &server,
            &[
                "--ca-cert",
                p(&ca.cert),
                "--client-cert",
                p(&c.cert),
                "--client-key",
                p(&c.key),
            ],
            args,
            &[],
        )
    };
    let launcher = ca.client("launcher", "launcher", "genomics", false);
    let warm = as_client(
        &launcher,
        &[
            "warm",
            "--bucket",
            &src,
            "--prefix",
            "d/",
            "--directory-bucket",
            &dir,
            "--ttl",
            "1h",
        ],
    );
    assert_eq!(
        warm.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&warm),
        server.log()
    );
    // The audit line names the caller by its certificate's subject.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains(r#"principal="CN=launcher,O=genomics""#)
            && l.contains("WarmCache")),
        "{log}"
    );

    let foreign = other.client("intruder", "intruder", "elsewhere", false);
    let refused = as_client(&foreign, &refs(&status_args(&dir)));
    assert_ne!(refused.status.code(), Some(0), "{}", stderr(&refused));
    let expired = ca.client("expired", "launcher", "genomics", true);
    let refused = as_client(&expired, &refs(&status_args(&dir)));
    assert_ne!(refused.status.code(), Some(0), "{}", stderr(&refused));
    assert!(
        server.log().matches("TLS handshake refused").count() >= 2,
        "{}",
        server.log()
    );

    // No certificate at all: the handshake may pass, the call may not.
    let anonymous = run(
        &server,
        &["--ca-cert", p(&ca.cert)],
        &refs(&status_args(&dir)),
        &[],
    );
    assert_eq!(anonymous.status.code(), Some(6), "{}", stderr(&anonymous));
    assert!(
        stderr(&anonymous).contains("error: UNAUTHENTICATED: "),
        "{}",
        stderr(&anonymous)
    );
}

#[tokio::test]
async fn bearer_tokens_are_checked_against_their_hashes() {
    let (moto, _s3, src, dir) = buckets(&["d/a"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let hash = |token: &str| {
        let mut child = Command::new(server_binary())
            .args(["token", "hash"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let line = hash("tok-ci-0123");
    assert!(line.starts_with("sha256:") && line.len() == 71, "{line}");
    assert!(!line.contains("tok-ci"), "the file never holds the token");
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("# who\nci-runner {line}\n")).unwrap();
    let server = Server::start_with(&moto, &["--auth-tokens", p(&tokens)], &[]);

    let with = |token: Option<&str>, args: &[&str]| {
        let mut c = server.command();
        c.env_remove("EXPRESSCACHE_TOKEN").args(args);
        if let Some(t) = token {
            c.env("EXPRESSCACHE_TOKEN", t);
        }
        c.output().unwrap()
    };
    let warm = with(
        Some("tok-ci-0123"),
        &[
            "warm",
            "--bucket",
            &src,
            "--prefix",
            "d/",
            "--directory-bucket",
            &dir,
            "--ttl",
            "1h",
        ],
    );
    assert_eq!(
        warm.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&warm),
        server.log()
    );
    assert!(server
        .log()
        .lines()
        .any(|l| l.contains("audit") && l.contains("ci-runner")));

    for (token, why) in [
        (Some("tok-ci-9999"), "not registered"),
        (None, "EXPRESSCACHE_TOKEN"),
    ] {
        let refused = with(token, &refs(&status_args(&dir)));
        assert_eq!(refused.status.code(), Some(6), "{}", stderr(&refused));
        assert!(stderr(&refused).contains(why), "{}", stderr(&refused));
    }
    // A token file is read the same way as the variable.
    let file = tmp.path().join("my-token");
    std::fs::write(&file, "tok-ci-0123\n").unwrap();
    let by_file = with(
        None,
        &[&["--token-file", p(&file)][..], &refs(&status_args(&dir))].concat(),
    );
    assert_eq!(by_file.status.code(), Some(0), "{}", stderr(&by_file));
}

#[tokio::test]
async fn a_replaced_certificate_is_served_after_sighup_without_a_restart() {
    let (moto, _s3, _src, dir) = buckets(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(tmp.path(), "old");
    let new_ca = Ca::new(tmp.path(), "new");
    let live = old_ca.server("live");
    let server = Server::start_with(
        &moto,
        &["--tls-cert", p(&live.cert), "--tls-key", p(&live.key)],
        &[],
    );
    let status = |ca: &Path| {
        run(
            &server,
            &["--ca-cert", p(ca)],
            &refs(&status_args(&dir)),
            &[],
        )
    };
    assert_eq!(status(&old_ca.cert).status.code(), Some(0));

    let next = new_ca.server("next");
    std::fs::copy(&next.cert, &live.cert).unwrap();
    std::fs::copy(&next.key, &live.key).unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&new_ca.cert).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "not reloaded:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(status(&old_ca.cert).status.code(), Some(0));
    assert!(server.log().contains("TLS certificate reloaded"));
}

#[test]
fn plaintext_on_a_non_loopback_address_needs_an_explicit_flag() {
    let out = Command::new(server_binary())
        .args(["--listen", "0.0.0.0:1", "--index", "sqlite://:memory:"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--allow-plaintext"),
        "{}",
        stderr(&out)
    );
}
