"""When and how soon a broken warm or watch is retried.

The same rules as the ``expresscache`` CLI (client/src/retry.rs,
``retryable`` and ``RetryPolicy::pause``), so a Python launcher and a shell
launcher behave alike when a server restarts, a replica dies or a busy
server turns warms away for a while.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from .errors import RpcError, StreamEnded

# UNAVAILABLE: refused or broken connection, or a server draining on
# SIGTERM; UNKNOWN: the transport failed without a status; ABORTED: the
# service gave up and says a retry may work. RESOURCE_EXHAUSTED only with a
# RetryInfo hint (see is_retryable). Everything else (an invalid request, a
# missing bucket, a refused identity or permission, a failed precondition
# such as missing credentials, a deadline the caller set) would fail again.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
)


def retry_hint(error: BaseException) -> float | None:
    """Seconds the server asked the caller to wait before trying again (a
    ``google.rpc.RetryInfo`` detail), if it did."""
    if isinstance(error, RpcError) and error.retry_delay is not None:
        return max(error.retry_delay.total_seconds(), 0.0)
    return None


def is_retryable(error: BaseException) -> bool:
    """Whether resubmitting (or watching again) may succeed where this
    failed: only what waiting can change. A broken connection or a server
    going away; or a busy server (RESOURCE_EXHAUSTED) that said when to come
    back. Without that hint the limit is not one that lifts by itself (a
    request too large, say), and it is the answer."""
    if isinstance(error, StreamEnded):
        return True
    if not isinstance(error, RpcError):
        return False
    if error.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return retry_hint(error) is not None
    return error.code in RETRYABLE_CODES


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
    """Longest pause, in seconds, before trying the next endpoint within one
    round over them: another replica may well be up."""
    initial_backoff: float = 0.5
    """Longest pause, in seconds, after a full round over the endpoints
    failed (all may be restarting); doubled after each further round."""
    max_backoff: float = 10.0
    """Largest ceiling of the pauses after a round. Every pause is drawn
    uniformly between zero and its ceiling (full jitter, as the CLI does),
    so the launchers of a job array that lost the same server do not return
    in lockstep."""

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {self.attempts}")
        if min(self.failover_pause, self.initial_backoff, self.max_backoff) < 0:
            raise ValueError("pauses and backoffs must be >= 0")


class Backoff:
    """The pauses of one warm or watch: one per retryable failure."""

    def __init__(
        self, policy: RetryPolicy, endpoints: int, rng: random.Random | None = None
    ) -> None:
        self._policy = policy
        self._endpoints = max(endpoints, 1)
        self._next_backoff = policy.initial_backoff
        # Each client its own generator: seeded from the OS, so clients
        # started together still draw different pauses.
        self._rng = rng or random.Random()
        self.tries = 0

    def next_delay(self, error: BaseException) -> float | None:
        """Seconds to wait before the next try after ``error``: uniform in
        ``[0, next_ceiling(error)]`` (full jitter), after the server's retry
        hint if it gave one (waiting exactly the hint would bring every
        client it turned away back at the same instant); None to give up.
        A hinted retry counts against the same ``attempts``."""
        ceiling = self.next_ceiling(error)
        if ceiling is None:
            return None
        return (retry_hint(error) or 0.0) + self._rng.uniform(0.0, ceiling)

    def next_ceiling(self, error: BaseException) -> float | None:
        """The longest the next pause after ``error`` may be (counting it as
        a try); None to give up."""
        if not is_retryable(error) or self.tries >= self._policy.attempts:
            return None
        self.tries += 1
        if self.tries % self._endpoints != 0:
            return self._policy.failover_pause
        ceiling = self._next_backoff
        self._next_backoff = min(self._next_backoff * 2, self._policy.max_backoff)
        return ceiling
