//! In-memory [`ObjectStore`] with per-operation request counters.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{
    Copied, CopyRequest, DeleteFailure, DeleteTarget, ListPage, ListQuery, ObjectMeta, ObjectStore,
    PartCopy, StoreError,
};

#[derive(Debug, Clone)]
struct Object {
    etag: String,
    size: u64,
    last_modified: SystemTime,
}

/// Request counts, for tests that assert how much work a call did.
#[derive(Debug, Default)]
pub struct Counters {
    pub list: AtomicU64,
    pub copy: AtomicU64,
    pub delete: AtomicU64,
}

#[derive(Debug)]
struct Upload {
    bucket: String,
    key: String,
    /// Part number -> (size, ETag).
    parts: BTreeMap<i32, (u64, String)>,
}

/// Continuation tokens are the last key already returned, so the next page
/// starts after it; a token starting with this marker (no S3 key starts
/// with NUL: XML cannot carry it) instead names the key the next page
/// starts at, which is how an injected empty page resumes.
const RESUME_AT: char = '\0';

/// Buckets of objects held in memory. Listing pages hold `page_size` keys.
///
/// Where S3 and S3 Express behave differently from a naive map, this follows
/// them: fenced deletes of changed or missing objects fail per key, and (on
/// request, see [`MemoryStore::empty_pages_before`]) a listing page may be
/// empty yet truncated.
#[derive(Debug)]
pub struct MemoryStore {
    buckets: Mutex<HashMap<String, BTreeMap<String, Object>>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next_version: AtomicU64,
    page_size: usize,
    /// Listing pages with objects still to be served empty first.
    empty_pages: AtomicUsize,
    pub counters: Counters,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_page_size(1000)
    }
}

impl MemoryStore {
    pub fn with_page_size(page_size: usize) -> Self {
        Self {
            buckets: Mutex::default(),
            uploads: Mutex::default(),
            next_version: AtomicU64::new(1),
            page_size: page_size.max(1),
            empty_pages: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// Makes the next `n` [`ObjectStore::list_page`] calls that would return
    /// objects return a page with no objects instead, whose continuation
    /// token resumes at the same place. S3 may answer a ListObjectsV2 call
    /// with an empty page that is still truncated; listers must follow the
    /// token rather than stop. Replaces any count still pending.
    pub fn empty_pages_before(&self, n: usize) {
        self.empty_pages.store(n, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Object>>> {
        // A panic while holding the lock only happens in a failing test;
        // the map itself is always consistent.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.lock().entry(bucket.to_owned()).or_default();
    }

    /// Writes a new version of `key`; returns its ETag.
    pub fn put(&self, bucket: &str, key: &str, size: u64) -> String {
        let v = self.next_version.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"v{v}\"");
        self.lock().entry(bucket.to_owned()).or_default().insert(
            key.to_owned(),
            Object {
                etag: etag.clone(),
                size,
                last_modified: SystemTime::now(),
            },
        );
        etag
    }

    /// ETag of `key`, if present.
    pub fn etag(&self, bucket: &str, key: &str) -> Option<String> {
        self.lock()
            .get(bucket)
            .and_then(|b| b.get(key))
            .map(|o| o.etag.clone())
    }

    /// Size of `key`, if present.
    pub fn size(&self, bucket: &str, key: &str) -> Option<u64> {
        self.lock()
            .get(bucket)
            .and_then(|b| b.get(key))
            .map(|o| o.size)
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn version(&self) -> String {
        format!("\"v{}\"", self.next_version.fetch_add(1, Ordering::Relaxed))
    }

    /// All keys of `bucket`, in order.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.lock()
            .get(bucket)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl ObjectStore for MemoryStore {
    async fn check_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        if self.lock().contains_key(bucket) {
            Ok(())
        } else {
            Err(StoreError::NoSuchBucket(bucket.to_owned()))
        }
    }

    async fn list_page(
        &self,
        bucket: &str,
        query: &ListQuery<'_>,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        self.counters.list.fetch_add(1, Ordering::Relaxed);
        let prefix = query.prefix;
        let buckets = self.lock();
        let b = buckets
            .get(bucket)
            .ok_or_else(|| StoreError::NoSuchBucket(bucket.to_owned()))?;
        let lower = match continuation {
            Some(token) => match token.strip_prefix(RESUME_AT) {
                // A withheld page's token carries a sequence number before
                // a second marker (so tokens never repeat, as S3's do not).
                Some(rest) => Bound::Included(
                    rest.split_once(RESUME_AT)
                        .map_or(rest, |(_, first)| first)
                        .to_owned(),
                ),
                None => Bound::Excluded(token),
            },
            None => match query.start_after {
                Some(k) if k >= prefix => Bound::Excluded(k.to_owned()),
                _ => Bound::Included(prefix.to_owned()),
            },
        };
        let mut objects: Vec<ObjectMeta> = Vec::new();
        let mut common_prefixes: Vec<String> = Vec::new();
        // The last entry of the page (key or common prefix) and where the
        // next page resumes after it.
        let mut resume: Option<String> = None;
        let mut next = None;
        for (k, o) in b.range::<String, _>((lower, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            let common = query
                .delimited
                .then(|| k[prefix.len()..].find('/'))
                .flatten()
                .map(|at| &k[..prefix.len() + at + 1]);
            if let Some(cp) = common {
                if common_prefixes.last().map(String::as_str) == Some(cp) {
                    continue;
                }
            }
            if objects.len() + common_prefixes.len() == self.page_size {
                next = resume.take();
                break;
            }
            match common {
                Some(cp) => {
                    common_prefixes.push(cp.to_owned());
                    // Past every key under the common prefix: it ends in
                    // "/", whose successor is "0".
                    resume = Some(format!("{RESUME_AT}{}0", &cp[..cp.len() - 1]));
                }
                None => {
                    objects.push(ObjectMeta {
                        key: k.clone(),
                        etag: o.etag.clone(),
                        size: o.size,
                        last_modified: Some(o.last_modified),
                    });
                    resume = Some(k.clone());
                }
            }
        }
        // The page's first entry, object or common prefix: a withheld page
        // resumes there, so nothing of it is skipped.
        let first = match (objects.first(), common_prefixes.first()) {
            (Some(o), Some(cp)) => Some(o.key.as_str().min(cp.as_str())),
            (Some(o), None) => Some(o.key.as_str()),
            (None, cp) => cp.map(String::as_str),
        };
        if let Some(first) = first {
            let withhold = self
                .empty_pages
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if withhold {
                return Ok(ListPage {
                    objects: Vec::new(),
                    common_prefixes: Vec::new(),
                    next: Some(format!(
                        "{RESUME_AT}{}{RESUME_AT}{first}",
                        self.next_version.fetch_add(1, Ordering::Relaxed)
                    )),
                });
            }
        }
        Ok(ListPage {
            objects,
            common_prefixes,
            next,
        })
    }

    async fn copy_object(&self, req: &CopyRequest<'_>) -> Result<Copied, StoreError> {
        self.counters.copy.fetch_add(1, Ordering::Relaxed);
        let mut buckets = self.lock();
        let src = buckets
            .get(req.source_bucket)
            .ok_or_else(|| StoreError::NoSuchBucket(req.source_bucket.to_owned()))?
            .get(req.source_key)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchKey(req.source_key.to_owned()))?;
        if src.etag != req.source_etag {
            return Err(StoreError::PreconditionFailed);
        }
        let dest = buckets
            .get_mut(req.dest_bucket)
            .ok_or_else(|| StoreError::NoSuchBucket(req.dest_bucket.to_owned()))?;
        let v = self.next_version.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"v{v}\"");
        dest.insert(
            req.dest_key.to_owned(),
            Object {
                etag: etag.clone(),
                size: src.size,
                last_modified: SystemTime::now(),
            },
        );
        Ok(Copied { etag })
    }

    async fn create_multipart(&self, copy: &CopyRequest<'_>) -> Result<String, StoreError> {
        let (bucket, key) = (copy.dest_bucket, copy.dest_key);
        if !self.lock().contains_key(bucket) {
            return Err(StoreError::NoSuchBucket(bucket.to_owned()));
        }
        let id = format!(
            "upload-{}",
            self.next_version.fetch_add(1, Ordering::Relaxed)
        );
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                Upload {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    parts: BTreeMap::new(),
                },
            );
        Ok(id)
    }

    async fn upload_part_copy(&self, part: &PartCopy<'_>) -> Result<String, StoreError> {
        let c = &part.copy;
        let src = self
            .lock()
            .get(c.source_bucket)
            .ok_or_else(|| StoreError::NoSuchBucket(c.source_bucket.to_owned()))?
            .get(c.source_key)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchKey(c.source_key.to_owned()))?;
        if src.etag != c.source_etag {
            return Err(StoreError::PreconditionFailed);
        }
        if part.last_byte < part.first_byte || part.last_byte >= src.size {
            return Err(StoreError::Service {
                code: "InvalidRange".into(),
                status: 416,
                message: format!(
                    "bytes {}-{} of {}",
                    part.first_byte, part.last_byte, src.size
                ),
            });
        }
        let etag = self.version();
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let upload = uploads
            .get_mut(part.upload_id)
            .ok_or_else(|| StoreError::NoSuchKey(format!("upload {}", part.upload_id)))?;
        upload.parts.insert(
            part.part_number,
            (part.last_byte - part.first_byte + 1, etag.clone()),
        );
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Copied, StoreError> {
        let upload = self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id)
            .ok_or_else(|| StoreError::NoSuchKey(format!("upload {upload_id}")))?;
        let mut size = 0;
        for (n, etag) in parts {
            match upload.parts.get(n) {
                Some((s, e)) if e == etag => size += s,
                _ => {
                    return Err(StoreError::Service {
                        code: "InvalidPart".into(),
                        status: 400,
                        message: format!("part {n} of {upload_id}"),
                    })
                }
            }
        }
        debug_assert_eq!((upload.bucket.as_str(), upload.key.as_str()), (bucket, key));
        let etag = format!("{}-{}", self.version().trim_end_matches('"'), parts.len());
        let etag = format!("{etag}\"");
        self.lock()
            .get_mut(bucket)
            .ok_or_else(|| StoreError::NoSuchBucket(bucket.to_owned()))?
            .insert(
                key.to_owned(),
                Object {
                    etag: etag.clone(),
                    size,
                    last_modified: SystemTime::now(),
                },
            );
        Ok(Copied { etag })
    }

    async fn abort_multipart(
        &self,
        _bucket: &str,
        _key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id);
        Ok(())
    }

    async fn unfinished_uploads(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError> {
        let uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = uploads
            .iter()
            .filter(|(_, u)| u.bucket == bucket && u.key == key)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        let buckets = self.lock();
        let o = buckets
            .get(bucket)
            .ok_or_else(|| StoreError::NoSuchBucket(bucket.to_owned()))?
            .get(key)
            .ok_or_else(|| StoreError::NoSuchKey(key.to_owned()))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            etag: o.etag.clone(),
            size: o.size,
            last_modified: Some(o.last_modified),
        })
    }

    async fn delete_objects(
        &self,
        bucket: &str,
        targets: &[DeleteTarget],
    ) -> Result<Vec<DeleteFailure>, StoreError> {
        self.counters.delete.fetch_add(1, Ordering::Relaxed);
        let mut buckets = self.lock();
        let b = buckets
            .get_mut(bucket)
            .ok_or_else(|| StoreError::NoSuchBucket(bucket.to_owned()))?;
        let mut failures = Vec::new();
        for t in targets {
            // As S3 Express: an unconditional delete of a missing key
            // succeeds, a fenced one fails for that key with 404 NoSuchKey.
            let refusal = match (&t.etag, b.get(&t.key)) {
                (Some(want), Some(o)) if *want != o.etag => Some((
                    "PreconditionFailed",
                    "the object changed since it was cached",
                )),
                (Some(_), None) => Some(("NoSuchKey", "the object does not exist")),
                _ => None,
            };
            match refusal {
                Some((code, message)) => failures.push(DeleteFailure {
                    key: t.key.clone(),
                    code: code.into(),
                    message: message.into(),
                }),
                None => {
                    b.remove(&t.key);
                }
            }
        }
        Ok(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{run_all, Capabilities};

    #[tokio::test]
    async fn pages_cover_every_key_once_in_order() {
        let s = MemoryStore::with_page_size(2);
        for k in ["a/1", "a/2", "a/3", "a/4", "a/5", "b/1"] {
            s.put("src", k, 1);
        }
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = s
                .list_page("src", &ListQuery::prefix("a/"), token)
                .await
                .unwrap();
            seen.extend(page.objects.into_iter().map(|o| o.key));
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(seen, ["a/1", "a/2", "a/3", "a/4", "a/5"]);
    }

    /// Every page, following tokens; panics on more than `limit` pages.
    async fn all_pages(s: &MemoryStore, prefix: &str, limit: usize) -> Vec<ListPage> {
        let mut pages = Vec::new();
        let mut token = None;
        loop {
            let page = s
                .list_page("src", &ListQuery::prefix(prefix), token)
                .await
                .unwrap();
            token = page.next.clone();
            pages.push(page);
            assert!(pages.len() <= limit, "more than {limit} pages");
            if token.is_none() {
                return pages;
            }
        }
    }

    fn keys(pages: &[ListPage]) -> Vec<(usize, Vec<&str>)> {
        pages
            .iter()
            .map(|p| {
                let keys: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
                (keys.len(), keys)
            })
            .collect()
    }

    #[tokio::test]
    async fn empty_pages_before_serves_empty_truncated_pages_that_resume_in_place() {
        let s = MemoryStore::with_page_size(2);
        for k in ["a/1", "a/2", "a/3", "b/1"] {
            s.put("src", k, 1);
        }

        // Two empty pages: the first call's, then the one after a full page.
        s.empty_pages_before(1);
        let first = s
            .list_page("src", &ListQuery::prefix("a/"), None)
            .await
            .unwrap();
        assert!(first.objects.is_empty(), "{first:?}");
        assert!(first.next.is_some(), "an empty page is still truncated");
        s.empty_pages_before(1);
        let pages = all_pages(&s, "a/", 10).await;
        assert_eq!(
            keys(&pages),
            [(0, vec![]), (2, vec!["a/1", "a/2"]), (1, vec!["a/3"])],
            "the empty first page's token lists from the start"
        );

        s.empty_pages_before(3);
        let mut token = first.next;
        let mut seen = Vec::new();
        let mut empty = 0;
        loop {
            let page = s
                .list_page("src", &ListQuery::prefix("a/"), token)
                .await
                .unwrap();
            if page.objects.is_empty() {
                empty += 1;
                assert!(page.next.is_some(), "an injected page is truncated");
            }
            seen.extend(page.objects.into_iter().map(|o| o.key));
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(
            empty, 3,
            "each of the next 3 pages with objects came empty first"
        );
        assert_eq!(
            seen,
            ["a/1", "a/2", "a/3"],
            "resuming after empty pages skips and repeats nothing"
        );

        // A page with no objects anyway is not counted.
        s.empty_pages_before(1);
        let none = s
            .list_page("src", &ListQuery::prefix("c/"), None)
            .await
            .unwrap();
        assert!(none.objects.is_empty() && none.next.is_none(), "{none:?}");
        let pages = all_pages(&s, "b/", 10).await;
        assert_eq!(keys(&pages), [(0, vec![]), (1, vec!["b/1"])]);
        let pages = all_pages(&s, "b/", 10).await;
        assert_eq!(keys(&pages), [(1, vec!["b/1"])], "the opt-in is used up");
    }

    #[tokio::test]
    async fn fenced_delete_of_a_missing_key_fails_like_s3_express() {
        let s = MemoryStore::default();
        s.create_bucket("dir");
        let failures = s
            .delete_objects(
                "dir",
                &[
                    DeleteTarget {
                        key: "gone".into(),
                        etag: Some("\"v1\"".into()),
                    },
                    DeleteTarget {
                        key: "also-gone".into(),
                        etag: None,
                    },
                ],
            )
            .await
            .unwrap();
        let codes: Vec<(&str, &str)> = failures
            .iter()
            .map(|f| (f.key.as_str(), f.code.as_str()))
            .collect();
        assert_eq!(codes, [("gone", "NoSuchKey")]);
    }

    #[tokio::test]
    async fn conforms() {
        let s = MemoryStore::default();
        let caps = Capabilities {
            fenced_delete: true,
            copy_if_match: true,
        };
        run_all(&s, &s, caps).await;
    }

    #[tokio::test]
    async fn conforms_with_small_pages() {
        let s = MemoryStore::with_page_size(3);
        let caps = Capabilities {
            fenced_delete: true,
            copy_if_match: true,
        };
        run_all(&s, &s, caps).await;
    }

    #[tokio::test]
    async fn conforms_with_empty_truncated_pages() {
        let s = MemoryStore::with_page_size(100);
        s.empty_pages_before(4);
        let caps = Capabilities {
            fenced_delete: true,
            copy_if_match: true,
        };
        run_all(&s, &s, caps).await;
    }
}
