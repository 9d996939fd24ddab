//! Exit codes: a launcher script branches on these, so they are part of the
//! interface (documented in the README and `--help`).

use std::process::ExitCode;

use expresscache_client::{ClientError, Outcome};
use tonic::Code;

/// Every object is present and current.
pub const SUCCEEDED: u8 = 0;
/// The warm failed as a whole, or the server failed the request: an
/// internal error, or a precondition of the server's that trying again
/// will not change (FAILED_PRECONDITION: e.g. it lacks AWS credentials
/// or a region, or a feature asked for is not configured), or a busy
/// server still busy after the reconnects (RESOURCE_EXHAUSTED).
pub const FAILED: u8 = 1;
/// Bad command line (an unknown endpoint scheme, an `s3://` URL given as
/// a prefix, a request that fails validation: all found before
/// connecting) or a request the server rejected as invalid.
pub const USAGE: u8 = 2;
/// Some objects could not be copied.
pub const PARTIALLY_FAILED: u8 = 3;
/// The warm was cancelled.
pub const CANCELLED: u8 = 4;
/// The server could not be reached (connection refused, timed out, TLS
/// handshake failed), or the stream broke and did not recover.
pub const UNAVAILABLE: u8 = 5;
/// A bucket or operation does not exist, or access to it was denied.
pub const NOT_FOUND_OR_DENIED: u8 = 6;

pub const HELP: &str = "Exit codes: 0 succeeded, 1 failed (also FAILED_PRECONDITION on the server, \
e.g. no AWS credentials), 2 usage or invalid request (checked before connecting), \
3 partially failed, 4 cancelled, 5 server unreachable, 6 bucket/operation not found or access denied.";

pub fn for_outcome(outcome: Outcome) -> ExitCode {
    ExitCode::from(match outcome {
        Outcome::Succeeded => SUCCEEDED,
        Outcome::PartiallyFailed => PARTIALLY_FAILED,
        Outcome::Cancelled => CANCELLED,
        _ => FAILED,
    })
}

pub fn for_error(e: &ClientError) -> ExitCode {
    ExitCode::from(match e {
        ClientError::Invalid(_) | ClientError::BadEndpoint(_) => USAGE,
        ClientError::Connect { .. } | ClientError::StreamEnded(_) => UNAVAILABLE,
        ClientError::Rpc(s) => match s.code() {
            Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => USAGE,
            Code::NotFound | Code::PermissionDenied | Code::Unauthenticated => NOT_FOUND_OR_DENIED,
            Code::Unavailable | Code::DeadlineExceeded => UNAVAILABLE,
            Code::Cancelled => CANCELLED,
            _ => FAILED,
        },
        _ => FAILED,
    })
}
