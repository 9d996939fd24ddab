//! Domain values as the wire messages clients see. The only place the
//! server's domain meets protobuf on the way out (requests come in through
//! `expresscache::request`'s validating parsers).

use std::time::Duration;

use expresscache::proto::v1 as pb;

use crate::core::clock::Millis;
use crate::core::operation::{
    Counters, KeyFailure, OperationRecord, OperationState, Outcome, Phase,
};
use crate::evict::EvictReport;
use crate::index::{Lease, SweepFailure};

/// [`Millis`] as a protobuf timestamp.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn phase(p: Phase) -> pb::Phase {
    match p {
        Phase::Queued => pb::Phase::Queued,
        Phase::Planning => pb::Phase::Planning,
        Phase::Copying => pb::Phase::Copying,
        Phase::Done => pb::Phase::Done,
    }
}

fn outcome(o: Option<Outcome>) -> pb::Outcome {
    match o {
        None => pb::Outcome::Unspecified,
        Some(Outcome::Succeeded) => pb::Outcome::Succeeded,
        Some(Outcome::PartiallyFailed) => pb::Outcome::PartiallyFailed,
        Some(Outcome::Failed) => pb::Outcome::Failed,
        Some(Outcome::Cancelled) => pb::Outcome::Cancelled,
    }
}

fn counters(c: &Counters) -> pb::Counters {
    pb::Counters::from(c)
}

fn failure(f: KeyFailure) -> pb::KeyFailure {
    pb::KeyFailure {
        key: f.key,
        code: f.code,
        message: f.message,
    }
}

/// An operation's state as a progress message.
pub fn progress(s: OperationState) -> pb::WarmProgress {
    pb::WarmProgress {
        phase: phase(s.phase) as i32,
        counters: Some(counters(&s.counters)),
        outcome: outcome(s.outcome) as i32,
        // 0: not known (a record of an early release without one).
        started_at: (s.started_at > 0).then(|| timestamp(s.started_at)),
        elapsed: Some(duration(s.elapsed)),
        objects_per_second: s.objects_per_second(),
        bytes_per_second: s.bytes_per_second(),
        eta: s.eta().map(duration),
        lease_expires_at: s.lease_expires_at.map(timestamp),
        concurrency_limit: s.concurrency_limit,
        failures_omitted: s.failures_omitted,
        failures: s.failures.into_iter().map(failure).collect(),
        error: s.error.unwrap_or_default(),
        superseded_operation_id: s.superseded_operation_id.unwrap_or_default(),
        joined_operation_id: s.joined_operation_id.unwrap_or_default(),
        fresh_from_operation_id: s.fresh_from_operation_id.unwrap_or_default(),
        empty_prefixes: s.empty_prefixes,
        batch_job: s.batch_job.map(|j| pb::BatchJobProgress {
            job_id: s.batch_job_id.clone().unwrap_or_default(),
            status: j.status,
            total_tasks: j.total,
            tasks_succeeded: j.succeeded,
            tasks_failed: j.failed,
        }),
        operation_id: s.operation_id,
        plan: None,
    }
}

/// An operation's record as the status message.
pub fn operation_status(r: OperationRecord) -> pb::OperationStatus {
    pb::OperationStatus {
        request: Some(pb::WarmCacheRequest::from(&r.request)),
        progress: Some(progress(r.state)),
        created_at: Some(timestamp(r.created_at)),
        resumptions: r.resumptions,
        operation_id: r.id,
    }
}

pub fn lease(l: Lease) -> pb::Lease {
    pb::Lease {
        directory_bucket: l.directory_bucket,
        prefix: l.prefix,
        source_bucket: l.source_bucket,
        expires_at: Some(timestamp(l.expires_at)),
    }
}

/// One prefix's status, as GetStatus answers it.
pub fn prefix_status(r: crate::status::PrefixReport) -> pb::PrefixStatus {
    pb::PrefixStatus {
        sweep_failures: r.sweep_failures.into_iter().map(sweep_failure).collect(),
        prefix: r.prefix,
        cached_objects: r.usage.objects,
        cached_bytes: r.usage.bytes,
        counts_truncated: r.usage.truncated,
        leases: r.leases.into_iter().map(lease).collect(),
    }
}

pub fn sweep_failure(f: SweepFailure) -> pb::SweepFailure {
    pb::SweepFailure {
        lease: Some(lease(f.lease)),
        attempts: f.attempts,
        error: f.error,
        next_attempt_at: Some(timestamp(f.retry_at)),
    }
}

pub fn evict_response(r: EvictReport) -> pb::EvictResponse {
    pb::EvictResponse {
        objects_kept: r.objects_kept(),
        objects_deleted: r.tally.deleted,
        bytes_deleted: r.tally.bytes,
        leases_ended: r.leases_ended,
        kept_under: r.tally.kept_under.into_iter().collect(),
        forced: r.forced,
        failures_omitted: r.tally.failures_omitted,
        failures: r.tally.failures.into_iter().map(failure).collect(),
        prefixes: r
            .prefixes
            .into_iter()
            .map(|p| pb::PrefixEviction {
                prefix: p.prefix,
                state: if p.unconfirmed.is_some() {
                    pb::prefix_eviction::State::Unconfirmed
                } else {
                    pb::prefix_eviction::State::Done
                }
                .into(),
                objects_deleted: p.deleted,
                objects_kept: p.kept,
                error: p.unconfirmed.unwrap_or_default(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_millis_into_seconds_and_nanos() {
        assert_eq!(
            timestamp(1_500),
            prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            timestamp(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            },
            "before the epoch: nanos stay positive"
        );
    }

    #[test]
    fn an_evict_report_counts_kept_objects_of_both_kinds() {
        let mut report = EvictReport {
            leases_ended: 2,
            forced: false,
            ..EvictReport::default()
        };
        report.tally.deleted = 3;
        report.tally.bytes = 30;
        report.tally.kept_live = 4;
        report.tally.kept_busy = 1;
        report.tally.kept_under.insert("p/".into());
        report.tally.failures_omitted = 7;
        report.tally.failures.push(KeyFailure {
            key: "k".into(),
            code: "AccessDenied".into(),
            message: "no".into(),
        });
        let r = evict_response(report);
        assert_eq!(
            (
                r.objects_deleted,
                r.bytes_deleted,
                r.leases_ended,
                r.objects_kept
            ),
            (3, 30, 2, 5)
        );
        assert_eq!(r.kept_under, ["p/"]);
        assert_eq!((r.failures.len(), r.failures_omitted), (1, 7));
        assert_eq!(r.failures[0].code, "AccessDenied");
    }

    #[test]
    fn a_finished_state_has_an_outcome_and_no_eta() {
        let mut s = OperationState::queued("op", 0);
        s.counters.objects_to_copy = 10;
        s.counters.objects_copied = 5;
        s.elapsed = Duration::from_secs(1);
        assert!(progress(s.clone()).eta.is_some());
        let done = progress(s.ended(Outcome::Succeeded, None));
        assert_eq!(done.phase, pb::Phase::Done as i32);
        assert_eq!(done.outcome, pb::Outcome::Succeeded as i32);
        assert_eq!(done.eta, None);
    }
}
