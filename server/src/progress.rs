//! Live progress of one operation: counters updated lock-free by the copy
//! tasks, published as `WarmProgress` snapshots on a watch channel that any
//! number of RPC streams follow (a slow reader just sees fewer, newer
//! snapshots).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use expresscache::proto::v1 as pb;
use tokio::sync::watch;

use crate::exec::Activity;
use crate::index::Millis;

/// Failed keys carried inline in the final message; the rest are counted.
pub const MAX_INLINE_FAILURES: usize = 100;

#[derive(Debug)]
pub struct Progress {
    operation_id: String,
    started_at: SystemTime,
    started: Instant,
    phase: AtomicU8,
    pub listed: AtomicU64,
    pub bytes_listed: AtomicU64,
    pub hits: AtomicU64,
    pub to_copy: AtomicU64,
    pub bytes_to_copy: AtomicU64,
    pub copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub failed: AtomicU64,
    pub shared: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    concurrency_limit: AtomicU64,
    failures: Mutex<Vec<pb::KeyFailure>>,
    /// Earliest expiry of this warm's leases; 0 until written.
    lease_expires_at: AtomicI64,
    /// When work last moved (shared with the copy engine's attempts).
    activity: Arc<Activity>,
    /// (prefix, epoch) of each lease this warm wrote first.
    lease_epochs: Mutex<Vec<(String, String)>>,
    /// The finished operation whose request_id this one took over.
    superseded: std::sync::OnceLock<String>,
    tx: watch::Sender<pb::WarmProgress>,
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl Progress {
    /// A fresh operation in phase QUEUED, and the channel its snapshots go to.
    pub fn new(operation_id: String) -> (Self, watch::Receiver<pb::WarmProgress>) {
        let started_at = SystemTime::now();
        let first = pb::WarmProgress {
            operation_id: operation_id.clone(),
            phase: pb::Phase::Queued as i32,
            counters: Some(pb::Counters::default()),
            started_at: Some(timestamp(started_at)),
            ..Default::default()
        };
        let (tx, rx) = watch::channel(first);
        let p = Self {
            operation_id,
            started_at,
            started: Instant::now(),
            phase: AtomicU8::new(pb::Phase::Queued as u8),
            listed: AtomicU64::new(0),
            bytes_listed: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            to_copy: AtomicU64::new(0),
            bytes_to_copy: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            concurrency_limit: AtomicU64::new(0),
            failures: Mutex::default(),
            lease_expires_at: AtomicI64::new(0),
            activity: Arc::default(),
            lease_epochs: Mutex::default(),
            superseded: std::sync::OnceLock::new(),
            tx,
        };
        (p, rx)
    }

    pub fn subscribe(&self) -> watch::Receiver<pb::WarmProgress> {
        self.tx.subscribe()
    }

    pub fn set_phase(&self, phase: pb::Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.publish();
    }

    pub fn set_lease_expiry(&self, at: Millis) {
        self.lease_expires_at.store(at, Ordering::Relaxed);
    }

    pub fn set_concurrency_limit(&self, limit: usize) {
        self.concurrency_limit
            .store(limit as u64, Ordering::Relaxed);
    }

    /// The epoch this warm's first write gave the lease on `prefix`.
    pub fn lease_epoch(&self, prefix: &str) -> Option<String> {
        self.lease_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, e)| e.clone())
    }

    /// Remembers the epoch of a lease this warm wrote first.
    pub fn add_lease_epoch(&self, prefix: &str, epoch: &str) {
        self.lease_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((prefix.to_owned(), epoch.to_owned()));
    }

    /// (prefix, epoch) of each lease this warm wrote.
    pub fn lease_epochs(&self) -> Vec<(String, String)> {
        self.lease_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records that this operation took `id`'s request_id over.
    pub fn set_superseded(&self, id: &str) {
        let _ = self.superseded.set(id.to_owned());
    }

    /// Notes a sign of progress: a listing page, an index answer while
    /// waiting for another holder (the copy engine notes each attempt).
    pub fn touch(&self) {
        self.activity.touch();
    }

    /// How long since the last sign of progress (or since the start).
    pub fn idle(&self) -> Duration {
        self.activity.idle()
    }

    /// The activity clock, for the copy engine's attempts.
    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a key that could not be copied.
    pub fn fail(&self, key: &str, code: &str, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < MAX_INLINE_FAILURES {
            f.push(pb::KeyFailure {
                key: key.to_owned(),
                code: code.to_owned(),
                message,
            });
        }
    }

    fn counters(&self) -> pb::Counters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        pb::Counters {
            objects_listed: g(&self.listed),
            objects_hit: g(&self.hits),
            objects_to_copy: g(&self.to_copy),
            objects_copied: g(&self.copied),
            objects_failed: g(&self.failed),
            bytes_copied: g(&self.bytes_copied),
            bytes_to_copy: g(&self.bytes_to_copy),
            bytes_listed: g(&self.bytes_listed),
            objects_shared: g(&self.shared),
            copy_retries: g(&self.retries),
            throttle_events: g(&self.throttled),
        }
    }

    /// The current state as a progress message.
    pub fn snapshot(&self) -> pb::WarmProgress {
        let counters = self.counters();
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64().max(1e-3);
        let objects_per_second = counters.objects_copied as f64 / secs;
        let bytes_per_second = counters.bytes_copied as f64 / secs;
        let remaining = counters.objects_to_copy.saturating_sub(
            counters.objects_copied + counters.objects_failed + counters.objects_shared,
        );
        let eta = (objects_per_second > 0.0 && remaining > 0).then(|| {
            duration(Duration::from_secs_f64(
                remaining as f64 / objects_per_second,
            ))
        });
        pb::WarmProgress {
            operation_id: self.operation_id.clone(),
            phase: i32::from(self.phase.load(Ordering::Relaxed)),
            counters: Some(counters),
            started_at: Some(timestamp(self.started_at)),
            elapsed: Some(duration(elapsed)),
            objects_per_second,
            bytes_per_second,
            eta,
            concurrency_limit: u32::try_from(self.concurrency_limit.load(Ordering::Relaxed))
                .unwrap_or(u32::MAX),
            lease_expires_at: Some(self.lease_expires_at.load(Ordering::Relaxed))
                .filter(|&at| at > 0)
                .map(crate::index::timestamp),
            superseded_operation_id: self.superseded.get().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Sends the current snapshot to every follower.
    pub fn publish(&self) {
        self.tx.send_replace(self.snapshot());
    }

    /// The final message: phase DONE with `outcome`, failures and `error`.
    pub fn finish(&self, outcome: pb::Outcome, error: Option<String>) -> pb::WarmProgress {
        self.phase.store(pb::Phase::Done as u8, Ordering::Relaxed);
        let mut last = self.snapshot();
        last.eta = None;
        last.outcome = outcome as i32;
        last.error = error.unwrap_or_default();
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let total = self.failed.load(Ordering::Relaxed);
        last.failures_omitted = total.saturating_sub(failures.len() as u64);
        last.failures = failures;
        self.tx.send_replace(last.clone());
        last
    }
}
