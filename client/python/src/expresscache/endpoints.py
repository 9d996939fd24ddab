"""Which servers to talk to: one endpoint, or the replicas of a fleet.

A launcher given every replica survives the loss of the one it talks to:
calls go to the first that answers, and after a failure the next connect
starts at the endpoint after the one that failed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

DEFAULT_ENDPOINT = "http://127.0.0.1:50051"
ENDPOINT_ENV = "EXPRESSCACHE_ENDPOINT"


def parse_endpoints(endpoints: str | Sequence[str] | None) -> tuple[str, ...]:
    """gRPC targets (``host:port``) for the endpoints given.

    ``None`` means ``$EXPRESSCACHE_ENDPOINT``, else ``http://127.0.0.1:50051``
    (as for the CLI). A string may list several endpoints separated by
    commas, like the CLI's ``--endpoint``.
    """
    if endpoints is None:
        endpoints = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    if not items:
        raise ValueError("no endpoint given")
    return tuple(_target(item) for item in items)


def _target(endpoint: str) -> str:
    text = endpoint.strip()
    if not text:
        raise ValueError("the endpoint list has an empty entry; give URLs separated by commas")
    if text.startswith("https://"):
        # The server speaks plain HTTP/2 (as does the Rust client); TLS is
        # not offered yet.
        raise ValueError(f"{endpoint!r}: TLS endpoints are not supported yet; use http://")
    if text.startswith("http://"):
        text = text[len("http://") :]
    text = text.rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"{endpoint!r} is not an endpoint like http://host:port")
    return text


class Rotation:
    """Where the next connect starts, shared by every call of one client."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._next = 0
        self._current = 0
        self._lock = threading.Lock()

    def order(self) -> list[int]:
        """Endpoint indexes to try, starting where the last failure left off."""
        with self._lock:
            start = self._next
        return [(start + i) % self._count for i in range(self._count)]

    def connected(self, index: int) -> None:
        with self._lock:
            self._current = index
            self._next = index

    def failed(self) -> None:
        """The endpoint connected to last failed: start after it next time."""
        with self._lock:
            self._next = (self._current + 1) % self._count
