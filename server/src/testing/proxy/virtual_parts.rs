//! Part copies the benchmark's simulated S3 answers itself. garage copies a
//! whole object by block references, but an UploadPartCopy by reading and
//! hashing every byte (the part's ETag is its MD5): on this machine that
//! is a few hundred MB/s of CPU, a cost S3 does not have and that would
//! decide the benchmark instead of S3's own (which the copy-cost charge
//! simulates).
//!
//! So each UploadPartCopy is charged as S3 would charge it, then answered
//! here and remembered; the CompleteMultipartUpload of an upload whose
//! parts are all ranges of one source object covering it exactly, in
//! order, becomes one CopyObject of that source upstream (the same bytes,
//! landed by reference), and the upstream upload is aborted. Anything else
//! (a part uploaded with a body, parts from two sources, a gap) is refused
//! with a 501, so nothing false lands. A part sent again replaces the
//! earlier one. Not checked: `x-amz-copy-source-if-match` and the other
//! conditions of a part (a benchmark's sources do not change), and the part
//! list of the Complete request (every part answered is used).

use std::collections::HashMap;
use std::sync::Mutex;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};

use super::copy_cost::{byte_range, source_key};
use super::{decode, plain, query_value, xml_escape, xml_response};

/// One part answered here: its number, source (`x-amz-copy-source` as
/// sent) and byte range.
#[derive(Debug, Clone)]
struct Part {
    number: i32,
    source: String,
    first: u64,
    last: u64,
}

#[derive(Debug)]
pub(super) struct VirtualParts {
    /// Signed with the benchmark's credentials, to the upstream.
    s3: aws_sdk_s3::Client,
    /// Upload id → the parts answered so far, by number (a part sent
    /// again replaces the earlier one, as S3 does).
    uploads: Mutex<HashMap<String, HashMap<i32, Part>>>,
}

impl VirtualParts {
    pub(super) fn new(s3: aws_sdk_s3::Client) -> Self {
        Self {
            s3,
            uploads: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<i32, Part>>> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the request if it is a part copy, or the completion or
    /// abort of an upload whose parts were answered here; `None` to forward
    /// it.
    pub(super) async fn intercept(
        &self,
        parts: &hyper::http::request::Parts,
    ) -> Option<Response<Full<Bytes>>> {
        let query = parts.uri.query().unwrap_or("");
        let upload = query_value(query, "uploadId")?;
        let path = parts.uri.path().trim_start_matches('/');
        let (bucket, key) = path.split_once('/')?;
        let (bucket, key) = (decode(bucket), decode(key));
        match parts.method {
            Method::PUT => {
                let source = parts.headers.get("x-amz-copy-source")?.to_str().ok()?;
                let number = query_value(query, "partNumber")?.parse().ok()?;
                let range = parts
                    .headers
                    .get("x-amz-copy-source-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(byte_range);
                let Some((first, last)) = range else {
                    return Some(plain(
                        StatusCode::NOT_IMPLEMENTED,
                        "virtual part copies need x-amz-copy-source-range".into(),
                    ));
                };
                let etag = format!("\"{:032x}\"", hash(&upload, number));
                self.lock().entry(upload).or_default().insert(
                    number,
                    Part {
                        number,
                        source: source.to_owned(),
                        first,
                        last,
                    },
                );
                Some(xml_response(format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyPartResult>\
                     <ETag>{}</ETag><LastModified>{}</LastModified></CopyPartResult>",
                    xml_escape(&etag),
                    now_iso()
                )))
            }
            Method::POST => {
                let answered = self.lock().remove(&upload)?;
                let answered = answered.into_values().collect();
                Some(self.complete(&bucket, &key, &upload, answered).await)
            }
            Method::DELETE => {
                self.lock().remove(&upload);
                None
            }
            _ => None,
        }
    }

    async fn complete(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        mut parts: Vec<Part>,
    ) -> Response<Full<Bytes>> {
        parts.sort_by_key(|p| p.number);
        let source = parts[0].source.clone();
        let contiguous = parts.iter().all(|p| p.source == source)
            && parts.first().is_some_and(|p| p.first == 0)
            && parts.windows(2).all(|w| w[1].first == w[0].last + 1);
        let named = source_key(&source);
        let Some((src_bucket, src_key)) = named.split_once('/') else {
            return plain(StatusCode::NOT_IMPLEMENTED, format!("bad source {named}"));
        };
        let size = match self
            .s3
            .head_object()
            .bucket(src_bucket)
            .key(src_key)
            .send()
            .await
        {
            Ok(h) => h.content_length().unwrap_or(-1),
            Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("virtual parts: head {e}")),
        };
        let end = parts.last().map_or(0, |p| p.last + 1);
        if !contiguous || i64::try_from(end).ok() != Some(size) {
            return plain(
                StatusCode::NOT_IMPLEMENTED,
                format!("virtual parts: upload {upload} is not one whole source in order"),
            );
        }
        let copied = self
            .s3
            .copy_object()
            .bucket(bucket)
            .key(key)
            .copy_source(&source)
            .send()
            .await;
        let _ = self
            .s3
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .send()
            .await;
        let etag = match copied {
            Ok(c) => c
                .copy_object_result()
                .and_then(|r| r.e_tag())
                .unwrap_or("\"\"")
                .to_owned(),
            Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("virtual parts: copy {e}")),
        };
        xml_response(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><Key>{}</Key>\
             <ETag>{}</ETag></CompleteMultipartUploadResult>",
            xml_escape(bucket),
            xml_escape(key),
            xml_escape(&etag)
        ))
    }
}

fn hash(upload: &str, number: i32) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (upload, number).hash(&mut h);
    let a = h.finish();
    number.hash(&mut h);
    (u128::from(a) << 64) | u128::from(h.finish())
}

fn now_iso() -> String {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    DateTime::from(std::time::SystemTime::now())
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}
