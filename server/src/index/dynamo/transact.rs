//! Transactions on the operations table (`TransactWriteItems`), and what
//! their cancellations answer.

use aws_sdk_dynamodb::types::TransactWriteItem;

use super::errors::{self, Cancelled};
use super::DynamoIndex;
use crate::index::IndexError;

/// A transaction refused as a whole (not cancelled action by action).
#[derive(Debug)]
pub(super) struct Refusal {
    pub error: IndexError,
    /// The service's error code and message, if it answered.
    pub code: Option<String>,
    pub message: Option<String>,
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub(super) enum Tx {
    Done,
    /// Cancelled: why, per action (at least one condition failed).
    Refused(Vec<Cancelled>),
    /// Cancelled by a write in flight on one of its items, or throttled:
    /// worth deciding again.
    Retry,
}

/// What a transaction cancelled for `reasons` (one per action) answers:
/// refused if a condition failed; an error for a refusal waiting does not
/// fix (validation, an item too large); otherwise worth deciding again.
pub(super) fn interpret(table: &str, reasons: Vec<Cancelled>) -> Result<Tx, IndexError> {
    if reasons.iter().any(|r| matches!(r, Cancelled::Condition(_))) {
        return Ok(Tx::Refused(reasons));
    }
    for r in &reasons {
        match r {
            Cancelled::Other(code, message)
                if !matches!(
                    code.as_str(),
                    "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded"
                ) =>
            {
                let what = format!("TransactWriteItems on {table}: {code}: {message}");
                return Err(if IndexError::is_size_message(message) {
                    IndexError::TooLarge(what)
                } else {
                    IndexError::Storage(what)
                });
            }
            _ => {}
        }
    }
    Ok(Tx::Retry)
}

impl DynamoIndex {
    /// One `TransactWriteItems`. The SDK gives it an idempotency token that
    /// its retries reuse, so a retried request whose first attempt landed
    /// succeeds instead of failing its own conditions.
    pub(super) async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<Tx, IndexError> {
        match self.transact_raw(actions).await {
            Ok(None) => Ok(Tx::Done),
            Ok(Some(reasons)) => interpret(&self.tables.operations, reasons),
            Err(refusal) => Err(refusal.error),
        }
    }

    /// One `TransactWriteItems` as DynamoDB answered it: done (`None`),
    /// cancelled with a reason per action, or refused as a whole (the
    /// error, and the service's message if it sent one).
    pub(super) async fn transact_raw(
        &self,
        actions: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<Cancelled>>, Refusal> {
        let table = self.tables.operations.as_str();
        let req = self
            .client
            .transact_write_items()
            // One token for every send: a resend whose first send landed
            // succeeds instead of failing its own conditions.
            .client_request_token(uuid::Uuid::new_v4().to_string())
            .set_transact_items(Some(actions));
        let res = self
            .persist("TransactWriteItems", || req.clone().send())
            .await;
        let err = match res {
            Ok(_) => return Ok(None),
            Err(e) => e,
        };
        match errors::cancellation(&err) {
            Some(reasons) => Ok(Some(reasons)),
            None => Err(Refusal {
                error: errors::classify("TransactWriteItems", table, &self.create_hint(), &err),
                code: errors::code(&err).map(str::to_owned),
                message: err
                    .as_service_error()
                    .and_then(aws_sdk_dynamodb::error::ProvideErrorMetadata::message)
                    .map(str::to_owned),
            }),
        }
    }
}
