//! When a broken call is tried again, and how long the client waits first.

use std::sync::Arc;
use std::time::Duration;

use crate::ClientError;

/// Called before each reconnect: the error, the attempt (from 1) and the
/// attempts allowed.
pub type RetryHook = Arc<dyn Fn(&ClientError, u32, u32) + Send + Sync>;

/// How [`Client::warm_and_wait`](crate::Client::warm_and_wait) and
/// [`Client::watch_and_wait`](crate::Client::watch_and_wait) survive a
/// dropped connection or a restarting server: up to `attempts` reconnects
/// in a row (each tries every endpoint, starting after the one that
/// failed), `first_delay` apart at first, doubling to `max_delay` (all
/// replicas may be restarting). A reattached stream that delivers progress
/// starts the count again, so a long warm survives any number of
/// separate breaks.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Reconnects allowed in a row.
    pub attempts: u32,
    /// Pause before the first reconnect.
    pub first_delay: Duration,
    /// Longest pause.
    pub max_delay: Duration,
    /// Told of every reconnect (the CLI prints a warning).
    pub on_retry: Option<RetryHook>,
}

impl Default for RetryPolicy {
    /// 10 reconnects, 0.5 s doubling to 10 s: about a minute of a service
    /// being down.
    fn default() -> Self {
        Self {
            attempts: 10,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            on_retry: None,
        }
    }
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts", &self.attempts)
            .field("first_delay", &self.first_delay)
            .field("max_delay", &self.max_delay)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// No reconnects: the first broken call is the answer.
    pub fn none() -> Self {
        Self {
            attempts: 0,
            ..Self::default()
        }
    }

    /// The pause before reconnect number `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_delay)
    }
}

/// Whether a failed call may succeed if made again, elsewhere or later:
/// the connection failed or broke, or the server was going away. Anything
/// the server decided (invalid, not found, denied) is the answer.
pub fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::StreamEnded(_) => true,
        ClientError::Rpc(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Aborted
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_up_to_the_longest() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (1..=10).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(retryable(&ClientError::StreamEnded("op".into())));
        assert!(retryable(&tonic::Status::unavailable("restarting").into()));
        assert!(!retryable(&tonic::Status::invalid_argument("bad").into()));
        assert!(!retryable(&tonic::Status::not_found("gone").into()));
    }
}
