//! One way to wrap an index: [`Decorated`] forwards every call of every
//! index trait to the backend through a [`Hook`], which sees the call's
//! [`Call`] (its name, read or write, subject and items) and awaits it.
//! The metrics ([`MeteredIndex`](super::MeteredIndex)) and the tests'
//! counting index are hooks; the list of calls is written once, below.
//!
//! Methods a trait provides on top of its others (`claim_copy`,
//! `complete_copy`, `usage`) are not forwarded: they reach the backend
//! through the calls they make, so a hook sees each backend call once.
//! Provided methods that backends replace (`extend_leases`, `get_record`,
//! `finish_operation`) are forwarded, or the backend's would never run.

use std::future::Future;

use super::{
    ClaimOutcome, ClaimTerms, Claims, Completion, CreateOutcome, Entry, EvictDecision, IndexError,
    KeyRange, Lease, Leases, Millis, OpFilter, OperationLog, OperationRecord, Record, Records,
    Renewal, ReplicaRegistry, RunLeases, RunTerms, RunTicket, SweepBackoff, SweepFailure, Takeover,
    Usage,
};
use crate::core::operation::OperationState;

/// Whether a call reads or writes the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What a hook knows of a call before it runs.
// The metrics read only the name; the tests' counting hook reads the rest.
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Its name in metrics, spans and the tests' fault injection.
    pub name: &'static str,
    pub access: Access,
    /// What it is about (a prefix, a key, an operation id, a replica);
    /// empty for scans.
    pub subject: &'a str,
    /// Items it writes: a batch of n counts n (DynamoDB bills per item).
    pub items: usize,
}

/// Runs around every index call of a [`Decorated`] index.
pub trait Hook: Send + Sync + std::fmt::Debug + 'static {
    /// Awaits `inner`, the backend's call described by `call`, and answers
    /// what the caller gets.
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        inner: impl Future<Output = Result<T, IndexError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, IndexError>> + Send + 'a;
}

/// An index whose every call goes through `hook`.
#[derive(Debug)]
pub struct Decorated<I, H> {
    pub(super) inner: I,
    pub(super) hook: H,
}

impl<I, H> Decorated<I, H> {
    pub fn with_hook(inner: I, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The backend, for reads a test makes without going through the hook.
    #[cfg(any(test, feature = "testing"))]
    pub fn inner(&self) -> &I {
        &self.inner
    }
}

/// `impl Trait for Decorated<I, H>` for each trait: every listed method
/// builds its [`Call`] (`= Read|Write(name, subject, items)`) and hands the
/// backend's call to the hook.
macro_rules! decorate {
    ($($trait:ident {
        $(fn $method:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty
            = $access:ident($name:literal, $subject:expr, $items:expr);)*
    })*) => {$(
        #[async_trait::async_trait]
        impl<I: $trait, H: Hook> $trait for Decorated<I, H> {$(
            async fn $method(&self, $($arg: $ty),*) -> Result<$ret, IndexError> {
                let call = Call {
                    name: $name,
                    access: Access::$access,
                    subject: $subject,
                    items: $items,
                };
                self.hook.around(call, self.inner.$method($($arg),*)).await
            }
        )*}
    )*};
}

fn first(keys: &[String]) -> &str {
    keys.first().map_or("", String::as_str)
}

decorate! {
    Leases {
        fn extend_lease(lease: &Lease, now: Millis) -> Lease
            = Write("extend_lease", &lease.prefix, 1);
        fn extend_leases(leases: &[Lease], now: Millis) -> Vec<Lease>
            = Write("extend_leases", leases.first().map_or("", |l| l.prefix.as_str()), leases.len());
        fn covering_leases(directory_bucket: &str, prefix: &str, now: Millis) -> Vec<Lease>
            = Read("covering_leases", prefix, 1);
        fn leases_under(directory_bucket: &str, prefix: &str, now: Millis, limit: usize) -> Vec<Lease>
            = Read("leases_under", prefix, 1);
        fn end_leases(directory_bucket: &str, prefix: &str, now: Millis) -> Vec<Lease>
            = Write("end_leases", prefix, 1);
        fn expired_leases(now: Millis, limit: usize) -> Vec<Lease>
            = Read("expired_leases", "", 1);
        fn defer_sweep(lease: &Lease, error: &str, backoff: &SweepBackoff) -> SweepFailure
            = Write("defer_sweep", &lease.prefix, 1);
        fn sweep_failures(directory_bucket: &str, prefix: &str, limit: usize) -> Vec<SweepFailure>
            = Read("sweep_failures", prefix, 1);
        fn remove_lease_if_expired(lease: &Lease, now: Millis) -> bool
            = Write("remove_lease_if_expired", &lease.prefix, 1);
    }
    Records {
        fn records(directory_bucket: &str, range: &KeyRange<'_>, limit: usize) -> Vec<Record>
            = Read("records", range.prefix, 1);
        fn get_record(directory_bucket: &str, key: &str) -> Option<Record>
            = Read("get_record", key, 1);
        fn usage_up_to(directory_bucket: &str, prefix: &str, limit: u64) -> Usage
            = Read("usage", prefix, 1);
    }
    Claims {
        fn claim_copies(directory_bucket: &str, keys: &[String], terms: &ClaimTerms<'_>) -> Vec<ClaimOutcome>
            = Write("claim_copies", first(keys), keys.len());
        fn renew_claim(directory_bucket: &str, key: &str, owner: &str, deadline: Millis) -> bool
            = Write("renew_claim", key, 1);
        fn complete_copies(entries: &[Entry], owner: &str) -> Vec<Completion>
            = Write("complete_copies", entries.first().map_or("", |e| e.key.as_str()), entries.len());
        fn release_claim(directory_bucket: &str, key: &str, owner: &str) -> ()
            = Write("release_claim", key, 1);
        fn begin_evict(directory_bucket: &str, keys: &[String], terms: &ClaimTerms<'_>, force: bool) -> Vec<EvictDecision>
            = Write("begin_evict", first(keys), keys.len());
        fn abandon_evict(directory_bucket: &str, keys: &[String], owner: &str, deadline: Millis) -> ()
            = Write("abandon_evict", first(keys), keys.len());
        fn finish_evict(directory_bucket: &str, keys: &[String], owner: &str) -> ()
            = Write("finish_evict", first(keys), keys.len());
    }
    OperationLog {
        fn create_operation(op: &OperationRecord) -> CreateOutcome
            = Write("create_operation", &op.id, 1);
        fn supersede_operation(old_id: &str, op: &OperationRecord) -> bool
            = Write("supersede_operation", &op.id, 1);
        fn update_operation(id: &str, ticket: &RunTicket, state: &OperationState) -> bool
            = Write("update_operation", id, 1);
        fn finish_operation(id: &str, ticket: &RunTicket, state: &OperationState, epochs: &[(String, String)]) -> bool
            = Write("finish_operation", id, 1);
        fn get_operation(id: &str) -> Option<OperationRecord>
            = Read("get_operation", id, 1);
        fn list_operations(filter: OpFilter, after: Option<(Millis, String)>, limit: usize) -> Vec<OperationRecord>
            = Read("list_operations", "", 1);
        fn set_lease_epochs(id: &str, epochs: &[(String, String)]) -> ()
            = Write("set_lease_epochs", id, 1);
        fn lease_epochs(id: &str) -> Vec<(String, String)>
            = Read("lease_epochs", id, 1);
        fn purge_operations(before: Millis) -> u64
            = Write("purge_operations", "", 1);
    }
    RunLeases {
        fn take_over(id: &str, terms: &RunTerms<'_>) -> Option<Takeover>
            = Write("take_over", id, 1);
        fn renew_run(id: &str, ticket: &RunTicket, deadline: Millis) -> Renewal
            = Write("renew_run", id, 1);
        fn release_run(id: &str, ticket: &RunTicket) -> ()
            = Write("release_run", id, 1);
        fn request_cancel(id: &str) -> bool
            = Write("request_cancel", id, 1);
        fn mark_resumed(id: &str) -> u32
            = Write("mark_resumed", id, 1);
        fn offer_join(id: &str, ticket: &RunTicket) -> bool
            = Write("offer_join", id, 1);
        fn withdraw_join(id: &str, ticket: &RunTicket) -> bool
            = Write("withdraw_join", id, 1);
        fn offered_operations(limit: usize) -> Vec<OperationRecord>
            = Read("offered_operations", "", 1);
        fn unfinished_operations(after: Option<(Millis, String)>, limit: usize) -> Vec<(Millis, String)>
            = Read("unfinished_operations", "", 1);
    }
    ReplicaRegistry {
        fn heartbeat(replica: &str, deadline: Millis) -> ()
            = Write("heartbeat", replica, 1);
        fn live_replicas(now: Millis) -> Vec<String>
            = Read("live_replicas", "", 1);
        fn leave(replica: &str) -> ()
            = Write("leave", replica, 1);
    }
}
