//! An index hook that times every call into the
//! `expresscache_index_request_duration_seconds` histogram and counts the
//! failures, labelled by call and backend: one place for every backend,
//! so SQLite and DynamoDB report alike.

use std::future::Future;

use tracing::Instrument;

use super::decorate::{Call, Decorated, Hook};
use super::IndexError;
use crate::metrics::{INDEX_ERRORS, INDEX_REQUEST_DURATION};

/// Times and counts the calls of one backend.
#[derive(Debug)]
pub struct Metered {
    backend: &'static str,
}

/// An index whose calls are timed and counted.
pub type MeteredIndex<I> = Decorated<I, Metered>;

impl<I> MeteredIndex<I> {
    /// Wraps `inner`, labelling its calls `backend` ("sqlite", "dynamodb").
    pub fn new(inner: I, backend: &'static str) -> Self {
        Self::with_hook(inner, Metered { backend })
    }
}

impl Hook for Metered {
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        inner: impl Future<Output = Result<T, IndexError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, IndexError>> + Send + 'a {
        let operation = call.name;
        let span = tracing::debug_span!(
            "index",
            otel.name = operation,
            index.operation = operation,
            index.backend = self.backend
        );
        async move {
            let started = std::time::Instant::now();
            let result = inner.instrument(span).await;
            let labels = [("operation", operation), ("backend", self.backend)];
            metrics::histogram!(INDEX_REQUEST_DURATION, &labels).record(started.elapsed());
            if result.is_err() {
                metrics::counter!(INDEX_ERRORS, &labels).increment(1);
            }
            result
        }
    }
}
