//! `ls`: every live lease of a directory bucket (or at, under or over one
//! of its prefixes), with what is cached under each and the operations
//! that hold it.
//!
//! Built on GetStatus: asked about a prefix (`""`: the whole bucket), a
//! server answers every live lease on it, over it (its ancestors) and
//! under it (at most 1,000 of those), and the objects cached under it;
//! a second GetStatus with the leases' prefixes counts what is cached under
//! each. Which operations hold a lease is not part of a lease record: it is
//! read from the operation log (ListOperations, the most recent 1,000
//! operations the caller may see): a warm of the same directory bucket,
//! source and lease prefix that still runs, or whose leases have not
//! expired yet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use expresscache::request::key_directories;
use expresscache::Prefix;
use expresscache_client::{pb, Client, ClientError};
use indicatif::HumanBytes;
use serde_json::{json, Value};

use super::json::to_json;
use super::render::OutputFormat;

/// Prefixes counted per GetStatus call (a server's limit per request).
const PREFIXES_PER_CALL: usize = 1000;

/// Most leases a server lists under a prefix in one GetStatus answer.
const SERVER_LEASE_LIMIT: usize = 1000;

/// Most recent operations read to find the holders of the leases.
const OPERATIONS_READ: usize = 1000;

/// A lease's key: (prefix, source bucket).
type LeaseKey = (String, String);

/// Lists the leases at, over and under `prefix` of `dir`.
pub async fn run(
    client: &mut Client,
    dir: String,
    prefix: String,
    output: OutputFormat,
) -> Result<(), ClientError> {
    let answer = client
        .prefix_status_with_clock(dir.clone(), vec![prefix.clone()])
        .await?;
    // A server whose clock is off holds back sweeps and evictions.
    if let Some(clock) = answer.clock.as_ref().filter(|c| !c.refusing.is_empty()) {
        eprintln!("warning: {}", clock.refusing);
    }
    let status = answer.prefixes.into_iter().next().unwrap_or_default();
    let mut leases = status.leases.clone();
    leases.sort_by(|a, b| (&a.prefix, &a.source_bucket).cmp(&(&b.prefix, &b.source_bucket)));
    let under = leases
        .iter()
        .filter(|l| l.prefix.len() > prefix.len())
        .count();
    if under >= SERVER_LEASE_LIMIT {
        eprintln!(
            "warning: the server lists at most {SERVER_LEASE_LIMIT} leases under a prefix; \
             narrow the listing with --prefix"
        );
    }
    let usage = usage(client, &dir, &leases).await?;
    let holders = holders(client, &dir, &leases).await;
    match output {
        OutputFormat::Json => {
            for l in &leases {
                println!(
                    "{}",
                    lease_json(&dir, l, usage.get(&l.prefix), holders.as_ref())
                );
            }
            for f in &status.sweep_failures {
                println!(
                    "{}",
                    json!({
                        "directory_bucket": dir,
                        "live": false,
                        "sweep_failure": to_json(f),
                    })
                );
            }
        }
        OutputFormat::Text => {
            for line in lease_lines(&dir, &prefix, &status, &leases, &usage, holders.as_ref()) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// What is cached under each lease's prefix, by prefix.
async fn usage(
    client: &mut Client,
    dir: &str,
    leases: &[pb::Lease],
) -> Result<BTreeMap<String, pb::PrefixStatus>, ClientError> {
    // Each prefix once (leases of several sources share one), and only
    // those a status call accepts (every lease a warm writes is one).
    let prefixes: Vec<String> = leases
        .iter()
        .map(|l| l.prefix.clone())
        .filter(|p| Prefix::parse(p).is_ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = BTreeMap::new();
    for chunk in prefixes.chunks(PREFIXES_PER_CALL) {
        for p in client.prefix_status(dir.to_owned(), chunk.to_vec()).await? {
            out.insert(p.prefix.clone(), p);
        }
    }
    Ok(out)
}

/// The operations that hold each lease, as far as the recent operation
/// log tells; `None` when it cannot be read.
async fn holders(
    client: &mut Client,
    dir: &str,
    leases: &[pb::Lease],
) -> Option<BTreeMap<LeaseKey, Vec<String>>> {
    let mut out: BTreeMap<LeaseKey, Vec<String>> = BTreeMap::new();
    if leases.is_empty() {
        return Some(out);
    }
    let wanted: BTreeSet<LeaseKey> = leases
        .iter()
        .map(|l| (l.prefix.clone(), l.source_bucket.clone()))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut token = String::new();
    let mut read = 0;
    while read < OPERATIONS_READ {
        let page = client
            .list_operations(pb::OperationFilter::Unspecified, 100, token)
            .await
            .ok()?;
        read += page.operations.len();
        for op in &page.operations {
            let Some(r) = &op.request else { continue };
            if r.directory_bucket != dir {
                continue;
            }
            let p = op.progress.clone().unwrap_or_default();
            let running = p.phase != pb::Phase::Done as i32;
            let leased = p.lease_expires_at.as_ref().is_some_and(|t| t.seconds > now);
            if !running && !leased {
                continue;
            }
            for lease_prefix in lease_prefixes(r) {
                let key = (lease_prefix, r.bucket.clone());
                if wanted.contains(&key) {
                    out.entry(key).or_default().push(op.operation_id.clone());
                }
            }
        }
        if page.next_page_token.is_empty() || page.operations.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Some(out)
}

/// The lease prefixes a warm of `r` writes: its destination prefix
/// followed by each of its prefixes (the directories of its keys, for a
/// key list).
pub fn lease_prefixes(r: &pb::WarmCacheRequest) -> Vec<String> {
    let prefixes: Vec<String> = if !r.keys.is_empty() {
        key_directories(&r.keys)
            .iter()
            .map(ToString::to_string)
            .collect()
    } else if r.prefixes.is_empty() {
        vec![String::new()]
    } else {
        r.prefixes.clone()
    };
    prefixes
        .into_iter()
        .map(|p| format!("{}{p}", r.destination_prefix))
        .collect()
}

fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.map(ToString::to_string).unwrap_or_else(|| "-".into())
}

/// One lease as a JSON object: the lease and what is cached under its
/// prefix (the counts of the server's PrefixStatus, without its lists of
/// leases, which are rows of their own) as proto3 JSON, and the operations
/// holding it; `null` for what could not be read.
fn lease_json(
    dir: &str,
    l: &pb::Lease,
    usage: Option<&pb::PrefixStatus>,
    holders: Option<&BTreeMap<LeaseKey, Vec<String>>>,
) -> Value {
    let operations = holders.map(|h| {
        h.get(&(l.prefix.clone(), l.source_bucket.clone()))
            .cloned()
            .unwrap_or_default()
    });
    json!({
        "directory_bucket": dir,
        "live": true,
        "lease": to_json(l),
        "usage": usage.map(|u| to_json(&pb::PrefixStatus {
            leases: Vec::new(),
            sweep_failures: Vec::new(),
            ..u.clone()
        })),
        "operations": operations,
    })
}

/// The text listing: a table of the leases, then the expired leases not
/// swept yet, then what is cached under the prefix in all.
fn lease_lines(
    dir: &str,
    prefix: &str,
    status: &pb::PrefixStatus,
    leases: &[pb::Lease],
    usage: &BTreeMap<String, pb::PrefixStatus>,
    holders: Option<&BTreeMap<LeaseKey, Vec<String>>>,
) -> Vec<String> {
    let shown = |p: &str| {
        if p.is_empty() {
            "(whole bucket)".to_owned()
        } else {
            p.to_owned()
        }
    };
    let mut out = Vec::new();
    if leases.is_empty() {
        out.push(format!(
            "no live lease at, over or under {} in {dir}",
            shown(prefix)
        ));
    } else {
        out.push(format!(
            "{:<40} {:<28} {:>10} {:>12}  {:<24} {}",
            "PREFIX", "SOURCE", "OBJECTS", "BYTES", "EXPIRES", "OPERATIONS"
        ));
    }
    for l in leases {
        let u = usage.get(&l.prefix).cloned().unwrap_or_default();
        let at_least = if u.counts_truncated { ">=" } else { "" };
        let ops = match holders {
            None => "(unknown)".to_owned(),
            Some(h) => match h.get(&(l.prefix.clone(), l.source_bucket.clone())) {
                Some(ids) if !ids.is_empty() => ids.join(", "),
                _ => "-".to_owned(),
            },
        };
        out.push(format!(
            "{:<40} {:<28} {:>10} {:>12}  {:<24} {}",
            shown(&l.prefix),
            format!("s3://{}", l.source_bucket),
            format!("{at_least}{}", u.cached_objects),
            format!("{at_least}{}", HumanBytes(u.cached_bytes)),
            ts(l.expires_at.as_ref()),
            ops
        ));
    }
    for f in &status.sweep_failures {
        let l = f.lease.clone().unwrap_or_default();
        out.push(format!(
            "expired lease {} from s3://{} not swept yet ({} attempts, next at {}): {}",
            shown(&l.prefix),
            l.source_bucket,
            f.attempts,
            ts(f.next_attempt_at.as_ref()),
            f.error
        ));
    }
    let at_least = if status.counts_truncated {
        "at least "
    } else {
        ""
    };
    out.push(format!(
        "{} live leases; {at_least}{} objects, {at_least}{} cached under {} in {dir}",
        leases.len(),
        status.cached_objects,
        HumanBytes(status.cached_bytes),
        shown(prefix)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(prefix: &str, source: &str) -> pb::Lease {
        pb::Lease {
            directory_bucket: "c--use1-az4--x-s3".into(),
            prefix: prefix.into(),
            source_bucket: source.into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 4_102_444_800,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn a_key_list_holds_the_leases_of_its_directories() {
        let r = pb::WarmCacheRequest {
            keys: vec!["d/x/1.bin".into(), "top.bin".into()],
            destination_prefix: "team/".into(),
            ..Default::default()
        };
        assert_eq!(lease_prefixes(&r), ["team/", "team/d/x/"]);
        let r = pb::WarmCacheRequest {
            prefixes: vec!["a/".into(), "b/".into()],
            ..Default::default()
        };
        assert_eq!(lease_prefixes(&r), ["a/", "b/"]);
    }

    #[test]
    fn each_lease_is_a_row_with_its_usage_and_holders() {
        let leases = [lease("", "src-a"), lease("d/", "src-b")];
        let mut usage = BTreeMap::new();
        usage.insert(
            "d/".to_owned(),
            pb::PrefixStatus {
                prefix: "d/".into(),
                cached_objects: 3,
                cached_bytes: 2048,
                ..Default::default()
            },
        );
        let mut holders = BTreeMap::new();
        holders.insert(
            ("d/".to_owned(), "src-b".to_owned()),
            vec!["op-1".to_owned()],
        );
        let status = pb::PrefixStatus {
            cached_objects: 5,
            ..Default::default()
        };
        let lines = lease_lines(
            "c--use1-az4--x-s3",
            "",
            &status,
            &leases,
            &usage,
            Some(&holders),
        );
        assert!(lines[0].starts_with("PREFIX"), "{lines:#?}");
        assert!(lines[1].starts_with("(whole bucket)"), "{lines:#?}");
        assert!(
            lines[2].contains("s3://src-b") && lines[2].contains("op-1"),
            "{lines:#?}"
        );
        assert!(lines[2].contains("2.00 KiB"), "{lines:#?}");
        assert!(
            lines[3].starts_with("2 live leases; 5 objects"),
            "{lines:#?}"
        );
        let v = lease_json(
            "c--use1-az4--x-s3",
            &leases[1],
            usage.get("d/"),
            Some(&holders),
        );
        assert_eq!(v["usage"]["cached_objects"], "3");
        assert_eq!(v["lease"]["source_bucket"], "src-b");
        assert_eq!(v["operations"][0], "op-1");
        assert_eq!(v["usage"]["leases"], serde_json::json!([]));
        let unknown = lease_json("c--use1-az4--x-s3", &leases[0], None, None);
        assert!(unknown["operations"].is_null() && unknown["usage"].is_null());
    }
}
