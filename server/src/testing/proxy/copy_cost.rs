//! What a server-side copy costs on S3, for the benchmark's simulated S3:
//! the proxy holds each CopyObject and UploadPartCopy for its byte count at
//! a per-request rate, with every copy in flight sharing one aggregate
//! rate, before forwarding it to a backend (garage or moto) whose own copy
//! is nearly free.
//!
//! The bytes of an UploadPartCopy are its `x-amz-copy-source-range`; those
//! of a CopyObject are the source object's size, which the request does not
//! carry: the proxy learns sizes from the listings, HEADs and PUTs it
//! forwards (every copier lists or heads its sources first). A copy of a
//! source it never saw is forwarded uncharged and counted as such, so a
//! benchmark can check that nothing escaped the cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hyper::header::HeaderMap;
use hyper::Method;
use tokio::time::Instant;

/// Bytes charged at once: small enough that copies in flight interleave
/// finely in the aggregate's queue (1 MiB is 1 ms at 1 GiB/s).
const CHUNK: u64 = 1024 * 1024;

/// The rates of the simulated copy path, in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CopyRates {
    /// The most one request moves: S3 serves each request from one
    /// connection's worth of bandwidth.
    pub per_request: f64,
    /// What every copy in flight shares.
    pub aggregate: f64,
}

/// The charge: rates, what the proxy learnt of object sizes, and counters.
#[derive(Debug)]
pub(super) struct CopyCost {
    rates: CopyRates,
    /// When the aggregate is next free: each chunk charged moves it on by
    /// the chunk's time at the aggregate rate (a virtual-clock token
    /// bucket, without burst: S3 gives no credit for idle seconds).
    next_free: Mutex<Instant>,
    /// `bucket/key` → size in bytes.
    sizes: Mutex<HashMap<String, u64>>,
    charged_bytes: AtomicU64,
    charged_requests: AtomicU64,
    uncharged: AtomicU64,
}

/// What the charge has counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyCharges {
    pub bytes: u64,
    pub requests: u64,
    /// Copies of a source whose size the proxy never saw: forwarded free.
    pub uncharged: u64,
}

impl CopyCost {
    pub(super) fn new(rates: CopyRates) -> Self {
        Self {
            rates,
            next_free: Mutex::new(Instant::now()),
            sizes: Mutex::default(),
            charged_bytes: AtomicU64::new(0),
            charged_requests: AtomicU64::new(0),
            uncharged: AtomicU64::new(0),
        }
    }

    pub(super) fn charges(&self) -> CopyCharges {
        CopyCharges {
            bytes: self.charged_bytes.load(Ordering::Relaxed),
            requests: self.charged_requests.load(Ordering::Relaxed),
            uncharged: self.uncharged.load(Ordering::Relaxed),
        }
    }

    /// Holds a copy request for the time its bytes take; returns at once
    /// for any other request.
    pub(super) async fn charge(&self, method: &Method, headers: &HeaderMap) {
        if method != Method::PUT {
            return;
        }
        let Some(source) = header(headers, "x-amz-copy-source") else {
            return;
        };
        let bytes = match header(headers, "x-amz-copy-source-range") {
            Some(range) => range_len(range),
            None => {
                let key = source_key(source);
                self.lock_sizes().get(&key).copied()
            }
        };
        let Some(bytes) = bytes else {
            self.uncharged.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.charged_requests.fetch_add(1, Ordering::Relaxed);
        self.charged_bytes.fetch_add(bytes, Ordering::Relaxed);
        let started = Instant::now();
        let mut sent = 0;
        while sent < bytes {
            let chunk = CHUNK.min(bytes - sent);
            sent += chunk;
            // The request's own pace: it has sent `sent` bytes no sooner
            // than at the per-request rate.
            let own = started + secs(sent as f64 / self.rates.per_request);
            let shared = self.reserve(chunk);
            tokio::time::sleep_until(own.max(shared)).await;
        }
    }

    /// Takes `bytes` from the aggregate: when they are through.
    fn reserve(&self, bytes: u64) -> Instant {
        let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        *next = (*next).max(Instant::now()) + secs(bytes as f64 / self.rates.aggregate);
        *next
    }

    /// Learns object sizes from a forwarded request and its answer:
    /// ListObjects(V2) pages (`<Key>` and `<Size>` of each `<Contents>`), a
    /// HEAD or PUT of one object (its `Content-Length`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn learn(
        &self,
        method: &Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &str,
        request: &HeaderMap,
        response: &HeaderMap,
        body: &[u8],
    ) {
        let Some(bucket) = bucket else { return };
        let length = |h: &HeaderMap| header(h, "content-length").and_then(|v| v.parse().ok());
        let mut sizes = self.lock_sizes();
        match (method, key) {
            (&Method::HEAD, Some(key)) => {
                if let Some(n) = length(response) {
                    sizes.insert(format!("{bucket}/{key}"), n);
                }
            }
            // A PutObject (not a part of an upload, nor a copy).
            (&Method::PUT, Some(key))
                if header(request, "x-amz-copy-source").is_none()
                    && !query.contains("uploadId") =>
            {
                if let Some(n) = header(request, "x-amz-decoded-content-length")
                    .and_then(|v| v.parse().ok())
                    .or_else(|| length(request))
                {
                    sizes.insert(format!("{bucket}/{key}"), n);
                }
            }
            (&Method::GET, None) => {
                // `encoding-type=url` (the AWS CLI, rclone) lists keys
                // percent-encoded.
                let encoded = query.contains("encoding-type=url");
                for (key, size) in listed(&String::from_utf8_lossy(body)) {
                    let key = if encoded { super::decode(&key) } else { key };
                    sizes.insert(format!("{bucket}/{key}"), size);
                }
            }
            _ => {}
        }
    }

    fn lock_sizes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// The first and last byte of an `x-amz-copy-source-range`
/// (`bytes=FIRST-LAST`), if it is one (last not before first).
pub(super) fn byte_range(range: &str) -> Option<(u64, u64)> {
    let (first, last) = range.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    (last >= first).then_some((first, last))
}

/// The length of `bytes=FIRST-LAST`.
fn range_len(range: &str) -> Option<u64> {
    byte_range(range).map(|(first, last)| last - first + 1)
}

/// `bucket/key` of an `x-amz-copy-source` (`[/]bucket/key[?versionId=..]`,
/// percent-encoded).
pub(super) fn source_key(source: &str) -> String {
    let source = source.split_once('?').map_or(source, |(s, _)| s);
    super::decode(source.strip_prefix('/').unwrap_or(source))
}

/// The `(key, size)` of every `<Contents>` of a ListBucketResult.
fn listed(xml: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Contents>") {
        let after = &rest[start + "<Contents>".len()..];
        let end = after.find("</Contents>").unwrap_or(after.len());
        let entry = &after[..end];
        if let (Some(key), Some(size)) = (element(entry, "Key"), element(entry, "Size")) {
            if let Ok(size) = size.parse() {
                out.push((super::xml_unescape(key), size));
            }
        }
        rest = &after[end..];
    }
    out
}

fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const MB: f64 = 1_000_000.0;

    #[test]
    fn sizes_come_from_ranges_listings_heads_and_puts() {
        assert_eq!(range_len("bytes=0-5242879"), Some(5 * 1024 * 1024));
        assert_eq!(range_len("bytes=10-9"), None);
        assert_eq!(source_key("/src/a%20b/c?versionId=x"), "src/a b/c");
        let xml = "<ListBucketResult><Contents><Key>d/a&amp;b</Key><Size>12</Size></Contents>\
                   <Contents><Key>d/c</Key><ETag>\"e\"</ETag><Size>7</Size></Contents></ListBucketResult>";
        assert_eq!(listed(xml), [("d/a&b".into(), 12), ("d/c".into(), 7)]);
        let cost = CopyCost::new(CopyRates {
            per_request: MB,
            aggregate: MB,
        });
        let none = HeaderMap::new();
        let list = |query: &str, xml: &str| {
            cost.learn(
                &Method::GET,
                Some("src"),
                None,
                query,
                &none,
                &none,
                xml.as_bytes(),
            );
        };
        list("list-type=2", xml);
        // `encoding-type=url`: keys come percent-encoded.
        list(
            "encoding-type=url",
            "<ListBucketResult><Contents><Key>e/a%20b</Key><Size>5</Size></Contents></ListBucketResult>",
        );
        let len = headers(&[("content-length", "99")]);
        cost.learn(&Method::HEAD, Some("src"), Some("h"), "", &none, &len, b"");
        cost.learn(&Method::PUT, Some("src"), Some("p"), "", &len, &none, b"");
        let part = headers(&[("content-length", "3")]);
        let query = "partNumber=2&uploadId=u";
        cost.learn(
            &Method::PUT,
            Some("src"),
            Some("p"),
            query,
            &part,
            &none,
            b"",
        );
        let sizes = cost.lock_sizes();
        assert_eq!(sizes.get("src/d/a&b"), Some(&12));
        assert_eq!(sizes.get("src/h"), Some(&99));
        assert_eq!(
            sizes.get("src/p"),
            Some(&99),
            "a part of an upload is not the object"
        );
        assert_eq!(sizes.get("src/e/a b"), Some(&5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_takes_its_bytes_at_the_request_rate_and_copies_share_the_aggregate() {
        let cost = std::sync::Arc::new(CopyCost::new(CopyRates {
            per_request: 10.0 * MB,
            aggregate: 20.0 * MB,
        }));
        let copy = |bytes: u64| {
            let cost = cost.clone();
            let range = format!("bytes=0-{}", bytes - 1);
            async move {
                let h = headers(&[
                    ("x-amz-copy-source", "src/k"),
                    ("x-amz-copy-source-range", &range),
                ]);
                let t0 = Instant::now();
                cost.charge(&Method::PUT, &h).await;
                t0.elapsed()
            }
        };
        // Alone: 10 MB at 10 MB/s.
        let alone = copy(10_000_000).await;
        assert!((alone.as_secs_f64() - 1.0).abs() < 0.01, "{alone:?}");
        // Four at once: the 20 MB/s aggregate is the limit, 40 MB in 2 s.
        let four = futures::future::join_all((0..4).map(|_| copy(10_000_000))).await;
        let last = four.iter().max().unwrap().as_secs_f64();
        assert!((last - 2.0).abs() < 0.01, "{four:?}");
        // Chunks interleave: none is through much before the others.
        for t in &four {
            assert!(t.as_secs_f64() > 1.8, "{four:?}");
        }
        // A copy of an unknown source is not held, and counted.
        let unknown = headers(&[("x-amz-copy-source", "src/never-seen")]);
        cost.charge(&Method::PUT, &unknown).await;
        let c = cost.charges();
        assert_eq!((c.requests, c.bytes, c.uncharged), (5, 50_000_000, 1));
    }
}
