//! Operation records for index tests: what a warm's creation writes.

use std::time::Duration;

use expresscache::{BucketName, DirectoryBucketName, Prefix, RequestId, WarmSpec};

use crate::core::operation::{OperationState, RunLease, RunTicket};
use crate::index::OperationRecord;

/// The directory bucket of [`operation`]'s request.
pub const DIRECTORY_BUCKET: &str = "cache--use1-az4--x-s3";

/// A first run by replica "r1".
pub fn ticket() -> RunTicket {
    RunTicket {
        replica: "r1".into(),
        attempt: 1,
    }
}

/// An unfinished operation `id` created at `created_at`, under request id
/// `rid` if given, run by [`ticket`] until 1,000.
pub fn operation(id: &str, rid: Option<&str>, created_at: i64) -> OperationRecord {
    OperationRecord {
        id: id.into(),
        request_id: rid.map(str::to_owned),
        owner: None,
        request: WarmSpec {
            source: BucketName::parse("src").unwrap(),
            prefixes: vec![Prefix::parse("d/").unwrap(), Prefix::root()],
            directory_bucket: DirectoryBucketName::parse(DIRECTORY_BUCKET).unwrap(),
            ttl: Duration::from_secs(60),
            force_copy: false,
            request_id: rid.map(|r| RequestId::parse(r).unwrap()),
            destination_prefix: Prefix::root(),
            max_staleness: Duration::ZERO,
            batch_operations: false,
            allow_empty: false,
            selection: Default::default(),
        },
        state: OperationState::queued(id, created_at),
        created_at,
        resumptions: 0,
        run: Some(RunLease {
            ticket: ticket(),
            deadline: 1_000,
            cancel_requested: false,
            joinable: false,
        }),
    }
}
