//! A [`CacheIndex`] decorator that counts reads and writes, so tests can
//! assert what a call costs (a re-warm must write O(prefixes), not
//! O(objects)), optionally passes every call through a [`Gate`], and can
//! fail chosen calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::gate::{Gate, Pass};

use super::{
    ClaimOutcome, ClaimTerms, Claims, Completion, CreateOutcome, Entry, EvictDecision, IndexError,
    KeyRange, Lease, Leases, Millis, OpFilter, OperationLog, OperationRecord, Record, Records,
    Renewal, RunLeases, RunTerms, RunTicket, SweepBackoff, SweepFailure, Takeover, Usage,
};

#[derive(Debug)]
pub struct CountingIndex<I> {
    inner: I,
    reads: AtomicU64,
    writes: AtomicU64,
    gate: Option<Arc<dyn Gate>>,
    /// Calls to fail, and how many more times.
    failing: std::sync::Mutex<Vec<(&'static str, u32)>>,
    /// Calls to refuse outright (a non-transient error), and how many
    /// more times.
    refusing: std::sync::Mutex<Vec<(&'static str, u32)>>,
    /// Calls whose reply to lose after they took effect, and how many more
    /// times.
    losing: std::sync::Mutex<Vec<(&'static str, u32)>>,
}

impl<I> CountingIndex<I> {
    pub fn new(inner: I) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            gate: None,
            failing: std::sync::Mutex::default(),
            refusing: std::sync::Mutex::default(),
            losing: std::sync::Mutex::default(),
        }
    }

    /// Passes every call through `gate` first.
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    async fn pass(&self, call: &'static str, subject: &str) -> Result<Option<Pass>, IndexError> {
        {
            let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, left)) = failing.iter_mut().find(|(c, n)| *c == call && *n > 0) {
                *left -= 1;
                return Err(IndexError::Unavailable(format!("{call} failed (injected)")));
            }
        }
        {
            let mut refusing = self.refusing.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, left)) = refusing.iter_mut().find(|(c, n)| *c == call && *n > 0) {
                *left -= 1;
                return Err(IndexError::TooLarge(format!(
                    "{call} refused (injected): ValidationException: Item size has exceeded the maximum allowed size"
                )));
            }
        }
        Ok(match &self.gate {
            Some(g) => Some(g.enter(call, subject).await),
            None => None,
        })
    }

    /// Loses the reply of the next `times` calls named `call` that succeed:
    /// they take effect, and the caller gets [`IndexError::Unavailable`]
    /// (a reply lost on the way back). Honoured by the calls that check
    /// [`reply`](Self::reply).
    pub fn lose_reply(&self, call: &'static str, times: u32) {
        self.losing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((call, times));
    }

    /// `result` as the caller receives it: lost if `call`'s reply is to be.
    fn reply<T>(&self, call: &'static str, result: Result<T, IndexError>) -> Result<T, IndexError> {
        let result = result?;
        let mut losing = self.losing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, left)) = losing.iter_mut().find(|(c, n)| *c == call && *n > 0) {
            *left -= 1;
            return Err(IndexError::Unavailable(format!(
                "{call}: reply lost (injected)"
            )));
        }
        Ok(result)
    }

    /// Fails the next `times` calls named `call` with
    /// [`IndexError::Unavailable`], as an unreachable index would.
    pub fn fail(&self, call: &'static str, times: u32) {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((call, times));
    }

    /// Refuses the next `times` calls named `call` with
    /// [`IndexError::TooLarge`], as DynamoDB refuses an item over 400 KB:
    /// waiting does not fix it.
    pub fn refuse(&self, call: &'static str, times: u32) {
        self.refusing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((call, times));
    }

    pub fn inner(&self) -> &I {
        &self.inner
    }

    /// Read calls so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Write calls so far (each is one conditional write or transaction).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl<I: Leases> Leases for CountingIndex<I> {
    async fn extend_lease(&self, lease: &Lease, now: Millis) -> Result<Lease, IndexError> {
        self.write();
        let _pass = self.pass("extend_lease", &lease.prefix).await?;
        self.reply("extend_lease", self.inner.extend_lease(lease, now).await)
    }

    async fn covering_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        self.read();
        let _pass = self.pass("covering_leases", prefix).await?;
        self.inner
            .covering_leases(directory_bucket, prefix, now)
            .await
    }

    async fn leases_under(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Lease>, IndexError> {
        self.read();
        let _pass = self.pass("leases_under", prefix).await?;
        self.inner
            .leases_under(directory_bucket, prefix, now, limit)
            .await
    }

    async fn end_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError> {
        self.write();
        let _pass = self.pass("end_leases", prefix).await?;
        self.inner.end_leases(directory_bucket, prefix, now).await
    }

    async fn expired_leases(&self, now: Millis, limit: usize) -> Result<Vec<Lease>, IndexError> {
        self.read();
        let _pass = self.pass("expired_leases", "").await?;
        self.inner.expired_leases(now, limit).await
    }

    async fn defer_sweep(
        &self,
        lease: &Lease,
        error: &str,
        backoff: &SweepBackoff,
    ) -> Result<SweepFailure, IndexError> {
        self.write();
        let _pass = self.pass("defer_sweep", &lease.prefix).await?;
        self.inner.defer_sweep(lease, error, backoff).await
    }

    async fn sweep_failures(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SweepFailure>, IndexError> {
        self.read();
        let _pass = self.pass("sweep_failures", prefix).await?;
        self.inner
            .sweep_failures(directory_bucket, prefix, limit)
            .await
    }

    async fn remove_lease_if_expired(
        &self,
        lease: &Lease,
        now: Millis,
    ) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("remove_lease_if_expired", &lease.prefix).await?;
        self.inner.remove_lease_if_expired(lease, now).await
    }
}

#[async_trait::async_trait]
impl<I: Records> Records for CountingIndex<I> {
    async fn records(
        &self,
        directory_bucket: &str,
        range: &KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Record>, IndexError> {
        self.read();
        let _pass = self.pass("records", range.prefix).await?;
        self.inner.records(directory_bucket, range, limit).await
    }

    async fn get_record(
        &self,
        directory_bucket: &str,
        key: &str,
    ) -> Result<Option<Record>, IndexError> {
        self.read();
        let _pass = self.pass("records", key).await?;
        self.inner.get_record(directory_bucket, key).await
    }

    async fn usage_up_to(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: u64,
    ) -> Result<Usage, IndexError> {
        self.read();
        let _pass = self.pass("usage", prefix).await?;
        self.inner
            .usage_up_to(directory_bucket, prefix, limit)
            .await
    }
}

#[async_trait::async_trait]
impl<I: Claims> Claims for CountingIndex<I> {
    async fn claim_copies(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
    ) -> Result<Vec<ClaimOutcome>, IndexError> {
        self.write();
        let _pass = self
            .pass("claim_copies", keys.first().map_or("", String::as_str))
            .await?;
        self.inner.claim_copies(directory_bucket, keys, terms).await
    }

    async fn renew_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
        deadline: Millis,
    ) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("renew_claim", key).await?;
        self.inner
            .renew_claim(directory_bucket, key, owner, deadline)
            .await
    }

    async fn complete_copies(
        &self,
        entries: &[Entry],
        owner: &str,
    ) -> Result<Vec<Completion>, IndexError> {
        self.write();
        let _pass = self
            .pass(
                "complete_copies",
                entries.first().map_or("", |e| e.key.as_str()),
            )
            .await?;
        self.inner.complete_copies(entries, owner).await
    }

    async fn release_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
    ) -> Result<(), IndexError> {
        self.write();
        let _pass = self.pass("release_claim", key).await?;
        self.inner.release_claim(directory_bucket, key, owner).await
    }

    async fn begin_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
        force: bool,
    ) -> Result<Vec<EvictDecision>, IndexError> {
        self.write();
        let _pass = self
            .pass("begin_evict", keys.first().map_or("", String::as_str))
            .await?;
        self.inner
            .begin_evict(directory_bucket, keys, terms, force)
            .await
    }

    async fn abandon_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
        deadline: Millis,
    ) -> Result<(), IndexError> {
        self.write();
        let _pass = self
            .pass("abandon_evict", keys.first().map_or("", String::as_str))
            .await?;
        self.inner
            .abandon_evict(directory_bucket, keys, owner, deadline)
            .await
    }

    async fn finish_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
    ) -> Result<(), IndexError> {
        self.write();
        let _pass = self
            .pass("finish_evict", keys.first().map_or("", String::as_str))
            .await?;
        self.inner.finish_evict(directory_bucket, keys, owner).await
    }
}

#[async_trait::async_trait]
impl<I: OperationLog> OperationLog for CountingIndex<I> {
    async fn create_operation(&self, op: &OperationRecord) -> Result<CreateOutcome, IndexError> {
        self.write();
        let _pass = self.pass("create_operation", &op.id).await?;
        self.inner.create_operation(op).await
    }

    async fn supersede_operation(
        &self,
        old_id: &str,
        op: &OperationRecord,
    ) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("supersede_operation", &op.id).await?;
        self.inner.supersede_operation(old_id, op).await
    }

    async fn update_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &crate::core::operation::OperationState,
    ) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("update_operation", id).await?;
        self.inner.update_operation(id, ticket, state).await
    }

    async fn finish_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &crate::core::operation::OperationState,
        epochs: &[(String, String)],
    ) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("finish_operation", id).await?;
        self.reply(
            "finish_operation",
            self.inner.finish_operation(id, ticket, state, epochs).await,
        )
    }

    async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        self.read();
        let _pass = self.pass("get_operation", id).await?;
        self.inner.get_operation(id).await
    }

    async fn list_operations(
        &self,
        filter: OpFilter,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, IndexError> {
        self.read();
        let _pass = self.pass("list_operations", "").await?;
        self.inner.list_operations(filter, after, limit).await
    }

    async fn set_lease_epochs(
        &self,
        id: &str,
        epochs: &[(String, String)],
    ) -> Result<(), IndexError> {
        self.write();
        let _pass = self.pass("set_lease_epochs", id).await?;
        self.inner.set_lease_epochs(id, epochs).await
    }

    async fn lease_epochs(&self, id: &str) -> Result<Vec<(String, String)>, IndexError> {
        self.read();
        let _pass = self.pass("lease_epochs", id).await?;
        self.inner.lease_epochs(id).await
    }

    async fn purge_operations(&self, before: Millis) -> Result<u64, IndexError> {
        self.write();
        let _pass = self.pass("purge_operations", "").await?;
        self.inner.purge_operations(before).await
    }
}

#[async_trait::async_trait]
impl<I: RunLeases> RunLeases for CountingIndex<I> {
    async fn take_over(
        &self,
        id: &str,
        terms: &RunTerms<'_>,
    ) -> Result<Option<Takeover>, IndexError> {
        self.write();
        let _pass = self.pass("take_over", id).await?;
        self.inner.take_over(id, terms).await
    }

    async fn renew_run(
        &self,
        id: &str,
        ticket: &RunTicket,
        deadline: Millis,
    ) -> Result<Renewal, IndexError> {
        self.write();
        let _pass = self.pass("renew_run", id).await?;
        self.inner.renew_run(id, ticket, deadline).await
    }

    async fn release_run(&self, id: &str, ticket: &RunTicket) -> Result<(), IndexError> {
        self.write();
        let _pass = self.pass("release_run", id).await?;
        self.inner.release_run(id, ticket).await
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("request_cancel", id).await?;
        self.inner.request_cancel(id).await
    }

    async fn mark_resumed(&self, id: &str) -> Result<u32, IndexError> {
        self.write();
        let _pass = self.pass("mark_resumed", id).await?;
        self.inner.mark_resumed(id).await
    }

    async fn offer_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("offer_join", id).await?;
        self.reply("offer_join", self.inner.offer_join(id, ticket).await)
    }

    async fn withdraw_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        self.write();
        let _pass = self.pass("withdraw_join", id).await?;
        self.reply("withdraw_join", self.inner.withdraw_join(id, ticket).await)
    }
}

#[async_trait::async_trait]
impl<I: super::ReplicaRegistry> super::ReplicaRegistry for CountingIndex<I> {
    async fn heartbeat(&self, replica: &str, deadline: Millis) -> Result<(), IndexError> {
        self.write();
        let _pass = self.pass("heartbeat", replica).await?;
        self.inner.heartbeat(replica, deadline).await
    }

    async fn live_replicas(&self, now: Millis) -> Result<Vec<String>, IndexError> {
        self.read();
        let _pass = self.pass("live_replicas", "").await?;
        self.inner.live_replicas(now).await
    }

    async fn leave(&self, replica: &str) -> Result<(), IndexError> {
        self.write();
        let _pass = self.pass("leave", replica).await?;
        self.inner.leave(replica).await
    }
}
