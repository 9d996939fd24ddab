//! An index decorator that times every call into the
//! `expresscache_index_request_duration_seconds` histogram and counts the
//! failures, labelled by call and backend: one place for every backend,
//! so SQLite and DynamoDB report alike.

use std::future::Future;

use tracing::Instrument;

use super::{
    ClaimOutcome, ClaimTerms, Claims, Completion, CreateOutcome, Entry, EvictDecision, IndexError,
    KeyRange, Lease, Leases, Millis, OpFilter, OperationLog, OperationRecord, Record, Records,
    Renewal, ReplicaRegistry, RunLeases, RunTerms, RunTicket, SweepBackoff, SweepFailure, Takeover,
    Usage,
};
use crate::core::operation::OperationState;
use crate::metrics::{INDEX_ERRORS, INDEX_REQUEST_DURATION};

#[derive(Debug)]
pub struct MeteredIndex<I> {
    inner: I,
    backend: &'static str,
}

impl<I> MeteredIndex<I> {
    /// Wraps `inner`, labelling its calls `backend` ("sqlite", "dynamodb").
    pub fn new(inner: I, backend: &'static str) -> Self {
        Self { inner, backend }
    }

    pub fn inner(&self) -> &I {
        &self.inner
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, IndexError>>,
    ) -> Result<T, IndexError> {
        let started = std::time::Instant::now();
        let result = call
            .instrument(tracing::debug_span!(
                "index",
                otel.name = operation,
                index.operation = operation,
                index.backend = self.backend
            ))
            .await;
        let labels = [("operation", operation), ("backend", self.backend)];
        metrics::histogram!(INDEX_REQUEST_DURATION, &labels).record(started.elapsed());
        if result.is_err() {
            metrics::counter!(INDEX_ERRORS, &labels).increment(1);
        }
        result
    }
}

#[async_trait::async_trait]
impl<I: Leases> Leases for MeteredIndex<I> {
    async fn extend_lease(&self, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
        self.timed("extend_lease", self.inner.extend_lease(lease, now))
            .await
    }

    async fn extend_leases(&self, leases: &[Lease], now: Millis) -> Result<Vec<Lease>, IndexError> {
        self.timed("extend_leases", self.inner.extend_leases(leases, now))
            .await
    }

    async fn covering_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        self.timed(
            "covering_leases",
            self.inner.covering_leases(directory_bucket, prefix, now),
        )
        .await
    }

    async fn leases_under(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Lease>, IndexError> {
        self.timed(
            "leases_under",
            self.inner
                .leases_under(directory_bucket, prefix, now, limit),
        )
        .await
    }

    async fn end_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        self.timed(
            "end_leases",
            self.inner.end_leases(directory_bucket, prefix, now),
        )
        .await
    }

    async fn expired_leases(&self, now: Millis, limit: usize) -> Result<Vec<Lease>, IndexError> {
        self.timed("expired_leases", self.inner.expired_leases(now, limit))
            .await
    }

    async fn defer_sweep(
        &self,
        lease: &Lease,
        error: &str,
        backoff: &SweepBackoff,
    ) -> Result<SweepFailure, IndexError> {
        self.timed("defer_sweep", self.inner.defer_sweep(lease, error, backoff))
            .await
    }

    async fn sweep_failures(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SweepFailure>, IndexError> {
        self.timed(
            "sweep_failures",
            self.inner.sweep_failures(directory_bucket, prefix, limit),
        )
        .await
    }

    async fn remove_lease_if_expired(
        &self,
        lease: &Lease,
        now: Millis,
    ) -> Result<bool, IndexError> {
        self.timed(
            "remove_lease_if_expired",
            self.inner.remove_lease_if_expired(lease, now),
        )
        .await
    }
}

#[async_trait::async_trait]
impl<I: Records> Records for MeteredIndex<I> {
    async fn records(
        &self,
        directory_bucket: &str,
        range: &KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Record>, IndexError> {
        self.timed(
            "records",
            self.inner.records(directory_bucket, range, limit),
        )
        .await
    }

    async fn get_record(
        &self,
        directory_bucket: &str,
        key: &str,
    ) -> Result<Option<Record>, IndexError> {
        self.timed("get_record", self.inner.get_record(directory_bucket, key))
            .await
    }

    async fn usage(&self, directory_bucket: &str, prefix: &str) -> Result<Usage, IndexError> {
        self.timed("usage", self.inner.usage(directory_bucket, prefix))
            .await
    }

    async fn usage_up_to(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: u64,
    ) -> Result<Usage, IndexError> {
        self.timed(
            "usage",
            self.inner.usage_up_to(directory_bucket, prefix, limit),
        )
        .await
    }
}

#[async_trait::async_trait]
impl<I: Claims> Claims for MeteredIndex<I> {
    async fn claim_copies(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
    ) -> Result<Vec<ClaimOutcome>, IndexError> {
        self.timed(
            "claim_copies",
            self.inner.claim_copies(directory_bucket, keys, terms),
        )
        .await
    }

    async fn claim_copy(
        &self,
        directory_bucket: &str,
        key: &str,
        terms: &ClaimTerms<'_>,
    ) -> Result<ClaimOutcome, IndexError> {
        self.timed(
            "claim_copy",
            self.inner.claim_copy(directory_bucket, key, terms),
        )
        .await
    }

    async fn renew_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
        deadline: Millis,
    ) -> Result<bool, IndexError> {
        self.timed(
            "renew_claim",
            self.inner
                .renew_claim(directory_bucket, key, owner, deadline),
        )
        .await
    }

    async fn complete_copies(
        &self,
        entries: &[Entry],
        owner: &str,
    ) -> Result<Vec<Completion>, IndexError> {
        self.timed(
            "complete_copies",
            self.inner.complete_copies(entries, owner),
        )
        .await
    }

    async fn complete_copy(&self, entry: &Entry, owner: &str) -> Result<Completion, IndexError> {
        self.timed("complete_copy", self.inner.complete_copy(entry, owner))
            .await
    }

    async fn release_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
    ) -> Result<(), IndexError> {
        self.timed(
            "release_claim",
            self.inner.release_claim(directory_bucket, key, owner),
        )
        .await
    }

    async fn begin_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
        force: bool,
    ) -> Result<Vec<EvictDecision>, IndexError> {
        self.timed(
            "begin_evict",
            self.inner.begin_evict(directory_bucket, keys, terms, force),
        )
        .await
    }

    async fn abandon_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
        deadline: Millis,
    ) -> Result<(), IndexError> {
        self.timed(
            "abandon_evict",
            self.inner
                .abandon_evict(directory_bucket, keys, owner, deadline),
        )
        .await
    }

    async fn finish_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
    ) -> Result<(), IndexError> {
        self.timed(
            "finish_evict",
            self.inner.finish_evict(directory_bucket, keys, owner),
        )
        .await
    }
}

#[async_trait::async_trait]
impl<I: OperationLog> OperationLog for MeteredIndex<I> {
    async fn create_operation(&self, op: &OperationRecord) -> Result<CreateOutcome, IndexError> {
        self.timed("create_operation", self.inner.create_operation(op))
            .await
    }

    async fn supersede_operation(
        &self,
        old_id: &str,
        op: &OperationRecord,
    ) -> Result<bool, IndexError> {
        self.timed(
            "supersede_operation",
            self.inner.supersede_operation(old_id, op),
        )
        .await
    }

    async fn update_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
    ) -> Result<bool, IndexError> {
        self.timed(
            "update_operation",
            self.inner.update_operation(id, ticket, state),
        )
        .await
    }

    async fn finish_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
        epochs: &[(String, String)],
    ) -> Result<bool, IndexError> {
        self.timed(
            "finish_operation",
            self.inner.finish_operation(id, ticket, state, epochs),
        )
        .await
    }

    async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        self.timed("get_operation", self.inner.get_operation(id))
            .await
    }

    async fn list_operations(
        &self,
        filter: OpFilter,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, IndexError> {
        self.timed(
            "list_operations",
            self.inner.list_operations(filter, after, limit),
        )
        .await
    }

    async fn set_lease_epochs(
        &self,
        id: &str,
        epochs: &[(String, String)],
    ) -> Result<(), IndexError> {
        self.timed("set_lease_epochs", self.inner.set_lease_epochs(id, epochs))
            .await
    }

    async fn lease_epochs(&self, id: &str) -> Result<Vec<(String, String)>, IndexError> {
        self.timed("lease_epochs", self.inner.lease_epochs(id))
            .await
    }

    async fn purge_operations(&self, before: Millis) -> Result<u64, IndexError> {
        self.timed("purge_operations", self.inner.purge_operations(before))
            .await
    }
}

#[async_trait::async_trait]
impl<I: RunLeases> RunLeases for MeteredIndex<I> {
    async fn take_over(
        &self,
        id: &str,
        terms: &RunTerms<'_>,
    ) -> Result<Option<Takeover>, IndexError> {
        self.timed("take_over", self.inner.take_over(id, terms))
            .await
    }

    async fn renew_run(
        &self,
        id: &str,
        ticket: &RunTicket,
        deadline: Millis,
    ) -> Result<Renewal, IndexError> {
        self.timed("renew_run", self.inner.renew_run(id, ticket, deadline))
            .await
    }

    async fn release_run(&self, id: &str, ticket: &RunTicket) -> Result<(), IndexError> {
        self.timed("release_run", self.inner.release_run(id, ticket))
            .await
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, IndexError> {
        self.timed("request_cancel", self.inner.request_cancel(id))
            .await
    }

    async fn mark_resumed(&self, id: &str) -> Result<u32, IndexError> {
        self.timed("mark_resumed", self.inner.mark_resumed(id))
            .await
    }

    async fn offer_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        self.timed("offer_join", self.inner.offer_join(id, ticket))
            .await
    }

    async fn withdraw_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        self.timed("withdraw_join", self.inner.withdraw_join(id, ticket))
            .await
    }
}

#[async_trait::async_trait]
impl<I: ReplicaRegistry> ReplicaRegistry for MeteredIndex<I> {
    async fn heartbeat(&self, replica: &str, deadline: Millis) -> Result<(), IndexError> {
        self.timed("heartbeat", self.inner.heartbeat(replica, deadline))
            .await
    }

    async fn live_replicas(&self, now: Millis) -> Result<Vec<String>, IndexError> {
        self.timed("live_replicas", self.inner.live_replicas(now))
            .await
    }

    async fn leave(&self, replica: &str) -> Result<(), IndexError> {
        self.timed("leave", self.inner.leave(replica)).await
    }
}
