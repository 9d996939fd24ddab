//! SDK failures as [`IndexError`]s. A failed condition is not among them:
//! the requests in `mod.rs` turn it into [`Cond::Refused`](super::Cond),
//! the answer it is.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;

use super::layout::Item;
use super::IndexError;

/// Error codes that mean "too much right now": waiting may fix them.
const BUSY_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
    // A single write on an item a transaction is writing (a renewal, a
    // cancel beside a joiner's final state sent in a group): DynamoDB
    // refuses it until the transaction is done.
    "TransactionConflictException",
];

/// The service's error code, if DynamoDB answered with an error.
pub fn code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// Whether DynamoDB was busy (throttling, 5xx) or did not answer in time:
/// the same request may succeed if sent again after a pause. A failed
/// condition, a missing table or a refused request is never busy.
pub fn busy<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            // A transaction cancelled by throttling alone (its message
            // lists the reasons, e.g. "[ThrottlingError, None]") is a
            // throttle; one with a failed condition is an answer.
            let message = se.err().message().unwrap_or_default();
            let throttled_transaction = code == "TransactionCanceledException"
                && message.contains("ThrottlingError")
                && !message.contains("ConditionalCheckFailed");
            BUSY_CODES.contains(&code)
                || throttled_transaction
                || (se.raw().status().as_u16() >= 500 && code != "ResourceNotFoundException")
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        // A connection that failed or timed out; not a request that could
        // not be made at all (no credentials, no region): waiting does not
        // fix configuration.
        // Classified "other" failures (an incomplete reply) are transient;
        // unclassified and user ones (a credentials provider that failed)
        // are not.
        SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout() || d.as_other().is_some(),
        _ => false,
    }
}

/// Maps what the SDK gave up on (after its own retries) onto
/// [`IndexError`]: throttling, 5xx, timeouts and connection failures are
/// [`IndexError::Unavailable`]; a missing table names the command that
/// creates it; the rest (access denied, validation) is
/// [`IndexError::Storage`].
pub fn classify<E>(
    call: &str,
    table: &str,
    create_hint: &str,
    err: &SdkError<E, HttpResponse>,
) -> IndexError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            let message = se.err().message().unwrap_or_default();
            let status = se.raw().status().as_u16();
            if code == "ResourceNotFoundException" {
                IndexError::Storage(format!(
                    "{call} on DynamoDB table {table}: table not found ({message}); {create_hint}"
                ))
            } else if busy(err) {
                IndexError::Unavailable(format!("{call} on {table}: {code}: {message}"))
            } else if code == "ValidationException" && IndexError::is_size_message(message) {
                IndexError::TooLarge(format!("{call} on {table}: {message}"))
            } else {
                IndexError::Storage(format!("{call} on {table}: {code} ({status}): {message}"))
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
            if busy(err) =>
        {
            IndexError::Unavailable(format!("{call} on {table}: {}", DisplayErrorContext(err)))
        }
        // Construction and serialization failures: ours, not the service's.
        _ => IndexError::Storage(format!("{call} on {table}: {}", DisplayErrorContext(err))),
    }
}

/// Errors that can be a failed condition, which carries the item as it
/// was (ReturnValuesOnConditionCheckFailure = ALL_OLD).
pub trait ConditionalFailure {
    /// `Some(item)` if this is a failed condition (`item` is `None` when
    /// there was no item), `None` for any other error.
    fn refused_item(&self) -> Option<Option<Item>>;
}

impl ConditionalFailure for UpdateItemError {
    fn refused_item(&self) -> Option<Option<Item>> {
        match self {
            Self::ConditionalCheckFailedException(e) => Some(e.item().cloned()),
            _ => None,
        }
    }
}

impl ConditionalFailure for DeleteItemError {
    fn refused_item(&self) -> Option<Option<Item>> {
        match self {
            Self::ConditionalCheckFailedException(e) => Some(e.item().cloned()),
            _ => None,
        }
    }
}

impl ConditionalFailure for PutItemError {
    fn refused_item(&self) -> Option<Option<Item>> {
        match self {
            Self::ConditionalCheckFailedException(e) => Some(e.item().cloned()),
            _ => None,
        }
    }
}

/// Why DynamoDB cancelled one action of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// Not this action (DynamoDB's code "None").
    No,
    /// Its condition failed; the item as it was (`None`: no item).
    Condition(Option<Item>),
    /// Another write to its item was in flight: the transaction may be
    /// tried again.
    Conflict,
    /// Anything else (throttling, validation): the code and message.
    Other(String, String),
}

/// Per action, why a cancelled transaction was cancelled; `None` if `err`
/// is not a cancellation.
pub fn cancellation(
    err: &SdkError<TransactWriteItemsError, HttpResponse>,
) -> Option<Vec<Cancelled>> {
    let SdkError::ServiceError(se) = err else {
        return None;
    };
    let TransactWriteItemsError::TransactionCanceledException(e) = se.err() else {
        return None;
    };
    Some(
        e.cancellation_reasons()
            .iter()
            .map(|r| match r.code() {
                None | Some("None") => Cancelled::No,
                Some("ConditionalCheckFailed") => Cancelled::Condition(r.item().cloned()),
                Some("TransactionConflict") => Cancelled::Conflict,
                Some(code) => {
                    Cancelled::Other(code.to_owned(), r.message().unwrap_or_default().to_owned())
                }
            })
            .collect(),
    )
}

/// The failed condition's item inside `err`, if that is what it is.
pub fn refused<E: ConditionalFailure>(err: &SdkError<E, HttpResponse>) -> Option<Option<Item>> {
    match err {
        SdkError::ServiceError(se) => se.err().refused_item(),
        _ => None,
    }
}
