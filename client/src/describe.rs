//! Errors as one readable line: the cause a user can act on ("connection
//! refused", a DNS failure, a TLS handshake error) instead of tonic's bare
//! "transport error", and gRPC codes by their documented names.

use std::error::Error;
use std::io::ErrorKind;

/// The canonical name of a gRPC status code, as gRPC documents it and
/// other tools print it (`FAILED_PRECONDITION`, not `FailedPrecondition`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `text` on one line: its lines trimmed and joined by spaces (a server
/// message may carry an SDK error's several lines).
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every error in `e`'s source chain, `e` first.
fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// Whether an I/O error of `kind` is somewhere in `e`'s source chain.
pub(crate) fn has_io_kind(e: &(dyn Error + 'static), kind: ErrorKind) -> bool {
    chain(e).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

/// Why a connection could not be made, from the transport error's source
/// chain: "connection refused" and "connection timed out" by name, else
/// every distinct message of the chain but tonic's own "transport error"
/// (which says nothing), e.g. "dns error: failed to lookup address
/// information: Name or service not known".
pub(crate) fn connect_cause(e: &(dyn Error + 'static)) -> String {
    if has_io_kind(e, ErrorKind::ConnectionRefused) {
        return "connection refused".into();
    }
    if has_io_kind(e, ErrorKind::TimedOut) {
        return "connection timed out".into();
    }
    let mut parts: Vec<String> = Vec::new();
    for text in chain(e).map(|e| one_line(&e.to_string())) {
        // Wrappers repeat their source's message (tonic's ConnectError).
        if !text.is_empty() && text != "transport error" && !parts.contains(&text) {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        "transport error".into()
    } else {
        parts.join(": ")
    }
}

/// How [`ClientError`](crate::ClientError) shows its sources: one line.
pub(crate) trait OneLine {
    fn one_line(&self) -> String;
}

impl OneLine for tonic::transport::Error {
    fn one_line(&self) -> String {
        connect_cause(self)
    }
}

impl OneLine for tonic::Status {
    fn one_line(&self) -> String {
        format!("{}: {}", code_name(self.code()), one_line(self.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a source, as hyper-util's connect errors are.
    #[derive(Debug)]
    struct Wrapped(&'static str, std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn a_refused_connection_is_named_from_deep_in_the_chain() {
        let e = Wrapped(
            "tcp connect error",
            std::io::Error::from(ErrorKind::ConnectionRefused),
        );
        assert_eq!(connect_cause(&e), "connection refused");
    }

    #[test]
    fn other_causes_keep_every_distinct_message_on_one_line() {
        let e = Wrapped(
            "dns error",
            std::io::Error::other("failed to lookup address information:\n  Name unknown"),
        );
        assert_eq!(
            connect_cause(&e),
            "dns error: failed to lookup address information: Name unknown"
        );
    }

    #[test]
    fn statuses_print_the_documented_code_names() {
        let s = tonic::Status::failed_precondition("no AWS region\nconfigured");
        assert_eq!(
            s.one_line(),
            "FAILED_PRECONDITION: no AWS region configured"
        );
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
    }
}
