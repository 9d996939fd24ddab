//! The audit trail: one line (tracing target `audit`) per mutating call —
//! who, which RPC, which buckets and prefixes, and how it ended. A call
//! whose caller hung up before the answer is still recorded (`caller_gone`):
//! the work it started goes on.

use tonic::Status;

use crate::auth::Principal;
use expresscache::proto::v1 as pb;

/// Most prefixes written out in one line; the count is always there.
const MAX_PREFIXES_LOGGED: usize = 20;

/// A mutating call being served; logs when finished or dropped.
#[derive(Debug)]
pub struct Entry {
    principal: String,
    rpc: &'static str,
    source: String,
    directory_bucket: String,
    prefixes: String,
    prefix_count: usize,
    done: bool,
}

fn joined(prefixes: &[String]) -> String {
    let mut s = prefixes
        .iter()
        .take(MAX_PREFIXES_LOGGED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",");
    if prefixes.len() > MAX_PREFIXES_LOGGED {
        s.push_str(",...");
    }
    s
}

impl Entry {
    fn new(
        who: &Principal,
        rpc: &'static str,
        source: &str,
        dir: &str,
        prefixes: &[String],
    ) -> Self {
        Self {
            principal: who.0.clone(),
            rpc,
            source: source.to_owned(),
            directory_bucket: dir.to_owned(),
            prefixes: joined(prefixes),
            prefix_count: prefixes.len(),
            done: false,
        }
    }

    pub fn warm(who: &Principal, req: &pb::WarmCacheRequest) -> Self {
        Self::new(
            who,
            "WarmCache",
            &req.bucket,
            &req.directory_bucket,
            &req.prefixes,
        )
    }

    pub fn evict(who: &Principal, req: &pb::EvictRequest) -> Self {
        Self::new(who, "Evict", "", &req.directory_bucket, &req.prefixes)
    }

    pub fn cancel(who: &Principal) -> Self {
        Self::new(who, "CancelOperation", "", "", &[])
    }

    fn log(&self, outcome: &str, operation_id: &str, detail: &str) {
        // Quoted and escaped (`?`): request strings are logged before
        // validation, and a newline in one must not forge a line.
        tracing::info!(target: "audit",
            principal = ?self.principal, rpc = self.rpc, source_bucket = ?self.source,
            directory_bucket = ?self.directory_bucket, prefixes = ?self.prefixes,
            prefix_count = self.prefix_count, operation_id = ?operation_id, outcome, detail = ?detail, "audit");
    }

    /// Records how the call ended (`operation_id`: the operation it
    /// started, attached to or cancelled, if known).
    pub fn finish<T>(mut self, operation_id: &str, result: &Result<T, Status>) {
        self.done = true;
        match result {
            Ok(_) => self.log("ok", operation_id, ""),
            Err(s) => self.log(&format!("{:?}", s.code()), operation_id, s.message()),
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if !self.done {
            self.log(
                "caller_gone",
                "",
                "the caller went away before the answer; the work goes on",
            );
        }
    }
}
