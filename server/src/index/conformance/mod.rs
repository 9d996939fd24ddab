//! One conformance suite for every index backend, split by capability:
//! [`run_all`] checks the cache traits (leases, records, claims),
//! [`run_operation_log`] the operation log and run leases,
//! [`run_replica_registry`] the registry. Each backend's tests call them
//! with a fresh, empty index. Assertions name the rule they check, so a
//! new backend learns the contract from its failures.

// Test support: a failed step must stop the test with its message.
#![allow(clippy::unwrap_used)]

use expresscache::{BucketName, DirectoryBucketName, Prefix, RequestId, WarmSpec};

use crate::core::operation::{KeyFailure, OperationState, Outcome, Phase, RunLease, RunTicket};

use super::{
    CacheIndex, Claim, ClaimKind, ClaimOutcome, ClaimTerms, Completion, CreateOutcome, Entry,
    EvictDecision, KeyRange, Lease, OperationLog, OperationRecord, Record, Renewal, RunTerms,
    SweepBackoff, Usage,
};

mod claims;
mod leases;
mod operations;
mod records;
mod replicas;

pub use operations::run_operation_log;
pub use replicas::run_replica_registry;

const DIR: &str = "cache--use1-az4--x-s3";

fn entry(key: &str, size: u64) -> Entry {
    Entry {
        directory_bucket: DIR.into(),
        key: key.into(),
        source_bucket: "src".into(),
        source_key: key.into(),
        source_etag: format!("\"{key}\""),
        size,
        source_last_modified: Some(1_700_000_000_000),
        dest_etag: "\"d\"".into(),
        cached_at: 1,
    }
}

fn warm_spec(request_id: Option<&str>) -> WarmSpec {
    WarmSpec {
        source: BucketName::parse("src").unwrap(),
        prefixes: vec![Prefix::parse("d/").unwrap()],
        directory_bucket: DirectoryBucketName::parse(DIR).unwrap(),
        ttl: std::time::Duration::from_secs(60),
        force_copy: false,
        request_id: request_id.map(|r| RequestId::parse(r).unwrap()),
        destination_prefix: Prefix::root(),
        max_staleness: std::time::Duration::ZERO,
        batch_operations: false,
        allow_empty: false,
        selection: Default::default(),
    }
}

fn ticket(replica: &str, attempt: u32) -> RunTicket {
    RunTicket {
        replica: replica.into(),
        attempt,
    }
}

/// A first run by `replica` until `deadline`.
fn run_lease(replica: &str, deadline: i64) -> RunLease {
    RunLease {
        ticket: ticket(replica, 1),
        deadline,
        cancel_requested: false,
        joinable: false,
    }
}

/// A state copying, or finished successfully.
fn phase_state(id: &str, done: bool) -> OperationState {
    let mut s = OperationState::queued(id, 5);
    s.phase = Phase::Copying;
    if done {
        s = s.ended(Outcome::Succeeded, None);
    }
    s
}

fn lease(prefix: &str, expires_at: i64) -> Lease {
    Lease::new(DIR, prefix, "src", expires_at)
}

/// Runs every check of the cache index against `index`, which must start
/// empty.
pub async fn run_all<I: CacheIndex>(index: &I) {
    leases::leases_only_grow(index).await;
    leases::covering_leases_are_live_ancestors(index).await;
    leases::end_leases_expires_the_prefix_and_below(index).await;
    leases::expired_leases_are_found_and_removed_only_while_expired(index).await;
    records::records_are_key_ordered_ranges(index).await;
    claims::claims_are_exclusive_until_their_deadline(index).await;
    claims::eviction_respects_leases_and_claims(index).await;
    records::usage_counts_cached_objects_only(index).await;
    claims::completion_requires_the_copiers_claim(index).await;
    leases::a_lease_changes_epoch_when_ended(index).await;
    leases::leases_extended_together_are_each_extended(index).await;
    leases::a_failed_sweep_is_deferred_and_reported(index).await;
    claims::a_later_attempt_takes_over_an_earlier_attempts_claims(index).await;
    claims::an_abandoned_eviction_leaves_a_lapsed_evict_claim(index).await;
}

async fn put<I: CacheIndex>(index: &I, entries: &[Entry]) {
    for e in entries {
        index
            .claim_copy(
                DIR,
                &e.key,
                &ClaimTerms {
                    owner: "writer",
                    deadline: i64::MAX,
                    now: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            index.complete_copy(e, "writer").await.unwrap(),
            Completion::Recorded
        );
    }
}

async fn clear<I: CacheIndex>(index: &I, prefix: &str) {
    let keys: Vec<String> = index
        .records(DIR, &KeyRange::prefix(prefix), 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    index
        .begin_evict(
            DIR,
            &keys,
            &ClaimTerms {
                owner: "cleaner",
                deadline: i64::MAX,
                now: 0,
            },
            true,
        )
        .await
        .unwrap();
    index.finish_evict(DIR, &keys, "cleaner").await.unwrap();
    for k in &keys {
        index.release_claim(DIR, k, "cleaner").await.unwrap();
    }
}

async fn remove_expired<I: CacheIndex>(index: &I) {
    for l in index.expired_leases(i64::MAX, 1_000).await.unwrap() {
        index.remove_lease_if_expired(&l, i64::MAX).await.unwrap();
    }
}
