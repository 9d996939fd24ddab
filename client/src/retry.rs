//! When a broken call is tried again, and how long the client waits first.

use std::sync::Arc;
use std::time::Duration;

use expresscache::Backoff;
use tonic::Code;
use tonic_types::StatusExt;

use crate::ClientError;

/// Called before each reconnect: the error, the attempt (from 1) and the
/// attempts allowed.
pub type RetryHook = Arc<dyn Fn(&ClientError, u32, u32) + Send + Sync>;

/// How [`Client::warm_and_wait`](crate::Client::warm_and_wait) and
/// [`Client::watch_and_wait`](crate::Client::watch_and_wait) survive a
/// dropped connection or a restarting server: up to `attempts` reconnects
/// in a row (each tries every endpoint, starting after the one that
/// failed). Before reconnect `n` the client waits a random pause between
/// zero and [`ceiling(n)`](Self::ceiling) (`first_delay` doubling up to
/// `max_delay`: all replicas may be restarting): full jitter, so the
/// launchers of a job array that lost the same server do not all come
/// back at the same instant. A server's retry hint (RetryInfo) is waited
/// out first. A reattached stream that delivers progress starts the count
/// again, so a long warm survives any number of separate breaks.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Reconnects allowed in a row.
    pub attempts: u32,
    /// Longest pause before the first reconnect.
    pub first_delay: Duration,
    /// Longest pause before any reconnect.
    pub max_delay: Duration,
    /// Told of every reconnect (the CLI prints a warning).
    pub on_retry: Option<RetryHook>,
}

impl Default for RetryPolicy {
    /// 10 reconnects, pauses of up to 0.5 s doubling to up to 10 s: about
    /// half a minute of a service being down on average, a minute at most.
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

    /// The project's one backoff (the server's retries use it too).
    fn backoff(&self) -> Backoff {
        Backoff::new(self.first_delay, self.max_delay)
    }

    /// The longest pause before reconnect number `attempt` (from 1):
    /// `first_delay` doubled per attempt, at most `max_delay`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.backoff().ceiling(attempt)
    }

    /// The pause before reconnect number `attempt` (from 1): uniformly
    /// random below [`ceiling(attempt)`](Self::ceiling) (full jitter), so
    /// clients that failed together spread out instead of retrying in
    /// lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff().delay_at(attempt, fastrand::f64())
    }

    /// The pause before reconnect number `attempt` after `e`: the
    /// server's retry hint, if it gave one, plus the jittered
    /// [`delay`](Self::delay) (waiting exactly the hint would bring every
    /// client it turned away back at the same instant).
    pub fn pause(&self, e: &ClientError, attempt: u32) -> Duration {
        let jitter = self.delay(attempt);
        retry_hint(e).map_or(jitter, |hint| hint.saturating_add(jitter))
    }
}

/// How long the server asked the client to wait before trying again
/// (a `google.rpc.RetryInfo` detail), if it did.
pub fn retry_hint(e: &ClientError) -> Option<Duration> {
    match e {
        ClientError::Rpc(s) => s.get_details_retry_info().and_then(|r| r.retry_delay),
        _ => None,
    }
}

/// Whether a failed call may succeed if made again, elsewhere or later:
/// only what waiting can change. The connection failed or broke, or the
/// server was going away (UNAVAILABLE, UNKNOWN, ABORTED); or it was busy
/// and said when to come back (RESOURCE_EXHAUSTED with a RetryInfo hint;
/// without one the limit is not one that lifts by itself, e.g. a request
/// too large). Anything else the server decided (invalid, not found,
/// denied, unauthenticated, a failed precondition such as missing
/// credentials) is the answer and would only be repeated.
pub fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::StreamEnded(_) => true,
        ClientError::Rpc(s) => match s.code() {
            Code::Unavailable | Code::Unknown | Code::Aborted => true,
            Code::ResourceExhausted => retry_hint(e).is_some(),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tonic_types::ErrorDetails;

    fn busy(hint: Option<Duration>) -> ClientError {
        let mut details = ErrorDetails::new();
        if hint.is_some() {
            details.set_retry_info(hint);
        }
        tonic::Status::with_error_details(Code::ResourceExhausted, "queue full", details).into()
    }

    #[test]
    fn the_longest_pause_doubles_up_to_the_longest() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (1..=10).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn many_clients_pause_for_different_times_within_the_ceiling() {
        let p = RetryPolicy::default();
        for attempt in [1, 3, 10] {
            let delays: Vec<Duration> = (0..100).map(|_| p.delay(attempt)).collect();
            assert!(
                delays.iter().all(|d| *d <= p.ceiling(attempt)),
                "{delays:?}"
            );
            let distinct: std::collections::HashSet<_> = delays.iter().collect();
            // Lockstep would be one value; full jitter gives ~100.
            assert!(distinct.len() > 50, "attempt {attempt}: {delays:?}");
            let below_half = delays
                .iter()
                .filter(|d| **d < p.ceiling(attempt) / 2)
                .count();
            assert!(
                (10..=90).contains(&below_half),
                "spread over the whole range: {delays:?}"
            );
        }
    }

    #[test]
    fn only_what_waiting_can_change_is_retried() {
        assert!(retryable(&ClientError::StreamEnded("op".into())));
        assert!(retryable(&tonic::Status::unavailable("restarting").into()));
        assert!(retryable(&tonic::Status::aborted("lost the race").into()));
        for final_answer in [
            tonic::Status::invalid_argument("bad"),
            tonic::Status::not_found("gone"),
            tonic::Status::failed_precondition("no AWS credentials"),
            tonic::Status::permission_denied("not yours"),
            tonic::Status::unauthenticated("who are you"),
            tonic::Status::resource_exhausted("request too large"),
        ] {
            let code = final_answer.code();
            assert!(!retryable(&final_answer.into()), "{code:?}");
        }
    }

    #[test]
    fn a_busy_server_is_retried_only_when_it_says_when_and_not_before() {
        assert!(!retryable(&busy(None)));
        let hinted = busy(Some(Duration::from_secs(5)));
        assert!(retryable(&hinted));
        assert_eq!(retry_hint(&hinted), Some(Duration::from_secs(5)));
        let p = RetryPolicy::default();
        for attempt in 1..=3 {
            let pause = p.pause(&hinted, attempt);
            assert!(
                pause >= Duration::from_secs(5)
                    && pause <= Duration::from_secs(5) + p.ceiling(attempt),
                "{pause:?}"
            );
        }
        // Without a hint, the jittered pause alone.
        let broken: ClientError = tonic::Status::unavailable("x").into();
        assert!(p.pause(&broken, 1) <= p.ceiling(1));
    }
}
