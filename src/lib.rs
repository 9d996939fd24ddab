//! The expresscache wire contract and the validated types it converts into.
//!
//! [`proto::v1`] holds the messages and tonic stubs generated from
//! `proto/expresscache/v1/cache.proto`. Requests arriving from the network are
//! turned into the types of [`request`] by one validating conversion each, so
//! handlers never see a raw string they must re-check. The client uses the
//! same conversions to reject bad input before it leaves the machine.

pub mod backoff;
pub mod counters;
pub mod names;
pub mod request;
pub mod violation;

/// Generated protobuf messages and gRPC stubs.
pub mod proto {
    /// `package expresscache.v1`.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        tonic::include_proto!("expresscache.v1");
    }
}

/// Encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("expresscache_descriptor");

pub use backoff::Backoff;
pub use counters::Counters;
pub use names::{BucketName, DirectoryBucketName, Prefix, RequestId};
pub use request::{EvictSpec, Limits, StatusQuery, WarmSpec};
pub use violation::{FieldViolation, InvalidRequest};
