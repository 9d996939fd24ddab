//! Counts the requests the index sends to DynamoDB, per operation, as they
//! go out (every attempt, retries included): what tests assert costs with
//! (a listing page's merge is a fixed number of Queries, not one read per
//! key), and what an operator can read off the index.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};

/// Requests sent so far, by DynamoDB operation name ("Query",
/// "UpdateItem", ...).
#[derive(Debug, Default)]
pub struct RequestCounts {
    by_operation: Mutex<BTreeMap<String, u64>>,
}

#[cfg(any(test, feature = "testing"))]
impl RequestCounts {
    /// Requests of `operation` sent so far.
    pub fn of(&self, operation: &str) -> u64 {
        self.snapshot().get(operation).copied().unwrap_or(0)
    }

    /// Every request sent so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    /// The counts by operation.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_operation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts counting from zero.
    pub fn reset(&self) {
        self.by_operation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl RequestCounts {
    fn add(&self, operation: &str) {
        *self
            .by_operation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(operation.to_owned())
            .or_default() += 1;
    }
}

/// The SDK interceptor that feeds [`RequestCounts`].
#[derive(Debug)]
pub struct CountRequests(pub Arc<RequestCounts>);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // DynamoDB's JSON protocol names the operation in this header:
        // "DynamoDB_20120810.Query".
        let op = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("unknown");
        self.0.add(op);
        Ok(())
    }
}
