//! Async client for expresscache, the service that warms S3 Express One Zone
//! directory buckets from general-purpose S3 buckets.
//!
//! The call a job launcher needs is [`Client::warm_and_wait`]: submit a warm,
//! follow its progress, and get the final [`WarmReport`] once every object is
//! present and current in the directory bucket (or could not be made so). It
//! survives a dropped connection or a restarting server: it reconnects (to
//! the next replica, given several) and reattaches by request id, by a
//! [`RetryPolicy`].
//!
//! ```no_run
//! use std::time::Duration;
//! use expresscache_client::{Client, Outcome, WarmRequest};
//!
//! # async fn launch() -> Result<(), expresscache_client::ClientError> {
//! let mut client = Client::connect("http://127.0.0.1:50051").await?;
//! let request = WarmRequest::new("genomics-raw", "genomics-cache--use1-az4--x-s3")
//!     .prefix("runs/2026-11-26/")
//!     .ttl(Duration::from_secs(6 * 3600))
//!     .request_id("slurm-job-81234");
//! let report = client
//!     .warm_and_wait(request, |p| {
//!         let c = &p.counters;
//!         eprintln!("{:?}: {} of {} copied", p.phase, c.objects_copied, c.objects_to_copy);
//!     })
//!     .await?;
//! assert_eq!(report.outcome, Outcome::Succeeded, "cache not ready: {report:?}");
//! // ... start the compute job here ...
//! # Ok(())
//! # }
//! ```
//!
//! The crate alone pulls in no command-line dependencies; the `cli`
//! feature builds the `expresscache` binary.

#![warn(missing_docs)]

mod client;
mod describe;
mod endpoints;
mod progress;
mod request;
mod retry;

use describe::OneLine;
/// The wire format (protobuf messages and the gRPC service), for tools
/// that need more than the typed API.
pub use expresscache::proto::v1 as pb;
use expresscache::InvalidRequest;

pub use client::Client;
pub use describe::{code_name, one_line};
pub use endpoints::{Credentials, Endpoints, ENDPOINT_FORMS};
pub use progress::{Counters, KeyFailure, Outcome, Phase, Progress, WarmReport};
pub use request::{client_limits, WarmRequest};
pub use retry::{retry_hint, retryable, RetryHook, RetryPolicy};

/// What can go wrong talking to the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request is invalid; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The connection could not be made. Shown as one line with the
    /// cause from deep in the transport error ("connection refused", a DNS
    /// or TLS failure), not tonic's bare "transport error".
    #[error("cannot connect to {endpoint}: {}", .source.one_line())]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// Why it failed.
        source: tonic::transport::Error,
    },
    /// The service answered with an error status (shown as
    /// `CODE: message`, the code by its gRPC name).
    #[error("{}", .0.one_line())]
    Rpc(#[from] tonic::Status),
    /// An endpoint list that cannot be used; nothing was sent.
    #[error("{0}")]
    BadEndpoint(String),
    /// The progress stream ended without a final message.
    #[error("progress stream of operation {0:?} ended before the warm finished")]
    StreamEnded(String),
    /// A dry run could not complete its plan (the listing or the index
    /// failed); the message says why.
    #[error("the dry run failed: {0}")]
    PlanFailed(String),
}

impl ClientError {
    /// Whether nothing listens at the endpoint: the connection was
    /// refused (the server is not running there, or not on that port).
    pub fn is_connection_refused(&self) -> bool {
        match self {
            Self::Connect { source, .. } => {
                describe::has_io_kind(source, std::io::ErrorKind::ConnectionRefused)
            }
            _ => false,
        }
    }
}
