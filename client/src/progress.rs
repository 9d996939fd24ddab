//! Typed progress and reports: what a launcher reads, without the wire
//! format's types (the raw message stays reachable through
//! [`Progress::proto`] for tools that forward it).

use std::time::{Duration, SystemTime};

use crate::pb;

/// Where a warm stands. (The discriminants are the wire values.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// A phase this client does not know (a newer server).
    Unknown = 0,
    /// Accepted, waiting to start.
    Queued = 1,
    /// Listing the source and comparing it with the cache index.
    Planning = 2,
    /// Copying objects (listing may still be going on).
    Copying = 3,
    /// Finished; the outcome is set.
    Done = 4,
}

impl From<i32> for Phase {
    fn from(v: i32) -> Self {
        match pb::Phase::try_from(v) {
            Ok(pb::Phase::Queued) => Self::Queued,
            Ok(pb::Phase::Planning) => Self::Planning,
            Ok(pb::Phase::Copying) => Self::Copying,
            Ok(pb::Phase::Done) => Self::Done,
            _ => Self::Unknown,
        }
    }
}

/// How a warm ended. (The discriminants are the wire values.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Not finished, or an outcome this client does not know.
    Unknown = 0,
    /// Every listed object is present and current in the directory bucket.
    Succeeded = 1,
    /// Some objects could not be copied; the report's failures name them.
    PartiallyFailed = 2,
    /// The warm could not do its job; the report's error says why.
    Failed = 3,
    /// The warm was cancelled before it finished.
    Cancelled = 4,
}

impl From<i32> for Outcome {
    fn from(v: i32) -> Self {
        match pb::Outcome::try_from(v) {
            Ok(pb::Outcome::Succeeded) => Self::Succeeded,
            Ok(pb::Outcome::PartiallyFailed) => Self::PartiallyFailed,
            Ok(pb::Outcome::Failed) => Self::Failed,
            Ok(pb::Outcome::Cancelled) => Self::Cancelled,
            _ => Self::Unknown,
        }
    }
}

pub use expresscache::Counters;

/// One object that could not be copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFailure {
    /// The source key.
    pub key: String,
    /// Short machine-readable reason, e.g. `AccessDenied`, `SourceChanged`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

/// One progress update of a warm.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The operation the update is about.
    pub operation_id: String,
    /// Where it stands.
    pub phase: Phase,
    /// What it has done so far.
    pub counters: Counters,
    /// Time since the operation started.
    pub elapsed: Duration,
    /// Estimated time to finish copying what is planned so far.
    pub eta: Option<Duration>,
    /// Copy rate so far.
    pub objects_per_second: f64,
    /// The destination bucket's current adaptive copy concurrency.
    pub concurrency_limit: u32,
    raw: pb::WarmProgress,
}

impl Progress {
    /// The message as received, for tools that forward or print it whole.
    pub fn proto(&self) -> &pb::WarmProgress {
        &self.raw
    }

    /// Whether this is the operation's last update.
    pub fn is_final(&self) -> bool {
        self.phase == Phase::Done
    }
}

fn duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    Some(
        Duration::from_secs(u64::try_from(d.seconds).ok()?)
            + Duration::from_nanos(u64::try_from(d.nanos).ok()?),
    )
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let since = Duration::from_secs(u64::try_from(t.seconds).ok()?)
        + Duration::from_nanos(u64::try_from(t.nanos).ok()?);
    SystemTime::UNIX_EPOCH.checked_add(since)
}

impl From<pb::WarmProgress> for Progress {
    fn from(raw: pb::WarmProgress) -> Self {
        Self {
            operation_id: raw.operation_id.clone(),
            phase: Phase::from(raw.phase),
            counters: raw
                .counters
                .as_ref()
                .map(Counters::from)
                .unwrap_or_default(),
            elapsed: duration(raw.elapsed.as_ref()).unwrap_or_default(),
            eta: duration(raw.eta.as_ref()),
            objects_per_second: raw.objects_per_second,
            concurrency_limit: raw.concurrency_limit,
            raw,
        }
    }
}

/// The final state of a warm.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmReport {
    /// The operation.
    pub operation_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it did.
    pub counters: Counters,
    /// The first failed keys with their errors.
    pub failures: Vec<KeyFailure>,
    /// Failed keys not listed in `failures`.
    pub failures_omitted: u64,
    /// Operation-level error when the outcome is FAILED.
    pub error: Option<String>,
    /// When the leases this warm wrote expire: the data stays cached at
    /// least until then.
    pub lease_expires_at: Option<SystemTime>,
    /// The operation this one took the request id over from, if any.
    pub superseded_operation_id: Option<String>,
    /// The running warm of the same data this one joined instead of
    /// listing again, if it did.
    pub joined_operation_id: Option<String>,
    /// The recent SUCCEEDED warm this one was answered from within its
    /// max_staleness (nothing was listed), if it was.
    pub fresh_from_operation_id: Option<String>,
    /// The requested prefixes under which the source listed no object (a
    /// typo, or data not there yet). When every prefix is empty the warm
    /// fails unless the request allowed it
    /// ([`WarmRequest::allow_empty`](crate::WarmRequest::allow_empty)).
    pub empty_prefixes: Vec<String>,
    /// The final update as received.
    pub last: Progress,
}

impl WarmReport {
    /// Builds the report from a final (phase DONE) progress message.
    pub fn from_final(last: pb::WarmProgress) -> Self {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            operation_id: last.operation_id.clone(),
            outcome: Outcome::from(last.outcome),
            counters: last
                .counters
                .as_ref()
                .map(Counters::from)
                .unwrap_or_default(),
            failures: last
                .failures
                .iter()
                .map(|f| KeyFailure {
                    key: f.key.clone(),
                    code: f.code.clone(),
                    message: f.message.clone(),
                })
                .collect(),
            failures_omitted: last.failures_omitted,
            error: nonempty(&last.error),
            lease_expires_at: time(last.lease_expires_at.as_ref()),
            superseded_operation_id: nonempty(&last.superseded_operation_id),
            joined_operation_id: nonempty(&last.joined_operation_id),
            fresh_from_operation_id: nonempty(&last.fresh_from_operation_id),
            empty_prefixes: last.empty_prefixes.clone(),
            last: Progress::from(last),
        }
    }

    /// Whether every object is present and current.
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Succeeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_enums_carry_the_wire_values() {
        for v in 0..=4 {
            assert_eq!(Phase::from(v) as i32, v);
            assert_eq!(Outcome::from(v) as i32, v);
        }
        assert_eq!(Outcome::from(99), Outcome::Unknown);
    }
}
