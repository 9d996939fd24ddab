"""When and how soon a broken warm or watch is retried.

The same rules as the ``expresscache`` CLI (client/src/cli/mod.rs,
``retryable`` and ``follow``), so a Python launcher and a shell launcher
behave alike when a server restarts or a replica dies.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .errors import RpcError, StreamEnded

# UNAVAILABLE: refused or broken connection, or a server draining on
# SIGTERM; UNKNOWN: the transport failed without a status; ABORTED: the
# service gave up and says a retry may work. Everything else (an invalid
# request, a missing bucket, a deadline the caller set) would fail again.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
)


def is_retryable(error: BaseException) -> bool:
    """Whether resubmitting (or watching again) may succeed where this failed."""
    if isinstance(error, StreamEnded):
        return True
    return isinstance(error, RpcError) and error.code in RETRYABLE_CODES


def breaks_connection(error: BaseException) -> bool:
    """Whether an error means the connection it came on is gone: the next
    call connects anew (to the next endpoint). Unary calls and single
    streams are not retried, but they move on like this."""
    return isinstance(error, RpcError) and error.code is grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class RetryPolicy:
    """How a warm or watch survives broken connections."""

    attempts: int = 10
    """Reconnects after retryable failures before the last error is raised
    (the CLI's ``--reconnect-attempts``)."""
    failover_pause: float = 0.2
    """Seconds before trying the next endpoint within one round over them:
    another replica may well be up."""
    initial_backoff: float = 0.5
    """Seconds to wait after a full round over the endpoints failed (all may
    be restarting); doubled after each further round."""
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {self.attempts}")
        if min(self.failover_pause, self.initial_backoff, self.max_backoff) < 0:
            raise ValueError("pauses and backoffs must be >= 0")


class Backoff:
    """The pauses of one warm or watch: one per retryable failure."""

    def __init__(self, policy: RetryPolicy, endpoints: int) -> None:
        self._policy = policy
        self._endpoints = max(endpoints, 1)
        self._next_backoff = policy.initial_backoff
        self.tries = 0

    def next_delay(self, error: BaseException) -> float | None:
        """Seconds to wait before the next try after ``error``; None to give up."""
        if not is_retryable(error) or self.tries >= self._policy.attempts:
            return None
        self.tries += 1
        if self.tries % self._endpoints != 0:
            return self._policy.failover_pause
        delay = self._next_backoff
        self._next_backoff = min(self._next_backoff * 2, self._policy.max_backoff)
        return delay
