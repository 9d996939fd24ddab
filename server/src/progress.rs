//! Live progress of one operation: counters updated lock-free by the copy
//! tasks, published as [`OperationState`] snapshots on a watch channel that
//! any number of followers read (a slow reader just sees fewer, newer
//! snapshots).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::core::clock::{Clock, Millis};
use crate::core::operation::{
    Counters, KeyFailure, OperationState, Outcome, Phase, MAX_INLINE_FAILURES,
};
use crate::engine::Activity;

#[derive(Debug)]
pub struct Progress {
    operation_id: String,
    /// When it started, as a timestamp (the injected clock).
    started_at: Millis,
    /// When it started, for elapsed time: monotonic, so a wall-clock step
    /// does not distort rates and estimates (and tests pause it).
    started: tokio::time::Instant,
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
    failures: Mutex<Vec<KeyFailure>>,
    /// Earliest expiry of this warm's leases; 0 until written.
    lease_expires_at: AtomicI64,
    /// When work last moved (shared with the copy engine's attempts).
    activity: Arc<Activity>,
    /// (prefix, epoch) of each lease this warm wrote first.
    lease_epochs: Mutex<Vec<(String, String)>>,
    /// The finished operation whose request_id this one took over.
    superseded: std::sync::OnceLock<String>,
    /// What of the counters the metrics already hold.
    exported: crate::metrics::CounterExport,
    /// The recent warm this one was answered from.
    fresh_from: std::sync::OnceLock<String>,
    /// The running operation whose work this one follows (its counters
    /// are that one's, so the metrics do not count them again).
    joined: Mutex<Option<String>>,
    /// Waiting for a round of the same data or for a running slot: it
    /// copies nothing meanwhile, so its run needs fencing no more than a
    /// joiner's.
    waiting: AtomicBool,
    /// The running operation that does part of this one's work (the
    /// prefixes it covers), and that part's counters: shown with this
    /// warm's own, but not its work.
    part: Mutex<Option<(String, Counters)>>,
    /// This attempt offered itself to other replicas' warms (its offer
    /// must be withdrawn before it lists).
    offered: std::sync::atomic::AtomicBool,
    /// The S3 Batch Operations job copying its keys, and its progress.
    batch_job: Mutex<Option<String>>,
    /// The requested prefixes the listing found empty.
    empty_prefixes: Mutex<Vec<String>>,
    job_progress: Mutex<Option<crate::core::operation::JobProgress>>,
    /// Signalled when the state should reach the operation log now, not at
    /// the next checkpoint (a job id a crash must not lose).
    pub checkpoint_now: tokio::sync::Notify,
    tx: watch::Sender<OperationState>,
}

const PHASES: [Phase; 4] = [Phase::Queued, Phase::Planning, Phase::Copying, Phase::Done];

fn phase_code(p: Phase) -> u8 {
    PHASES.iter().position(|&q| q == p).unwrap_or(0) as u8
}

impl Progress {
    /// A fresh operation in phase Queued, started now by `clock`, and the
    /// channel its snapshots go to.
    pub fn new(
        operation_id: String,
        clock: Arc<dyn Clock>,
    ) -> (Self, watch::Receiver<OperationState>) {
        let started_at = clock.now();
        let started = tokio::time::Instant::now();
        let (tx, rx) = watch::channel(OperationState::queued(&operation_id, started_at));
        let p = Self {
            operation_id,
            started_at,
            started,
            phase: AtomicU8::new(phase_code(Phase::Queued)),
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
            exported: crate::metrics::CounterExport::starting_at(Counters::default()),
            joined: Mutex::new(None),
            waiting: AtomicBool::new(false),
            part: Mutex::new(None),
            offered: std::sync::atomic::AtomicBool::new(false),
            batch_job: Mutex::new(None),
            empty_prefixes: Mutex::default(),
            job_progress: Mutex::new(None),
            checkpoint_now: tokio::sync::Notify::new(),
            fresh_from: std::sync::OnceLock::new(),
            tx,
        };
        (p, rx)
    }

    /// Adds what the counters grew by since the last call to the metrics
    /// (so they move while a long warm runs).
    pub fn export_metrics(&self) {
        // Under the lock that set_joined takes: never the joined warm's
        // counters, which are not this warm's work.
        let joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        if joined.is_none() {
            self.exported.export(&self.counters());
        }
    }

    /// The phase now (Done only once finished).
    pub fn phase(&self) -> Phase {
        if self.is_finished() {
            return Phase::Done;
        }
        PHASES[usize::from(self.phase.load(Ordering::Relaxed)).min(PHASES.len() - 1)]
    }

    /// The operation this one joined, if it follows another's work.
    pub fn joined(&self) -> Option<String> {
        self.joined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }


    /// Whether the warm waits (for the round under way, or for a running
    /// slot) rather than doing any work.
    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Marks the warm waiting, or no longer.
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    /// Follows `id`'s work from now on (`None`: does its own again, from
    /// zero).
    pub fn set_joined(&self, id: Option<&str>) {
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        if id.is_none() {
            for c in [
                &self.listed,
                &self.bytes_listed,
                &self.hits,
                &self.to_copy,
                &self.bytes_to_copy,
                &self.copied,
                &self.bytes_copied,
                &self.failed,
                &self.shared,
                &self.retries,
                &self.throttled,
            ] {
                c.store(0, Ordering::Relaxed);
            }
            self.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        // Counters zeroed before the mark goes: an export in between sees
        // either the mark or zeros.
        *joined = id.map(str::to_owned);
        drop(joined);
        self.publish();
    }

    /// Shows the joined operation's progress as this one's: its counters,
    /// phase (short of Done) and concurrency.
    pub fn mirror(&self, s: &OperationState) {
        let c = &s.counters;
        for (atomic, v) in [
            (&self.listed, c.objects_listed),
            (&self.bytes_listed, c.bytes_listed),
            (&self.hits, c.objects_hit),
            (&self.to_copy, c.objects_to_copy),
            (&self.bytes_to_copy, c.bytes_to_copy),
            (&self.copied, c.objects_copied),
            (&self.bytes_copied, c.bytes_copied),
            (&self.failed, c.objects_failed),
            (&self.shared, c.objects_shared),
            (&self.retries, c.copy_retries),
            (&self.throttled, c.throttle_events),
        ] {
            atomic.store(v, Ordering::Relaxed);
        }
        if s.phase != Phase::Done {
            self.phase.store(phase_code(s.phase), Ordering::Relaxed);
        }
        self.set_concurrency_limit(s.concurrency_limit as usize);
    }

    /// Whether another warm does part of this one's work.
    pub fn has_part(&self) -> bool {
        self.part
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Shows `counters` of operation `id`, which does part of this
    /// warm's work, with this warm's own (`None`: no longer).
    pub fn set_part(&self, part: Option<(&str, Counters)>) {
        *self.part.lock().unwrap_or_else(|e| e.into_inner()) =
            part.map(|(id, c)| (id.to_owned(), c));
        self.publish();
    }

    /// Sets the failed keys outright: `failed` of them, the first listed.
    pub fn set_failures(&self, failed: u64, failures: Vec<KeyFailure>) {
        self.failed.store(failed, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *f = failures;
        f.truncate(MAX_INLINE_FAILURES);
    }

    /// Answered from recent warm `id` (nothing listed): shows what that
    /// one found, all of it cached.
    pub fn set_fresh_from(&self, id: &str, found: &OperationState) {
        let _ = self.fresh_from.set(id.to_owned());
        let c = &found.counters;
        self.listed.store(c.objects_listed, Ordering::Relaxed);
        self.bytes_listed.store(c.bytes_listed, Ordering::Relaxed);
        self.hits.store(c.objects_listed, Ordering::Relaxed);
        // Shown, not done: the metrics count work.
        self.exported.skip_to(&self.counters());
    }

    /// Whether the final state was published.
    pub fn is_finished(&self) -> bool {
        self.tx.borrow().is_done()
    }

    pub fn subscribe(&self) -> watch::Receiver<OperationState> {
        self.tx.subscribe()
    }

    /// Moves to `phase` (Queued, Planning or Copying: Done is what
    /// [`finish`](Self::finish) returns).
    pub fn set_phase(&self, phase: Phase) {
        debug_assert!(phase != Phase::Done, "finish() ends an operation");
        self.phase.store(phase_code(phase), Ordering::Relaxed);
        self.publish();
    }
    /// The earliest expiry of this warm's leases as last written; 0 before.
    pub fn lease_expiry(&self) -> Millis {
        self.lease_expires_at.load(Ordering::Relaxed)
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

    /// Remembers the epoch of a lease this warm wrote first (every
    /// snapshot, and so every checkpoint, carries them).
    pub fn add_lease_epoch(&self, prefix: &str, epoch: &str) {
        self.lease_epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((prefix.to_owned(), epoch.to_owned()));
        // In the log soon, not at the next (for a joiner, rare)
        // checkpoint: a takeover without them would revive a lease an
        // Evict ended.
        self.checkpoint_now.notify_one();
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
            f.push(KeyFailure {
                key: key.to_owned(),
                code: code.to_owned(),
                message,
            });
        }
    }

    fn counters(&self) -> Counters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            objects_listed: g(&self.listed),
            objects_hit: g(&self.hits),
            objects_to_copy: g(&self.to_copy),
            objects_copied: g(&self.copied),
            objects_failed: g(&self.failed),
            objects_shared: g(&self.shared),
            bytes_listed: g(&self.bytes_listed),
            bytes_to_copy: g(&self.bytes_to_copy),
            bytes_copied: g(&self.bytes_copied),
            copy_retries: g(&self.retries),
            throttle_events: g(&self.throttled),
        }
    }

    /// The current state (failures are carried only by the final one).
    pub fn snapshot(&self) -> OperationState {
        let elapsed = self.started.elapsed();
        let part = self.part.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut counters = self.counters();
        if let Some((_, c)) = &part {
            counters.add(c);
        }
        OperationState {
            operation_id: self.operation_id.clone(),
            phase: PHASES[usize::from(self.phase.load(Ordering::Relaxed)).min(2)],
            counters,
            outcome: None,
            failures: Vec::new(),
            failures_omitted: 0,
            error: None,
            started_at: self.started_at,
            elapsed,
            concurrency_limit: u32::try_from(self.concurrency_limit.load(Ordering::Relaxed))
                .unwrap_or(u32::MAX),
            lease_expires_at: Some(self.lease_expires_at.load(Ordering::Relaxed))
                .filter(|&at| at > 0),
            superseded_operation_id: self.superseded.get().cloned(),
            joined_operation_id: self.joined().or(part.map(|(id, _)| id)),
            fresh_from_operation_id: self.fresh_from.get().cloned(),
            batch_job_id: self.batch_job(),
            batch_job: self
                .job_progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            empty_prefixes: self.empty_prefixes(),
            lease_epochs: self.lease_epochs(),
        }
    }

    /// The requested prefixes the listing found empty.
    pub fn empty_prefixes(&self) -> Vec<String> {
        self.empty_prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds requested prefixes a listing found empty (a warm split in two
    /// parts reports each part's).
    pub fn add_empty_prefixes(&self, prefixes: Vec<String>) {
        let mut empty = self
            .empty_prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for p in prefixes {
            if !empty.contains(&p) {
                empty.push(p);
            }
        }
    }

    /// Shows the job's progress as last described.
    pub fn set_job_progress(&self, p: crate::core::operation::JobProgress) {
        *self.job_progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// The S3 Batch Operations job copying its keys, if any.
    pub fn batch_job(&self) -> Option<String> {
        self.batch_job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the job copying its keys, and asks for a checkpoint now.
    pub fn set_batch_job(&self, id: Option<&str>) {
        *self.batch_job.lock().unwrap_or_else(|e| e.into_inner()) = id.map(str::to_owned);
        self.checkpoint_now.notify_one();
    }

    /// Notes that this attempt offered itself to other replicas (`true`),
    /// or withdrew; returns whether it had.
    pub fn set_offered(&self, offered: bool) -> bool {
        self.offered.swap(offered, Ordering::SeqCst)
    }

    /// Whether this attempt offered itself to other replicas and has not
    /// withdrawn.
    pub fn offered(&self) -> bool {
        self.offered.load(Ordering::SeqCst)
    }

    /// The state to show now: the final one once finished, else a fresh
    /// snapshot.
    pub fn current(&self) -> OperationState {
        let sent = self.tx.borrow();
        if sent.is_done() {
            return sent.clone();
        }
        drop(sent);
        self.snapshot()
    }

    /// Sends the current snapshot to every follower.
    pub fn publish(&self) {
        self.tx.send_replace(self.snapshot());
    }

    /// The final state: phase Done with `outcome`, failures and `error`;
    /// not yet shown to followers (see [`publish_final`](Self::publish_final)).
    pub fn final_state(&self, outcome: Outcome, error: Option<String>) -> OperationState {
        // Done exists only here, with its outcome: a snapshot taken
        // meanwhile (a checkpoint, a status call) must never show Done
        // without one, or a checkpoint would record it as the end.
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let total = self.failed.load(Ordering::Relaxed);
        let mut last = self.snapshot().ended(outcome, error);
        last.failures_omitted = total.saturating_sub(failures.len() as u64);
        last.failures = failures;
        last
    }

    /// Shows `last` (from [`final_state`](Self::final_state)) to every
    /// follower.
    pub fn publish_final(&self, last: OperationState) {
        self.tx.send_replace(last);
    }

    /// [`final_state`](Self::final_state), published at once.
    #[cfg(any(test, feature = "testing"))]
    pub fn finish(&self, outcome: Outcome, error: Option<String>) -> OperationState {
        let last = self.final_state(outcome, error);
        self.publish_final(last.clone());
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_final_state_is_done_and_it_has_its_outcome() {
        let (p, rx) = Progress::new("op".into(), Arc::new(crate::core::clock::SystemClock));
        p.set_phase(Phase::Copying);
        let last = p.finish(Outcome::Succeeded, None);
        assert_eq!(
            (last.phase, last.outcome),
            (Phase::Done, Some(Outcome::Succeeded))
        );
        assert_eq!(*rx.borrow(), last, "followers get the final state");
        let later = p.snapshot();
        assert!(
            !later.is_done(),
            "a snapshot after (or during) finish is no outcome-less Done"
        );
        assert_eq!(p.current(), last, "what status shows once finished");
    }
}
