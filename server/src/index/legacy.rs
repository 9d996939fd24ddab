//! Operation records as releases before the versioned encoding stored them:
//! the wire messages themselves, prost-encoded. Read once, when an index
//! written by such a release is opened, and rewritten in the current
//! encoding ([`super::encoding`]); nothing else reads the old form, and
//! this is the only place the index knows the wire format.

use std::time::Duration;

use expresscache::proto::v1 as pb;
use expresscache::{Limits, WarmSpec};
use prost::Message;

use super::IndexError;
use crate::core::clock::Millis;
use crate::core::operation::{Counters, KeyFailure, OperationState, Outcome, Phase};

/// Limits wide enough for anything an earlier release accepted: the stored
/// request was validated when it was submitted.
fn accepting_everything() -> Limits {
    Limits {
        max_ttl: Duration::MAX,
        min_ttl: Duration::ZERO,
        max_prefixes: usize::MAX,
        allow_general_purpose_destination: true,
    }
}

/// A request stored as a prost-encoded `WarmCacheRequest`.
pub fn request(id: &str, blob: &[u8]) -> Result<WarmSpec, IndexError> {
    let req = pb::WarmCacheRequest::decode(blob)
        .map_err(|e| IndexError::Corrupt(format!("operation {id} request: {e}")))?;
    WarmSpec::parse(&req, &accepting_everything())
        .map_err(|e| IndexError::Corrupt(format!("operation {id} request: {e}")))
}

fn millis(t: Option<&prost_types::Timestamp>) -> Option<Millis> {
    t.map(|t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos / 1_000_000))
    })
}

/// A state stored as a prost-encoded `WarmProgress`.
pub fn state(id: &str, blob: &[u8]) -> Result<OperationState, IndexError> {
    let p = pb::WarmProgress::decode(blob)
        .map_err(|e| IndexError::Corrupt(format!("operation {id} progress: {e}")))?;
    let phase = match pb::Phase::try_from(p.phase).unwrap_or_default() {
        pb::Phase::Unspecified | pb::Phase::Queued => Phase::Queued,
        pb::Phase::Planning => Phase::Planning,
        pb::Phase::Copying => Phase::Copying,
        pb::Phase::Done => Phase::Done,
    };
    let outcome = match pb::Outcome::try_from(p.outcome).unwrap_or_default() {
        pb::Outcome::Unspecified => None,
        pb::Outcome::Succeeded => Some(Outcome::Succeeded),
        pb::Outcome::PartiallyFailed => Some(Outcome::PartiallyFailed),
        pb::Outcome::Failed => Some(Outcome::Failed),
        pb::Outcome::Cancelled => Some(Outcome::Cancelled),
    };
    let c = p.counters.unwrap_or_default();
    Ok(OperationState {
        operation_id: p.operation_id,
        phase,
        counters: Counters::from(&c),
        outcome: if phase == Phase::Done {
            outcome.or(Some(Outcome::Failed))
        } else {
            None
        },
        failures: p
            .failures
            .into_iter()
            .map(|f| KeyFailure {
                key: f.key,
                code: f.code,
                message: f.message,
            })
            .collect(),
        failures_omitted: p.failures_omitted,
        error: Some(p.error).filter(|e| !e.is_empty()),
        started_at: millis(p.started_at.as_ref()).unwrap_or(0),
        elapsed: p
            .elapsed
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default(),
        concurrency_limit: p.concurrency_limit,
        lease_expires_at: millis(p.lease_expires_at.as_ref()),
        superseded_operation_id: Some(p.superseded_operation_id).filter(|s| !s.is_empty()),
        joined_operation_id: None,
        fresh_from_operation_id: None,
        batch_job_id: None,
        empty_prefixes: Vec::new(),
        lease_epochs: Vec::new(),
        batch_job: None,
    })
}
