//! When a broken call is tried again, and how long the client waits first.

use std::sync::Arc;
use std::time::Duration;

use crate::ClientError;

/// Called before each reconnect: the error, the attempt (from 1) and the
/// attempts allowed.
pub type RetryHook = Arc<dyn Fn(&ClientError, u32, u32) + Send + Sync>;

/// How [`Client::warm_and_wait`](crate::Client::warm_and_wait) and
/// [`Client::watch_and_wait`](crate::Client::watch_and_wait) survive a
/// dropped connection or a restarting server: up to `attempts` reconnects,
/// moving to the next endpoint each time; `between_endpoints` apart within
/// one round over the endpoints, then a backoff from `first_delay`
/// doubling to `max_delay` after each full round (all replicas may be
/// restarting).
#[derive(Clone)]
pub struct RetryPolicy {
    /// Reconnects allowed over the whole wait.
    pub attempts: u32,
    /// Pause before trying the next endpoint within a round.
    pub between_endpoints: Duration,
    /// Pause after the first full round over the endpoints.
    pub first_delay: Duration,
    /// Longest pause.
    pub max_delay: Duration,
    /// Told of every reconnect (the CLI prints a warning).
    pub on_retry: Option<RetryHook>,
}

impl Default for RetryPolicy {
    /// 10 reconnects, 200 ms between endpoints, 0.5 s doubling to 10 s
    /// between rounds: about a minute of a service being down.
    fn default() -> Self {
        Self {
            attempts: 10,
            between_endpoints: Duration::from_millis(200),
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
            .field("between_endpoints", &self.between_endpoints)
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

    /// The pause before reconnect number `attempt` (from 1) over
    /// `endpoints` endpoints.
    pub fn delay(&self, attempt: u32, endpoints: usize) -> Duration {
        let n = u32::try_from(endpoints.max(1)).unwrap_or(u32::MAX);
        if !attempt.is_multiple_of(n) {
            return self.between_endpoints;
        }
        let rounds = attempt / n - 1;
        self.first_delay
            .saturating_mul(2u32.saturating_pow(rounds))
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
    fn within_a_round_short_pauses_then_backoff_per_round() {
        let p = RetryPolicy::default();
        let ms = |a, n| p.delay(a, n).as_millis();
        // Three endpoints: two quick moves, then a round's backoff.
        assert_eq!([ms(1, 3), ms(2, 3), ms(3, 3)], [200, 200, 500]);
        assert_eq!([ms(6, 3), ms(9, 3), ms(30, 3)], [1000, 2000, 10_000]);
        // One endpoint: every attempt is a full round.
        assert_eq!([ms(1, 1), ms(2, 1), ms(3, 1)], [500, 1000, 2000]);
    }

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(retryable(&ClientError::StreamEnded("op".into())));
        assert!(retryable(&tonic::Status::unavailable("restarting").into()));
        assert!(!retryable(&tonic::Status::invalid_argument("bad").into()));
        assert!(!retryable(&tonic::Status::not_found("gone").into()));
    }
}
