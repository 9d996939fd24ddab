//! A warm operation as the service knows it: its request, where it stands
//! (phase, counters, failures) and how it ended. These are domain values:
//! `api/` converts them to and from protobuf, the index stores them in its
//! own versioned encoding, so neither the wire nor the storage format leaks
//! into the code that runs warms.

use std::time::Duration;

use expresscache::WarmSpec;

use crate::core::clock::Millis;

/// Failed keys carried inline in an operation's state; the rest are counted.
pub const MAX_INLINE_FAILURES: usize = 100;

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, waiting to start.
    Queued,
    /// Listing the source and comparing it with the index.
    Planning,
    /// Copying (listing may still go on for later pages).
    Copying,
    /// Finished; the state's `outcome` says how.
    Done,
}

/// How a finished operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every listed object is present and current.
    Succeeded,
    /// Some keys failed (the state names them); the rest is ready.
    PartiallyFailed,
    /// The operation could not do its job; the state's `error` says why.
    Failed,
    /// Cancelled (by a user, or because an Evict ended its lease).
    Cancelled,
}

impl Outcome {
    /// The metrics label: lower snake case, as Prometheus labels go.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::PartiallyFailed => "partially_failed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What an operation has done so far (shared with the client crate).
pub use expresscache::Counters;

/// One key that could not be made ready (or evicted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFailure {
    pub key: String,
    /// Short machine-readable reason: an S3 error code or one of ours
    /// ("KeyClash", "IndexError", ...).
    pub code: String,
    pub message: String,
}

/// A snapshot of one operation: what followers see and what checkpoints
/// store.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationState {
    pub operation_id: String,
    pub phase: Phase,
    pub counters: Counters,
    /// Set once `phase` is Done.
    pub outcome: Option<Outcome>,
    /// The first failed keys (at most [`MAX_INLINE_FAILURES`]).
    pub failures: Vec<KeyFailure>,
    /// Failed keys not listed in `failures`.
    pub failures_omitted: u64,
    /// Why the operation as a whole failed or was cut short.
    pub error: Option<String>,
    pub started_at: Millis,
    /// Time since the start, as of this snapshot.
    pub elapsed: Duration,
    /// The destination bucket's adaptive copy concurrency.
    pub concurrency_limit: u32,
    /// Earliest expiry of the leases this warm wrote.
    pub lease_expires_at: Option<Millis>,
    /// The finished operation whose request_id this one took over.
    pub superseded_operation_id: Option<String>,
    /// The running operation this one joined instead of listing again.
    pub joined_operation_id: Option<String>,
    /// The recent SUCCEEDED warm this one was answered from (its
    /// max_staleness).
    pub fresh_from_operation_id: Option<String>,
    /// The S3 Batch Operations job copying its keys, once created: a
    /// resumed attempt follows it instead of making another.
    pub batch_job_id: Option<String>,
    /// That job's progress as last described (shown live, not recorded).
    pub batch_job: Option<JobProgress>,
    /// The requested prefixes under which the listing found no object
    /// (set once listing is complete).
    pub empty_prefixes: Vec<String>,
    /// (prefix, epoch) of the leases this operation wrote first: carried
    /// by every checkpoint, so a takeover writes under the same leases and
    /// sees an Evict that ended one (instead of reviving it).
    pub lease_epochs: Vec<(String, String)>,
}

/// An S3 Batch Operations job's status and progress summary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobProgress {
    pub status: String,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
}

impl OperationState {
    /// A fresh operation, queued at `started_at`.
    pub fn queued(operation_id: &str, started_at: Millis) -> Self {
        Self {
            operation_id: operation_id.to_owned(),
            phase: Phase::Queued,
            counters: Counters::default(),
            outcome: None,
            failures: Vec::new(),
            failures_omitted: 0,
            error: None,
            started_at,
            elapsed: Duration::ZERO,
            concurrency_limit: 0,
            lease_expires_at: None,
            superseded_operation_id: None,
            joined_operation_id: None,
            fresh_from_operation_id: None,
            batch_job_id: None,
            batch_job: None,
            empty_prefixes: Vec::new(),
            lease_epochs: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// This state, ended with `outcome` (for operations ended without
    /// running: cancelled while awaiting resumption, refused a resumption).
    #[must_use]
    pub fn ended(mut self, outcome: Outcome, error: Option<String>) -> Self {
        self.phase = Phase::Done;
        self.outcome = Some(outcome);
        if error.is_some() {
            self.error = error;
        }
        self
    }

    /// Objects copied per second over the operation so far.
    pub fn objects_per_second(&self) -> f64 {
        self.counters.objects_copied as f64 / self.elapsed_secs()
    }

    /// Bytes copied per second over the operation so far.
    pub fn bytes_per_second(&self) -> f64 {
        self.counters.bytes_copied as f64 / self.elapsed_secs()
    }

    /// Estimated time to copy what is planned so far, at the rate so far;
    /// `None` once done, or while unknown.
    pub fn eta(&self) -> Option<Duration> {
        let c = &self.counters;
        let remaining = c
            .objects_to_copy
            .saturating_sub(c.objects_copied + c.objects_failed + c.objects_shared);
        let rate = self.objects_per_second();
        (!self.is_done() && rate > 0.0 && remaining > 0)
            .then(|| Duration::from_secs_f64(remaining as f64 / rate))
    }

    fn elapsed_secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-3)
    }
}

/// One attempt at running an operation: the replica running it, and
/// which attempt this is (1 for the first run, one more per takeover).
/// Every write a runner makes names its ticket, and the operation log
/// refuses it once a later attempt took over (fencing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTicket {
    pub replica: String,
    pub attempt: u32,
}

impl RunTicket {
    /// The claim owner this attempt copies keys as.
    pub fn claim_owner(&self, operation_id: &str) -> String {
        super::cache::attempt_owner(operation_id, self.attempt)
    }
}

/// Who runs an unfinished operation, until when unless renewed, and
/// whether someone asked it to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLease {
    pub ticket: RunTicket,
    pub deadline: Millis,
    pub cancel_requested: bool,
    /// This attempt offered the operation to warms of other replicas and
    /// has not withdrawn ([`RunLeases::offer_join`](crate::index::RunLeases::offer_join)).
    pub joinable: bool,
}

/// A warm operation as the operation log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRecord {
    pub id: String,
    pub request_id: Option<String>,
    pub request: WarmSpec,
    /// The principal that submitted it; `None` for an anonymous caller
    /// (no authentication) or a record of an earlier release.
    pub owner: Option<String>,
    pub state: OperationState,
    pub created_at: Millis,
    /// Times a server resumed it after an interruption.
    pub resumptions: u32,
    /// The current run of an unfinished operation (none once finished, or
    /// for one recorded by a release before replicas).
    pub run: Option<RunLease>,
}

impl OperationRecord {
    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_eta_follow_the_counters() {
        let mut s = OperationState::queued("op", 0);
        assert_eq!(s.eta(), None, "nothing copied yet: unknown");
        s.elapsed = Duration::from_secs(2);
        s.counters.objects_to_copy = 10;
        s.counters.objects_copied = 4;
        s.counters.bytes_copied = 4096;
        assert!((s.objects_per_second() - 2.0).abs() < 1e-9);
        assert!((s.bytes_per_second() - 2048.0).abs() < 1e-9);
        assert_eq!(s.eta(), Some(Duration::from_secs(3)));
        let done = s.ended(Outcome::Succeeded, None);
        assert_eq!(done.eta(), None, "a finished operation has no eta");
        assert_eq!(done.outcome, Some(Outcome::Succeeded));
    }
}
