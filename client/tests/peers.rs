//! What users of peer tools expect (`aws s3 sync --include/--exclude`,
//! `rclone --files-from`, `kubectl ... --wait=false`, `ls`, completions
//! and a man page), through the real `expresscache` and
//! `expresscache-server` binaries against moto.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{cli, int, json_lines, setup, setup_with};
use expresscache_client::pb;
use expresscache_server::testing::{free_port, list_keys};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn cached(s3: &aws_sdk_s3::Client, dir: &str) -> Vec<String> {
    let mut keys = list_keys(s3, dir, "").await;
    keys.sort();
    keys
}

#[tokio::test]
async fn include_and_exclude_globs_warm_only_the_matching_keys() {
    let s = setup(&[
        "d/a.bin",
        "d/b.txt",
        "d/sub/c.bin",
        "d/tmp/x.bin",
        "e/f.bin",
    ])
    .await;
    let out = s.server.run(&[
        "warm",
        "--bucket",
        &s.src,
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
        "--include",
        "**/*.bin",
        "--exclude",
        "d/tmp/**",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let last = json_lines(&out).pop().expect("progress lines");
    assert_eq!(last["outcome"], "OUTCOME_SUCCEEDED");
    // Keys filtered out are not even counted as listed.
    assert_eq!(
        (
            int(&last["counters"]["objects_listed"]),
            int(&last["counters"]["objects_copied"])
        ),
        (Some(2), Some(2)),
        "{last}"
    );
    assert_eq!(cached(&s.s3, &s.dir).await, ["d/a.bin", "d/sub/c.bin"]);

    // "*" stays within a directory: d/*.bin is d/a.bin alone (a hit now).
    let again = s.server.run(&[
        "warm",
        "--bucket",
        &s.src,
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
        "--include",
        "d/*.bin",
        "--output",
        "json",
    ]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let last = json_lines(&again).pop().expect("progress lines");
    assert_eq!(
        (
            int(&last["counters"]["objects_listed"]),
            int(&last["counters"]["objects_hit"]),
            int(&last["counters"]["objects_copied"])
        ),
        (Some(1), Some(1), Some(0)),
        "{last}"
    );
    // The request the operation records carries the patterns.
    let id = last["operation_id"]
        .as_str()
        .expect("operation id")
        .to_owned();
    let status = s
        .server
        .run(&["status", "--operation", &id, "--output", "json"]);
    let v = &json_lines(&status)[0];
    assert_eq!(v["request"]["include"][0], "d/*.bin", "{v}");
}

#[test]
fn a_bad_glob_is_refused_before_connecting_naming_the_pattern_and_why() {
    // Nothing listens there: the refusal comes before any connection.
    let port = free_port();
    let out = Command::new(cli())
        .args([
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "warm",
            "--bucket",
            "src-b",
            "--prefix",
            "d/",
            "--directory-bucket",
            "c--use1-az4--x-s3",
            "--include",
            "*.bin",
            "--include",
            "data/[abc",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("include[1]"), "{err}");
    assert!(err.contains("without its closing ']'"), "{err}");
    assert!(!err.contains("cannot connect"), "{err}");
}

/// Any gRPC client gets the same check from the server: INVALID_ARGUMENT
/// with one field violation per bad pattern.
#[tokio::test]
async fn the_server_refuses_a_bad_glob_with_a_field_violation() {
    let s = setup(&["d/a"]).await;
    let request = pb::WarmCacheRequest {
        bucket: s.src.clone(),
        prefixes: vec!["d/".into()],
        directory_bucket: s.dir.clone(),
        ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        include: vec!["d/**".into()],
        exclude: vec!["a***".into()],
        ..Default::default()
    };
    let violations = common::refused_field_violations(&s.server.endpoint, request).await;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "exclude[0]");
    assert!(
        violations[0].description.contains("\"***\""),
        "{violations:?}"
    );
    assert!(list_keys(&s.s3, &s.dir, "").await.is_empty());
}

/// A dry run lists, tallies and prices only the keys that match, and
/// prices keeping them for the TTL apart from the copies.
#[tokio::test]
async fn a_dry_run_prices_only_the_matching_keys_and_their_storage_for_the_ttl() {
    let prices = tempfile::tempdir().unwrap();
    let table = prices.path().join("prices.toml");
    // $1 per copy, free listings, and a GB-month priced at 2^30 dollars:
    // storage costs one dollar per byte kept for 730 hours (a month), so
    // half a dollar per byte for a TTL of 365 hours.
    std::fs::write(
        &table,
        "source = \"test prices\"\nexpress_put_per_1000 = 1000.0\nsource_list_per_1000 = 0.0\n\
         express_storage_per_gb_month = 1073741824.0\n",
    )
    .unwrap();
    let table = table.to_str().unwrap().to_owned();
    let s = setup_with(
        &["d/a.bin", "d/b.txt", "d/c.bin"],
        &["--price-table", &table],
    )
    .await;
    let plan = |output: &str| {
        s.server.run(&[
            "warm",
            "--dry-run",
            "--bucket",
            &s.src,
            "--prefix",
            "d/",
            "--include",
            "**/*.bin",
            "--directory-bucket",
            &s.dir,
            "--ttl",
            "365h",
            "--output",
            output,
        ])
    };
    let out = plan("json");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "one object: the plan");
    let p = &lines[0];
    // d/a.bin and d/c.bin: 7 bytes each (each body is its key).
    assert_eq!(p["prefixes"][0]["objects_to_copy"], "2", "{p}");
    assert_eq!(p["prefixes"][0]["bytes_to_copy"], "14", "{p}");
    let usd = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    assert!((usd(&p["engine"]["usd"]) - 2.0).abs() < 1e-9, "{p}");
    assert!((usd(&p["storage"]["usd"]) - 7.0).abs() < 1e-6, "{p}");
    assert_eq!(p["storage"]["lines"][0]["unit"], "GB-month", "{p}");
    let text = plan("text");
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    let text = stdout(&text);
    assert!(
        text.contains("storage for the TTL (either way of copying): $7.0000"),
        "{text}"
    );
    assert!(text.contains("cost by engine: $2.0000"), "{text}");
    assert!(
        list_keys(&s.s3, &s.dir, "").await.is_empty(),
        "a dry run copies nothing"
    );
}

#[tokio::test]
async fn a_key_list_file_warms_exactly_its_keys_and_fails_the_missing_one() {
    let s = setup(&["d/a", "d/b", "d/c", "d/sub/x", "e/y"]).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("keys.txt");
    std::fs::write(
        &list,
        format!(
            "# what the job reads\n\nd/a\nd/sub/x\ns3://{}/e/y\nd/missing\n",
            s.src
        ),
    )
    .unwrap();
    let out = s.server.run(&[
        "warm",
        "--bucket",
        &s.src,
        "--files-from",
        list.to_str().unwrap(),
        "--directory-bucket",
        &s.dir,
        "--output",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a missing key is a failed key: {}",
        stderr(&out)
    );
    let last = json_lines(&out).pop().expect("progress lines");
    assert_eq!(last["outcome"], "OUTCOME_PARTIALLY_FAILED");
    assert_eq!(
        (
            int(&last["counters"]["objects_listed"]),
            int(&last["counters"]["objects_copied"]),
            int(&last["counters"]["objects_failed"])
        ),
        (Some(3), Some(3), Some(1)),
        "{last}"
    );
    assert_eq!(last["failures"][0]["key"], "d/missing", "{last}");
    assert_eq!(last["failures"][0]["code"], "NoSuchKey", "{last}");
    assert_eq!(cached(&s.s3, &s.dir).await, ["d/a", "d/sub/x", "e/y"]);

    // Its leases are the keys' directories, held by this warm.
    let id = last["operation_id"].as_str().expect("operation id");
    let ls = s
        .server
        .run(&["ls", "--directory-bucket", &s.dir, "--output", "json"]);
    assert_eq!(ls.status.code(), Some(0), "{}", stderr(&ls));
    let leases = json_lines(&ls);
    let prefixes: Vec<&str> = leases
        .iter()
        .filter_map(|l| l["lease"]["prefix"].as_str())
        .collect();
    assert_eq!(prefixes, ["d/", "d/sub/", "e/"]);
    assert!(
        leases.iter().all(|l| l["operations"][0] == id),
        "{leases:#?}"
    );
}

#[tokio::test]
async fn a_key_list_can_come_from_standard_input() {
    let s = setup(&["d/a", "d/b"]).await;
    let mut child = s
        .server
        .command()
        .args([
            "warm",
            "--bucket",
            &s.src,
            "--files-from",
            "-",
            "--directory-bucket",
            &s.dir,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run expresscache");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"d/b\n")
        .expect("write the key list");
    let out = child.wait_with_output().expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("SUCCEEDED: 1 listed, 0 hits, 1 copied"),
        "{}",
        stdout(&out)
    );
    assert_eq!(cached(&s.s3, &s.dir).await, ["d/b"]);
}

#[tokio::test]
async fn an_s3_url_not_ending_in_a_slash_warms_that_one_object() {
    let s = setup(&["path/to/object.bin", "path/to/other.bin"]).await;
    let url = format!("s3://{}/path/to/object.bin", s.src);
    let out = s.server.run(&["warm", &url, "--directory-bucket", &s.dir]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("SUCCEEDED: 1 listed, 0 hits, 1 copied"),
        "{}",
        stdout(&out)
    );
    assert_eq!(cached(&s.s3, &s.dir).await, ["path/to/object.bin"]);

    // An object that does not exist is not "ready".
    let missing = format!("s3://{}/path/to/nope.bin", s.src);
    let out = s
        .server
        .run(&["warm", &missing, "--directory-bucket", &s.dir]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(cached(&s.s3, &s.dir).await, ["path/to/object.bin"]);

    // Objects and prefixes do not mix in one warm.
    let prefix = format!("s3://{}/path/", s.src);
    let out = s
        .server
        .run(&["warm", &url, &prefix, "--directory-bucket", &s.dir]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("either prefixes"), "{}", stderr(&out));
}

#[tokio::test]
async fn warm_no_wait_prints_the_operation_id_to_follow_and_exits_0() {
    let s = setup(&["d/a", "d/b", "e/c"]).await;
    let out = s.server.run(&[
        "warm",
        "--no-wait",
        "--bucket",
        &s.src,
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no progress: {text}");
    let id = lines[0]
        .strip_prefix("operation ")
        .and_then(|rest| rest.split_once(" submitted; follow it with: expresscache watch "))
        .map(|(id, again)| {
            assert_eq!(id, again, "{text}");
            id.to_owned()
        })
        .unwrap_or_else(|| panic!("unexpected line: {text}"));
    // The warm ran on without the caller: watching it finds it done.
    let watch = s.server.run(&["watch", &id, "--output", "json"]);
    assert_eq!(watch.status.code(), Some(0), "{}", stderr(&watch));
    let last = json_lines(&watch).pop().expect("progress lines");
    assert_eq!(last["outcome"], "OUTCOME_SUCCEEDED");
    assert_eq!(last["operation_id"], id.as_str());
    assert_eq!(cached(&s.s3, &s.dir).await, ["d/a", "d/b"]);

    let out = s.server.run(&[
        "warm",
        "--no-wait",
        "--bucket",
        &s.src,
        "--prefix",
        "e/",
        "--directory-bucket",
        &s.dir,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let id = lines[0]["operation_id"].as_str().expect("operation_id");
    assert!(!id.is_empty());
    assert_eq!(
        lines[0].as_object().map(|o| o.len()),
        Some(1),
        "{}",
        lines[0]
    );
    let watch = s.server.run(&["watch", id]);
    assert_eq!(watch.status.code(), Some(0), "{}", stderr(&watch));

    // Not with a dry run: that has no operation to follow.
    let both = s.server.run(&[
        "warm",
        "--no-wait",
        "--dry-run",
        "--bucket",
        &s.src,
        "--prefix",
        "d/",
        "--directory-bucket",
        &s.dir,
    ]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
}

#[tokio::test]
async fn ls_lists_every_lease_with_what_is_cached_under_it_and_who_holds_it() {
    let s = setup(&["d/a", "d/b", "e/c"]).await;
    let empty = s.server.run(&["ls", "--directory-bucket", &s.dir]);
    assert_eq!(empty.status.code(), Some(0), "{}", stderr(&empty));
    assert!(
        stdout(&empty).contains("no live lease"),
        "{}",
        stdout(&empty)
    );

    let warm = |prefix: &str, ttl: &str| {
        let out = s.server.run(&[
            "warm",
            "--bucket",
            &s.src,
            "--prefix",
            prefix,
            "--directory-bucket",
            &s.dir,
            "--ttl",
            ttl,
            "--output",
            "json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let last = json_lines(&out).pop().expect("progress lines");
        last["operation_id"]
            .as_str()
            .expect("operation id")
            .to_owned()
    };
    let d = warm("d/", "1h");
    let e = warm("e/", "2h");

    let out = s
        .server
        .run(&["ls", "--directory-bucket", &s.dir, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let leases = json_lines(&out);
    assert_eq!(leases.len(), 2, "{leases:#?}");
    let (ld, le) = (&leases[0], &leases[1]);
    assert_eq!(
        (
            ld["lease"]["prefix"].as_str(),
            ld["lease"]["source_bucket"].as_str()
        ),
        (Some("d/"), Some(s.src.as_str()))
    );
    assert_eq!(ld["usage"]["cached_objects"], "2", "{ld}");
    assert_eq!(ld["usage"]["cached_bytes"], "6", "{ld}");
    assert_eq!(ld["operations"], serde_json::json!([d]), "{ld}");
    assert_eq!(le["lease"]["prefix"], "e/");
    assert_eq!(le["usage"]["cached_objects"], "1", "{le}");
    assert_eq!(le["operations"], serde_json::json!([e]), "{le}");
    assert!(
        ld["lease"]["expires_at"].as_str() < le["lease"]["expires_at"].as_str(),
        "d/ expires first: {leases:#?}"
    );

    let text = s.server.run(&["ls", "--directory-bucket", &s.dir]);
    let text = stdout(&text);
    assert!(
        text.lines().any(|l| l.starts_with("d/ ") && l.contains(&d)),
        "{text}"
    );
    assert!(text.contains("2 live leases; 3 objects"), "{text}");

    let under = s.server.run(&[
        "ls",
        "--directory-bucket",
        &s.dir,
        "--prefix",
        "e/",
        "--output",
        "json",
    ]);
    let under = json_lines(&under);
    assert_eq!(under.len(), 1, "{under:#?}");
    assert_eq!(under[0]["lease"]["prefix"], "e/");

    let bad = s
        .server
        .run(&["ls", "--directory-bucket", &s.dir, "--prefix", "e"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn completion_prints_a_script_for_every_shell_and_man_a_roff_page() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = Command::new(cli())
            .args(["completion", shell])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(
            script.contains("expresscache") && script.contains("files-from"),
            "{shell}: {script}"
        );
    }
    let unknown = Command::new(cli())
        .args(["completion", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(unknown.status.code(), Some(2));

    let man = Command::new(cli()).arg("man").output().expect("run");
    assert_eq!(man.status.code(), Some(0), "{}", stderr(&man));
    let page = stdout(&man);
    assert!(page.contains(".TH expresscache"), "{page}");
    assert!(page.contains(".SH NAME"), "{page}");
    for sub in ["warm", "ls", "completion"] {
        assert!(page.contains(sub), "{sub} missing from the page: {page}");
    }
}

/// A pattern that matches nothing under a prefix that holds objects (a
/// typo'd extension) is not "ready": the warm selected nothing, so it
/// fails as an empty warm does, naming the prefix, and caches nothing.
#[tokio::test]
async fn an_include_that_matches_nothing_fails_instead_of_reporting_ready() {
    let s = setup(&["d/a.bin", "d/b.bin"]).await;
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "warm",
            "--bucket",
            s.src.as_str(),
            "--prefix",
            "d/",
            "--directory-bucket",
            s.dir.as_str(),
            "--include",
            "**/*.bn",
            "--output",
            "json",
        ];
        a.extend_from_slice(extra);
        a
    };
    let out = s.server.run(&args(&[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let last = json_lines(&out).pop().expect("progress lines");
    assert_eq!(last["outcome"], "OUTCOME_FAILED", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no object under"),
        "{last}"
    );
    assert!(list_keys(&s.s3, &s.dir, "").await.is_empty());
    // Said to be fine, it is.
    let out = s.server.run(&args(&["--allow-empty"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
