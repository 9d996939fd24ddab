//! Errors as the CLI prints them on stderr: one readable line each (the
//! gRPC code by its documented name, the cause of a failed connection),
//! and every field violation once, on its own line.

use expresscache_client::{code_name, one_line, ClientError};
use tonic_types::StatusExt;

/// `problems` under one `error:` line: alone on it when there is one,
/// else each on its own line below `header`.
pub fn problem_lines(header: &str, problems: &[String]) -> Vec<String> {
    match problems {
        [one] if header.is_empty() => vec![format!("error: {one}")],
        [one] => vec![format!("error: {header}: {one}")],
        many => {
            let header = if header.is_empty() {
                "the command line has problems"
            } else {
                header
            };
            let mut out = vec![format!("error: {header}:")];
            out.extend(many.iter().map(|p| format!("  {p}")));
            out
        }
    }
}

/// How `e` is printed.
pub fn error_lines(e: &ClientError) -> Vec<String> {
    match e {
        ClientError::Invalid(invalid) => {
            let problems: Vec<String> = invalid
                .violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect();
            problem_lines("invalid request", &problems)
        }
        ClientError::Rpc(status) => status_lines(status),
        ClientError::Connect { endpoint, .. } if e.is_connection_refused() => {
            vec![format!("error: {e} {}", refused_hint(endpoint))]
        }
        other => vec![format!("error: {}", one_line(&other.to_string()))],
    }
}

/// What to do about a refused connection: nothing listens there.
fn refused_hint(endpoint: &str) -> String {
    let address = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .trim_end_matches('/');
    format!(
        "(is expresscache-server running there? start it with `expresscache-server --listen {address}`, \
         or set --endpoint / EXPRESSCACHE_ENDPOINT to where it runs)"
    )
}

/// An error status: `error: CODE: message`, with what its details add
/// (reason, retry hint, request id) on the same line. Field violations
/// the message already carries are not repeated; when the message is
/// nothing but several of them (an invalid request), each gets its own
/// line instead.
pub fn status_lines(s: &tonic::Status) -> Vec<String> {
    let code = code_name(s.code());
    let message = one_line(s.message());
    let notes = notes(s, &message);
    let violations: Vec<(String, String)> = s
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, one_line(&v.description)))
                .collect()
        })
        .unwrap_or_default();
    let in_message = |(_, description): &(String, String)| message.contains(description.as_str());
    if violations.len() > 1 && violations.iter().all(in_message) {
        let problems: Vec<String> = violations
            .iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect();
        return problem_lines(&format!("{code}: invalid request{notes}"), &problems);
    }
    let mut out = vec![format!("error: {code}: {message}{notes}")];
    out.extend(
        violations
            .iter()
            .filter(|v| !in_message(v))
            .map(|(field, description)| format!("  {field}: {description}")),
    );
    out
}

/// What a status's details add to its message, as ` (a; b)`, or "".
fn notes(s: &tonic::Status, message: &str) -> String {
    let mut notes = Vec::new();
    // The reason a script can match on, and when trying again helps.
    if let Some(info) = s.get_details_error_info() {
        notes.push(format!("reason: {}", info.reason));
    }
    if let Some(delay) = s.get_details_retry_info().and_then(|r| r.retry_delay) {
        notes.push(format!("retry after {}", humantime::format_duration(delay)));
    }
    if let Some(info) = s.get_details_request_info() {
        if !info.request_id.is_empty() && !message.contains(&info.request_id) {
            notes.push(format!("request id {}", info.request_id));
        }
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use expresscache::{FieldViolation, InvalidRequest};
    use tonic::Code;
    use tonic_types::ErrorDetails;

    fn invalid() -> InvalidRequest {
        InvalidRequest {
            violations: vec![
                FieldViolation::new("bucket", "\"bad_bucket\" contains '_'"),
                FieldViolation::new("ttl", "must be greater than zero"),
            ],
        }
    }

    #[test]
    fn a_servers_field_violations_are_printed_once_each_on_its_own_line() {
        let lines = status_lines(&invalid().to_status());
        assert_eq!(
            lines,
            [
                "error: INVALID_ARGUMENT: invalid request:",
                "  bucket: \"bad_bucket\" contains '_'",
                "  ttl: must be greater than zero",
            ]
        );
    }

    #[test]
    fn a_local_invalid_request_is_printed_the_same_way() {
        let lines = error_lines(&ClientError::Invalid(invalid()));
        assert_eq!(lines[0], "error: invalid request:");
        assert_eq!(lines.len(), 3);
        let one = InvalidRequest {
            violations: vec![FieldViolation::new("ttl", "must be greater than zero")],
        };
        assert_eq!(
            error_lines(&ClientError::Invalid(one.clone())),
            ["error: invalid request: ttl: must be greater than zero"]
        );
        assert_eq!(
            status_lines(&one.to_status()),
            ["error: INVALID_ARGUMENT: invalid request: ttl: must be greater than zero"]
        );
    }

    #[test]
    fn a_failed_precondition_is_one_readable_line() {
        let s = tonic::Status::failed_precondition(
            "the server has no AWS region configured\n(set AWS_REGION); request id 4F2A",
        );
        assert_eq!(
            status_lines(&s),
            ["error: FAILED_PRECONDITION: the server has no AWS region configured (set AWS_REGION); request id 4F2A"]
        );
        // A detail that repeats the message is not printed again; the
        // reason joins the line.
        let message = "batch_operations: this server is not configured for S3 Batch Operations";
        let mut details = ErrorDetails::new();
        details.set_error_info("BATCH_NOT_CONFIGURED", "expresscache", []);
        details.add_bad_request_violation("batch_operations", message);
        let s = tonic::Status::with_error_details(Code::FailedPrecondition, message, details);
        assert_eq!(
            status_lines(&s),
            [format!(
                "error: FAILED_PRECONDITION: {message} (reason: BATCH_NOT_CONFIGURED)"
            )]
        );
    }

    #[test]
    fn a_busy_server_says_when_to_come_back_on_the_same_line() {
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(std::time::Duration::from_secs(5)));
        details.set_error_info("SERVER_BUSY", "expresscache", []);
        let s = tonic::Status::with_error_details(Code::ResourceExhausted, "queue full", details);
        assert_eq!(
            status_lines(&s),
            ["error: RESOURCE_EXHAUSTED: queue full (reason: SERVER_BUSY; retry after 5s)"]
        );
    }

    #[test]
    fn problems_before_sending_are_one_line_or_a_list() {
        assert_eq!(problem_lines("", &["a".to_owned()]), ["error: a"]);
        assert_eq!(
            problem_lines("", &["a".to_owned(), "b".to_owned()]),
            ["error: the command line has problems:", "  a", "  b"]
        );
    }
}
