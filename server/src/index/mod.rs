//! The service's durable state, behind two traits: [`CacheIndex`] (what is
//! cached, the leases that keep it, the claims on keys in flight) and
//! [`OperationLog`] (warms as records: request, state checkpoints,
//! idempotency, resumption). Operations are stored as the versioned
//! documents of [`encoding`], never as wire messages.
//!
//! Every operation is expressed so it maps onto one conditional write or one
//! transaction of a key-value store (SQLite: [`SqliteIndex`]; DynamoDB, one
//! conditional write per item: [`DynamoIndex`], doc/INDEX-DYNAMODB.md), and
//! reads are key-ordered pages so the planner can merge them with a source
//! listing in bounded memory.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
mod counting;
mod cursor;
mod decorate;
pub mod dynamo;
pub mod encoding;
pub mod lane;
mod legacy;
mod metered;
mod sqlite;

#[cfg(any(test, feature = "testing"))]
pub use counting::{Counter, CountingIndex};
pub use cursor::RecordCursor;
pub use metered::MeteredIndex;
#[cfg(any(test, feature = "testing"))]
pub use {
    cursor::CURSOR_PAGE,
    decorate::{Access, Call, Decorated, Hook},
    dynamo::DynamoIndex,
    metered::Metered,
};
pub use sqlite::SqliteIndex;

use std::ops::Bound;

pub use crate::core::cache::{lineage, Claim, ClaimKind, Entry, Lease, Record};
#[cfg(any(test, feature = "testing"))]
pub use crate::core::cache::{attempt_owner, supersedes};
pub use crate::core::clock::{millis_of, span_millis, Millis};
pub use crate::core::keys::{ancestors, prefix_successor, KeyRange};
use crate::core::operation::OperationState;
pub use crate::core::operation::{OperationRecord, RunLease, RunTicket};

/// Gives up `owner`'s claim on `key`; a failure is only logged, since the
/// claim lapses at its deadline anyway.
pub async fn release_or_lapse<I: CacheIndex + ?Sized>(
    index: &I,
    dir: &str,
    key: &str,
    owner: &str,
) {
    if let Err(e) = index.release_claim(dir, key, owner).await {
        tracing::warn!(key, owner, error = %e, "could not release claim; it lapses at its deadline");
    }
}

/// Why the sweeper could not settle an expired lease yet: it is retried
/// after `retry_at` with a backoff that grows with `attempts`, and the rest
/// of the sweep goes on meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepFailure {
    pub lease: Lease,
    pub attempts: u32,
    pub error: String,
    pub retry_at: Millis,
}

/// When a failed sweep is tried again: `now` + `base` x 2^(attempts so
/// far), at most `now` + `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepBackoff {
    pub now: Millis,
    pub base: Millis,
    pub max: Millis,
}

/// Per-entry answer of [`Claims::complete_copies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The entry is recorded and the copier's claim dropped.
    Recorded,
    /// The copier no longer held the claim (it lapsed and someone else took
    /// the key over, or it was never claimed): nothing was written, and the
    /// copier must decide the key again.
    ClaimLost,
}

/// Result of trying to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed,
    /// Someone else holds a live claim.
    Held(Claim),
}

/// Per-key answer of [`Claims::begin_evict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictDecision {
    /// Claimed for deletion: delete the object (fenced by `dest_etag`), then
    /// call `finish_evict`.
    Marked(Entry),
    /// A live lease with this prefix covers the key: keep it.
    Live(String),
    /// Another claim is live (a copy in flight): keep it.
    Busy(Claim),
    /// Nothing cached under that key.
    Absent,
}

/// Which operations a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpFilter {
    All,
    Running,
    Finished,
}

/// Who asks to run an operation, until when, judged at what time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTerms<'a> {
    pub replica: &'a str,
    pub deadline: Millis,
    pub now: Millis,
}

/// A run taken over by [`RunLeases::take_over`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    pub ticket: RunTicket,
    /// Runs of the operation that ended without being released.
    pub crashes: u32,
    /// Whether a cancel was requested meanwhile.
    pub cancel_requested: bool,
}

/// What renewing a run learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Held {
        cancel_requested: bool,
    },
    /// Another attempt took the run over, or the operation finished.
    Lost,
}

/// Result of registering an operation under an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created,
    /// Another operation already holds the request id.
    Exists(Box<OperationRecord>),
}

/// Who takes a claim, until when, and the time it is judged at (a claim
/// held by someone else blocks only while its deadline is after `now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimTerms<'a> {
    pub owner: &'a str,
    pub deadline: Millis,
    pub now: Millis,
}

/// Objects and bytes recorded under a prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
    /// Counting stopped at its limit: more entries may exist.
    pub truncated: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("index storage error: {0}")]
    Storage(String),
    #[error("corrupt index record: {0}")]
    Corrupt(String),
    /// The backend is throttling, failing with 5xx, or not answering in
    /// time, even after its client's retries: the same call may succeed
    /// later (as opposed to [`Storage`](Self::Storage), which waiting does
    /// not fix). A failed condition is never this: it is the answer
    /// (`ClaimOutcome::Held`, `Completion::ClaimLost`, ...).
    #[error("index unavailable (retryable): {0}")]
    Unavailable(String),
    /// The item the call would write is over the backend's size limit
    /// (DynamoDB's 400 KB): the same write never succeeds, a smaller one
    /// may.
    #[error("index item too large: {0}")]
    TooLarge(String),
}

impl IndexError {
    /// Whether the message of a refusal (DynamoDB's ValidationException,
    /// or a transaction's ValidationError) is about an item's size.
    pub fn is_size_message(message: &str) -> bool {
        message.to_ascii_lowercase().contains("item size")
    }
}

/// Leases: what keeps cached data alive, and the sweeper's view of what
/// expired. Every method is one atomic step (one conditional write or one
/// transaction), which is what makes the rules in doc/SEMANTICS.md hold
/// across concurrent warms, evictions, sweeps and replicas.
#[async_trait::async_trait]
pub trait Leases: Send + Sync + std::fmt::Debug + 'static {
    /// Sets the lease's expiry to max(stored, `lease.expires_at`); returns
    /// the lease as stored.
    ///
    /// Without an epoch in `lease`: creates the lease if absent (with a new
    /// epoch), and gives it a new epoch if it had expired at `now` (a
    /// revived lease is not the one a running warm wrote: the sweeper may
    /// have deleted under it meanwhile).
    ///
    /// With an epoch: extends only if the stored lease still has that
    /// epoch and is live at `now`; otherwise writes nothing and returns the
    /// stored lease (or, if there is none, one with an empty epoch), so the
    /// caller sees that its lease ended.
    async fn extend_lease(&self, lease: &Lease, now: Millis) -> Result<Lease, IndexError>;

    /// [`extend_lease`](Self::extend_lease) for each of `leases`, returned
    /// in the same order. A warm writes all its prefixes' leases at once;
    /// a backend that can do them in one round trip (SQLite: one
    /// transaction) spares a herd of warms one index call per prefix.
    async fn extend_leases(&self, leases: &[Lease], now: Millis) -> Result<Vec<Lease>, IndexError> {
        let mut stored = Vec::with_capacity(leases.len());
        for lease in leases {
            stored.push(self.extend_lease(lease, now).await?);
        }
        Ok(stored)
    }

    /// Leases of `directory_bucket` live at `now` whose prefix covers
    /// `prefix` (the prefix itself and its ancestors), ordered by prefix.
    async fn covering_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError>;

    /// Leases of `directory_bucket` live at `now` strictly under `prefix`,
    /// ordered by prefix, at most `limit`.
    async fn leases_under(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Lease>, IndexError>;

    /// Ends, as of `now`, every live lease at or under `prefix`; returns the
    /// leases it ended. Their records stay (expired) until the sweeper has
    /// dealt with their objects.
    async fn end_leases(
        &self,
        directory_bucket: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<Vec<Lease>, IndexError>;

    /// Up to `limit` lease records expired at `now` and not deferred past
    /// `now` by [`defer_sweep`](Self::defer_sweep), oldest first, each
    /// given a new epoch in the same atomic step: from here on the sweeper
    /// may delete under them, and a warm that still names the old epoch can
    /// no longer extend them (it learns its lease ended).
    async fn expired_leases(&self, now: Millis, limit: usize) -> Result<Vec<Lease>, IndexError>;

    /// Records that sweeping `lease` failed with `error`: its attempt count
    /// grows, and it is skipped by `expired_leases` until `backoff` says
    /// (the delay doubles with every recorded attempt, so it survives
    /// restarts). Returns the failure as stored.
    async fn defer_sweep(
        &self,
        lease: &Lease,
        error: &str,
        backoff: &SweepBackoff,
    ) -> Result<SweepFailure, IndexError>;

    /// Lease records at or under `prefix` (or covering it) whose sweep has
    /// failed, at most `limit`, ordered by prefix.
    async fn sweep_failures(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<SweepFailure>, IndexError>;

    /// Removes the lease record if it is still expired at `now` (a warm may
    /// have extended it meanwhile); returns whether it did.
    async fn remove_lease_if_expired(&self, lease: &Lease, now: Millis)
        -> Result<bool, IndexError>;
}

/// What is cached: the records of keys (entry and claim), and their totals.
#[async_trait::async_trait]
pub trait Records: Send + Sync + std::fmt::Debug + 'static {
    /// Records whose key lies in `range`, in byte order of keys, at most
    /// `limit`.
    async fn records(
        &self,
        directory_bucket: &str,
        range: &KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Record>, IndexError>;

    /// The record of one key, if the index has one.
    async fn get_record(
        &self,
        directory_bucket: &str,
        key: &str,
    ) -> Result<Option<Record>, IndexError> {
        let range = KeyRange {
            prefix: key,
            start: Bound::Included(key),
            end: Bound::Included(key),
        };
        Ok(self.records(directory_bucket, &range, 1).await?.pop())
    }

    /// Objects and bytes cached under `prefix`, all counted.
    #[cfg(any(test, feature = "testing"))]
    async fn usage(&self, directory_bucket: &str, prefix: &str) -> Result<Usage, IndexError> {
        self.usage_up_to(directory_bucket, prefix, u64::MAX).await
    }

    /// The same, as bounded work: counting stops soon after `limit`
    /// entries, and then the answer says `truncated` (its counts are lower
    /// bounds of at least `limit`). An answer not truncated is exact.
    async fn usage_up_to(
        &self,
        directory_bucket: &str,
        prefix: &str,
        limit: u64,
    ) -> Result<Usage, IndexError>;
}

/// The exclusive, time-limited right to change one key: a copy claims it
/// and records its entry, an eviction claims it and removes it. Each method
/// is one atomic step per key.
#[async_trait::async_trait]
pub trait Claims: Send + Sync + std::fmt::Debug + 'static {
    /// Claims each key for a copy by `terms.owner` until `terms.deadline`,
    /// unless another owner holds a claim that
    /// [blocks](Claim::blocks) it at `terms.now` (re-claiming one's own
    /// claim extends it; an earlier attempt's of the same operation is
    /// taken over). One atomic step per key; one round trip per batch.
    async fn claim_copies(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
    ) -> Result<Vec<ClaimOutcome>, IndexError>;

    /// [`claim_copies`](Self::claim_copies) for one key.
    async fn claim_copy(
        &self,
        directory_bucket: &str,
        key: &str,
        terms: &ClaimTerms<'_>,
    ) -> Result<ClaimOutcome, IndexError> {
        let mut out = self
            .claim_copies(directory_bucket, &[key.to_owned()], terms)
            .await?;
        out.pop()
            .ok_or_else(|| IndexError::Corrupt("claim_copies answered nothing".into()))
    }

    /// Extends `owner`'s copy claim on `key` to `deadline` if `owner` still
    /// holds it; never takes a claim that is free or someone else's (a
    /// heartbeat must not re-acquire a claim it lost). Returns whether it
    /// held.
    async fn renew_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
        deadline: Millis,
    ) -> Result<bool, IndexError>;

    /// Records successful copies (the entries) and drops `owner`'s claims
    /// on them, each only if `owner` still holds a copy claim on the key
    /// (one conditional write per entry): a copier whose claim lapsed and
    /// was taken over never overwrites the newer holder's entry.
    async fn complete_copies(
        &self,
        entries: &[Entry],
        owner: &str,
    ) -> Result<Vec<Completion>, IndexError>;

    /// [`complete_copies`](Self::complete_copies) for one entry.
    #[cfg(any(test, feature = "testing"))]
    async fn complete_copy(&self, entry: &Entry, owner: &str) -> Result<Completion, IndexError> {
        let mut out = self
            .complete_copies(std::slice::from_ref(entry), owner)
            .await?;
        out.pop()
            .ok_or_else(|| IndexError::Corrupt("complete_copies answered nothing".into()))
    }

    /// Drops `owner`'s claim on `key` (a copy that failed).
    async fn release_claim(
        &self,
        directory_bucket: &str,
        key: &str,
        owner: &str,
    ) -> Result<(), IndexError>;

    /// For each key, in one atomic step per key: if it is cached, no other
    /// claim is live at `terms.now` and (unless `force`) no live lease
    /// covers it, claims it for deletion by `terms.owner` until
    /// `terms.deadline`.
    async fn begin_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
        force: bool,
    ) -> Result<Vec<EvictDecision>, IndexError>;

    /// For `keys` still claimed for deletion by `owner`: the delete's
    /// outcome is unknown (its reply was lost), so the object may or may
    /// not be gone. Marks the entries unconfirmed (no longer trusted as
    /// hits: a warm copies the keys again; a later eviction may retry the
    /// delete) and lets the claims lapse at `deadline` (after which a
    /// delete still in flight can no longer land).
    async fn abandon_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
        deadline: Millis,
    ) -> Result<(), IndexError>;

    /// Removes the records of `keys` still claimed for deletion by `owner`
    /// (their objects are gone).
    async fn finish_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
    ) -> Result<(), IndexError>;
}

/// The cache index: leases, records and claims. Domain code asks for the
/// capability it uses; code that uses them all (the warm, the evictor)
/// asks for this.
pub trait CacheIndex: Leases + Records + Claims {}

impl<T: Leases + Records + Claims> CacheIndex for T {}

/// Everything a replica of the fleet keeps in its index: the cache, the
/// operation log and the replica registry. What the composition root hands
/// the fleet; each service takes only the part it calls.
pub trait FleetIndex: CacheIndex + OperationLog + ReplicaRegistry {}

impl<T: CacheIndex + OperationLog + ReplicaRegistry> FleetIndex for T {}

/// The operation log: warms as records that outlive the process (their
/// request, progress checkpoints, idempotency by request id, resumption
/// bookkeeping, retention). Separate from [`CacheIndex`] because it is a
/// different concern with different access patterns (a few records per warm,
/// read by id and by age), which a backend may store apart.
#[async_trait::async_trait]
pub trait OperationLog: RunLeases {
    /// Registers a new operation; if its request id is taken, returns the
    /// operation that holds it instead.
    async fn create_operation(&self, op: &OperationRecord) -> Result<CreateOutcome, IndexError>;

    /// Moves `op`'s request id from the finished operation `old_id` to the
    /// new operation `op`, and registers `op`, in one atomic step; does
    /// nothing and returns false unless `old_id` still holds that request
    /// id and is finished (a racing resubmission got there first).
    async fn supersede_operation(
        &self,
        old_id: &str,
        op: &OperationRecord,
    ) -> Result<bool, IndexError>;

    /// Stores the latest state of an operation if `ticket` still holds its
    /// run (fencing: a runner that was taken over, however late it wakes,
    /// cannot overwrite the new runner's state). A Done state finishes the
    /// operation and ends its run. Returns false, writing nothing, if the
    /// run is another attempt's or the operation is finished.
    async fn update_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
    ) -> Result<bool, IndexError>;

    /// Records a finished attempt: if `ticket` still holds the run, stores
    /// the lease epochs the attempt wrote (a resubmission of the request id
    /// checks them once the final state is visible) and the final `state`.
    /// Returns false, writing nothing, as
    /// [`update_operation`](Self::update_operation) does. A backend that
    /// can write both at once (SQLite: one transaction) makes them visible
    /// together and spares a herd of warms two index calls each.
    async fn finish_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
        epochs: &[(String, String)],
    ) -> Result<bool, IndexError> {
        // Epochs only while this attempt still holds the run (a renewal
        // answers that), so a runner taken over does not replace the
        // epochs the new attempt records.
        // A deadline long past extends nothing: it only asks. The epochs
        // serve resubmissions only: failing to record them must not keep
        // the final state from being recorded.
        match self.renew_run(id, ticket, 1).await {
            Ok(Renewal::Held { .. }) => {
                if let Err(e) = self.set_lease_epochs(id, epochs).await {
                    tracing::warn!(operation_id = id, error = %e, "could not record the lease epochs");
                }
            }
            Ok(Renewal::Lost) => {}
            Err(e) => {
                tracing::warn!(operation_id = id, error = %e, "could not check the run before recording the lease epochs");
            }
        }
        self.update_operation(id, ticket, state).await
    }

    async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, IndexError>;

    /// Operations newest first (by creation time, then id), strictly after
    /// the `(created_at, id)` cursor when given, at most `limit`.
    async fn list_operations(
        &self,
        filter: OpFilter,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, IndexError>;

    /// Records the epochs (prefix, epoch) of the leases `id` wrote, so a
    /// later submission with its request id can tell whether those very
    /// leases still stand.
    async fn set_lease_epochs(
        &self,
        id: &str,
        epochs: &[(String, String)],
    ) -> Result<(), IndexError>;

    /// The epochs recorded for `id` (empty if none were).
    async fn lease_epochs(&self, id: &str) -> Result<Vec<(String, String)>, IndexError>;

    /// Deletes finished operations last updated before `before`; returns
    /// how many.
    async fn purge_operations(&self, before: Millis) -> Result<u64, IndexError>;
}

/// Who runs each unfinished operation: the run lease (replica, attempt,
/// deadline) that fences every write of a runner, its takeover once it
/// lapses, and the marks other replicas read (cancel requested, joinable).
#[async_trait::async_trait]
pub trait RunLeases: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the run of the unfinished operation `id` for `terms.replica`
    /// until `terms.deadline`, as a new attempt, if nobody's run of it is
    /// live at `terms.now` (its runner crashed, was paused or partitioned
    /// past its deadline, or released it). In the same step, counts the
    /// previous run's end as a crash unless it was released. Returns
    /// `None` if the run is live or the operation finished or is unknown.
    async fn take_over(
        &self,
        id: &str,
        terms: &RunTerms<'_>,
    ) -> Result<Option<Takeover>, IndexError>;

    /// Extends `ticket`'s run of `id` to `deadline`; says whether it still
    /// holds it and whether a cancel was requested.
    async fn renew_run(
        &self,
        id: &str,
        ticket: &RunTicket,
        deadline: Millis,
    ) -> Result<Renewal, IndexError>;

    /// Ends `ticket`'s run of `id` on purpose (a graceful shutdown): any
    /// replica may take it over at once, and that takeover is no crash.
    async fn release_run(&self, id: &str, ticket: &RunTicket) -> Result<(), IndexError>;

    /// Asks the runner of the unfinished operation `id`, wherever it runs,
    /// to stop as cancelled (it sees the request when it next renews its
    /// run; whoever takes the run over next sees it at once). Returns
    /// whether an unfinished operation was flagged.
    async fn request_cancel(&self, id: &str) -> Result<bool, IndexError>;

    /// Counts one more resumption of an unfinished operation; returns the
    /// new count.
    async fn mark_resumed(&self, id: &str) -> Result<u32, IndexError>;

    /// Marks operation `id` joinable by warms of other replicas for
    /// `ticket`'s attempt (its [`RunLease::joinable`] reads true while that
    /// attempt holds the run): only if `ticket` holds the run and that
    /// attempt has not withdrawn. A write of the mark that lands after the
    /// withdrawal (a late retry) is refused, and a later attempt (a
    /// takeover) is never joinable by an earlier attempt's mark. Returns
    /// false, writing nothing, otherwise.
    async fn offer_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError>;

    /// Withdraws `ticket`'s attempt's mark, for good: once this returns
    /// true, no warm of another replica finds the operation joinable
    /// (however late an offer of the attempt lands). False, writing
    /// nothing, if `ticket` no longer holds the run.
    async fn withdraw_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError>;

    /// Unfinished operations whose current attempt offered them
    /// ([`offer_join`](Self::offer_join)) and has not withdrawn, oldest
    /// first, at most `limit`: what a warm of another replica may join.
    /// Read without regard to how many other operations run, so a job
    /// array's thousand warms do not hide its few offered rounds. A hint,
    /// not a verdict: it may lag the log by a moment, and a caller confirms
    /// an offer with [`get_operation`](OperationLog::get_operation) before
    /// it joins.
    async fn offered_operations(&self, limit: usize)
        -> Result<Vec<OperationRecord>, IndexError>;

    /// The `(created_at, id)` of unfinished operations, newest first,
    /// strictly after the cursor when given, at most `limit`: without
    /// their records, so a scan for lapsed runs reads cheaply and reads in
    /// full only the operations it has to judge. May lag the log by a
    /// moment (DynamoDB answers from its eventually consistent status
    /// index): a scan finds a just-created operation on its next pass.
    async fn unfinished_operations(
        &self,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, IndexError>;
}

/// The replicas sharing an index: each says now and then that it is alive,
/// so the live ones can split a per-bucket request budget (N replicas must
/// not put N times the load on one bucket) without talking to each other.
#[async_trait::async_trait]
pub trait ReplicaRegistry: Send + Sync + std::fmt::Debug + 'static {
    /// Records that `replica` is alive until `deadline`.
    async fn heartbeat(&self, replica: &str, deadline: Millis) -> Result<(), IndexError>;

    /// The replicas alive at `now` (deadline after it), by name.
    async fn live_replicas(&self, now: Millis) -> Result<Vec<String>, IndexError>;

    /// Removes `replica` at once (a graceful shutdown), so its share goes
    /// to the others without waiting for its deadline.
    async fn leave(&self, replica: &str) -> Result<(), IndexError>;
}
