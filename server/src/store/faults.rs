//! A fault-injecting [`ObjectStore`] wrapper: fails chosen calls with chosen
//! errors, a chosen number of times, delays calls, and counts every call, so
//! tests can show how the warm path handles throttling, server errors,
//! terminal refusals and slow copies, and how many requests it made.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::gate::{Gate, Pass};

use super::{
    Copied, CopyRequest, DeleteFailure, DeleteTarget, ListPage, ListQuery, ObjectMeta, ObjectStore,
    PartCopy, StoreError,
};

/// Which call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Copy,
    Delete,
    CreateMultipart,
    PartCopy,
    CompleteMultipart,
    AbortMultipart,
    ListUploads,
    Head,
    CheckBucket,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Copy => "copy",
            Op::Delete => "delete",
            Op::CreateMultipart => "create_multipart",
            Op::PartCopy => "part_copy",
            Op::CompleteMultipart => "complete_multipart",
            Op::AbortMultipart => "abort_multipart",
            Op::ListUploads => "list_uploads",
            Op::Head => "head",
            Op::CheckBucket => "check_bucket",
        }
    }
}

#[derive(Debug)]
struct Rule {
    /// Fail only every `every`-th matching call (1 = each one).
    every: u64,
    seen: u64,
    op: Op,
    /// Only calls about this key (copy source key) match; `None` = any.
    key: Option<String>,
    error: StoreError,
    /// How many more calls fail; `None` = every call.
    remaining: Option<u64>,
    /// When set, only a key's first call counts (its retries pass through
    /// untouched): the keys already counted.
    first_calls_only: Option<HashSet<String>>,
}

/// Calls that reached the wrapper, per operation (faulted ones included).
#[derive(Debug, Default)]
pub struct Calls {
    pub list: AtomicU64,
    pub copy: AtomicU64,
    pub delete: AtomicU64,
    pub part_copy: AtomicU64,
    /// Multipart create, complete, abort and head.
    pub other: AtomicU64,
    /// Listings under way now, and the most at once so far.
    pub lists_in_flight: AtomicU64,
    pub peak_lists_in_flight: AtomicU64,
    /// Copies (CopyObject and UploadPartCopy) under way now, the most at
    /// once so far, and the most parts at once.
    pub copies_in_flight: AtomicU64,
    pub peak_copies_in_flight: AtomicU64,
    pub parts_in_flight: AtomicU64,
    pub peak_parts_in_flight: AtomicU64,
}

/// Counts one call under way until dropped (also when the caller drops
/// the call's future before it ends).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(now: &'a AtomicU64, peak: &AtomicU64) -> Self {
        peak.fetch_max(now.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
        Self(now)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wraps any store and injects faults by rule.
#[derive(Debug)]
pub struct FaultStore<S> {
    inner: S,
    rules: Mutex<Vec<Rule>>,
    delays: Mutex<Vec<(Op, Duration)>>,
    /// Bytes per second one copy request moves, if set: each copy and part
    /// takes its bytes' time on top of any delay (S3's copy cost).
    copy_rate: Mutex<Option<f64>>,
    /// Calls whose effect is applied and whose reply is then lost: op and
    /// how many more.
    lost_replies: Mutex<Vec<(Op, u64)>>,
    /// Faults injected so far.
    pub injected: AtomicU64,
    pub calls: Calls,
    gate: Option<Arc<dyn Gate>>,
}

impl<S> FaultStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rules: Mutex::default(),
            delays: Mutex::default(),
            copy_rate: Mutex::default(),
            lost_replies: Mutex::default(),
            injected: AtomicU64::new(0),
            calls: Calls::default(),
            gate: None,
        }
    }

    /// Passes every call through `gate` first.
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Fails the next `times` calls of `op` (about `key`, if given) with
    /// `error`; `times = None` fails them all.
    pub fn fail(&self, op: Op, key: Option<&str>, error: StoreError, times: Option<u64>) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Rule {
                every: 1,
                seen: 0,
                op,
                key: key.map(str::to_owned),
                error,
                remaining: times,
                first_calls_only: None,
            });
    }

    /// Fails the first call about every `n`-th key of `op` with the next
    /// error of `errors`, in turn: a steady fault rate (n = 10 is 10% of
    /// keys) whose retries always get through. Counting first calls only
    /// keeps the outcome independent of scheduling: counting every call,
    /// a queue of retries that cycles in step with `n` hands one key every
    /// fault until it runs out of attempts.
    pub fn fail_every(&self, op: Op, n: u64, errors: &[StoreError]) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let k = errors.len().max(1) as u64;
        for (i, error) in errors.iter().enumerate() {
            // Rule i fires on calls n*(i+1), n*(i+1+k), ...: interleaved.
            rules.push(Rule {
                every: n * k,
                seen: n * k - n * (i as u64 + 1),
                op,
                key: None,
                error: error.clone(),
                remaining: None,
                first_calls_only: Some(HashSet::new()),
            });
        }
    }

    /// The next `times` calls of `op` reach the inner store (their effect
    /// happens) and then fail as if the reply was lost on the way back (a
    /// reset connection): the caller cannot tell whether they happened.
    pub fn lose_replies(&self, op: Op, times: u64) {
        self.lost_replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((op, times));
    }

    /// After the inner call: turns its result into a lost reply if a rule
    /// says so.
    fn after<T>(&self, op: Op, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut lost = self.lost_replies.lock().unwrap_or_else(|e| e.into_inner());
        match lost.iter_mut().find(|(o, n)| *o == op && *n > 0) {
            Some((_, n)) => {
                *n -= 1;
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Transport(
                    "connection reset after the request was sent (injected: reply lost)".into(),
                ))
            }
            None => result,
        }
    }

    /// Delays every call of `op` by `by` (before any fault applies).
    pub fn delay(&self, op: Op, by: Duration) {
        self.delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((op, by));
    }

    /// Makes every CopyObject and UploadPartCopy take its bytes at
    /// `bytes_per_second`, as S3's server-side copy does.
    pub fn copy_rate(&self, bytes_per_second: f64) {
        *self.copy_rate.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes_per_second);
    }

    /// Sleeps for `bytes` at the copy rate, if one is set.
    async fn move_bytes(&self, bytes: u64) {
        let rate = *self.copy_rate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rate) = rate {
            tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate)).await;
        }
    }

    async fn enter(&self, op: Op, key: Option<&str>) -> Result<Option<Pass>, StoreError> {
        let pass = match &self.gate {
            Some(g) => Some(g.enter(op.name(), key.unwrap_or_default()).await),
            None => None,
        };
        let counter = match op {
            Op::List => &self.calls.list,
            Op::Copy => &self.calls.copy,
            Op::Delete => &self.calls.delete,
            Op::PartCopy => &self.calls.part_copy,
            _ => &self.calls.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let delay: Duration = self
            .delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, d)| *d)
            .sum();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.check(op, key)?;
        Ok(pass)
    }

    /// Removes every rule and delay.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.lost_replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn check(&self, op: Op, key: Option<&str>) -> Result<(), StoreError> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        // Every matching rule counts the call, even when an earlier one
        // fails it: rules written to interleave stay in step.
        let mut fault = None;
        for rule in rules.iter_mut() {
            let key_matches = rule.key.is_none() || rule.key.as_deref() == key;
            if rule.op != op || !key_matches || rule.remaining == Some(0) {
                continue;
            }
            if let Some(counted) = rule.first_calls_only.as_mut() {
                if !counted.insert(key.unwrap_or_default().to_owned()) {
                    continue;
                }
            }
            rule.seen += 1;
            if fault.is_some() || rule.seen % rule.every != 0 {
                continue;
            }
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            fault = Some(rule.error.clone());
        }
        match fault {
            Some(e) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl<S: ObjectStore> ObjectStore for FaultStore<S> {
    async fn check_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let _pass = self.enter(Op::CheckBucket, Some(bucket)).await?;
        self.inner.check_bucket(bucket).await
    }

    async fn list_page(
        &self,
        bucket: &str,
        query: &ListQuery<'_>,
        continuation: Option<String>,
    ) -> Result<ListPage, StoreError> {
        // Counted from before the injected delay, which is where listings
        // under way at once overlap.
        let _listing = InFlight::enter(
            &self.calls.lists_in_flight,
            &self.calls.peak_lists_in_flight,
        );
        let _pass = self.enter(Op::List, Some(query.prefix)).await?;
        self.inner.list_page(bucket, query, continuation).await
    }

    async fn copy_object(&self, req: &CopyRequest<'_>) -> Result<Copied, StoreError> {
        let _copying = InFlight::enter(
            &self.calls.copies_in_flight,
            &self.calls.peak_copies_in_flight,
        );
        let _pass = self.enter(Op::Copy, Some(req.source_key)).await?;
        if self
            .copy_rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            let size = self
                .inner
                .head_object(req.source_bucket, req.source_key)
                .await?
                .size;
            self.move_bytes(size).await;
        }
        let r = self.inner.copy_object(req).await;
        self.after(Op::Copy, r)
    }

    async fn create_multipart(&self, copy: &CopyRequest<'_>) -> Result<String, StoreError> {
        let _pass = self.enter(Op::CreateMultipart, Some(copy.dest_key)).await?;
        self.inner.create_multipart(copy).await
    }

    async fn upload_part_copy(&self, part: &PartCopy<'_>) -> Result<String, StoreError> {
        let _copying = InFlight::enter(
            &self.calls.copies_in_flight,
            &self.calls.peak_copies_in_flight,
        );
        let _part = InFlight::enter(
            &self.calls.parts_in_flight,
            &self.calls.peak_parts_in_flight,
        );
        let _pass = self.enter(Op::PartCopy, Some(part.copy.source_key)).await?;
        self.move_bytes(part.last_byte - part.first_byte + 1).await;
        self.inner.upload_part_copy(part).await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Copied, StoreError> {
        let _pass = self.enter(Op::CompleteMultipart, Some(key)).await?;
        self.inner
            .complete_multipart(bucket, key, upload_id, parts)
            .await
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        let _pass = self.enter(Op::AbortMultipart, Some(key)).await?;
        self.inner.abort_multipart(bucket, key, upload_id).await
    }

    async fn unfinished_uploads(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError> {
        let _pass = self.enter(Op::ListUploads, Some(key)).await?;
        self.inner.unfinished_uploads(bucket, key).await
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta, StoreError> {
        let _pass = self.enter(Op::Head, Some(key)).await?;
        self.inner.head_object(bucket, key).await
    }

    async fn delete_objects(
        &self,
        bucket: &str,
        targets: &[DeleteTarget],
    ) -> Result<Vec<DeleteFailure>, StoreError> {
        let _pass = self
            .enter(Op::Delete, targets.first().map(|t| t.key.as_str()))
            .await?;
        let r = self.inner.delete_objects(bucket, targets).await;
        self.after(Op::Delete, r)
    }
}
