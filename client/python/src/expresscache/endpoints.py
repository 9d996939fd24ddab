"""Which servers to talk to: one endpoint, or the replicas of a fleet.

A launcher given every replica survives the loss of the one it talks to:
calls go to the first that answers, and after a failure the next connect
starts at the endpoint after the one that failed.

The forms are the CLI's: ``http://HOST:PORT``, ``https://HOST:PORT`` (TLS)
and ``HOST:PORT`` (plain http); any other scheme is refused, so nothing is
ever tried against, say, an ``s3://`` URL given by mistake.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "http://127.0.0.1:50051"
ENDPOINT_ENV = "EXPRESSCACHE_ENDPOINT"

ENDPOINT_FORMS = (
    "give http://HOST:PORT, https://HOST:PORT (TLS) or HOST:PORT (plain http), "
    "several separated by commas"
)
"""The accepted forms, for messages (the CLI's wording)."""


@dataclass(frozen=True)
class Endpoint:
    """One server: where to connect, and whether over TLS."""

    target: str
    """The gRPC target, ``host:port`` (``[v6addr]:port`` for IPv6)."""
    tls: bool
    """``https://``: TLS, checked against the CA given, else the system's roots."""

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.target}"


def parse_endpoints(endpoints: str | Sequence[str] | None) -> tuple[Endpoint, ...]:
    """The endpoints given, checked (nothing is tried for a malformed one).

    ``None`` means ``$EXPRESSCACHE_ENDPOINT``, else ``http://127.0.0.1:50051``
    (as for the CLI). A string may list several endpoints separated by
    commas, like the CLI's ``--endpoint``. Raises ValueError naming the
    accepted forms.
    """
    if endpoints is None:
        endpoints = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    if not items:
        raise ValueError(f"no endpoint given; {ENDPOINT_FORMS}")
    return tuple(parse_endpoint(item) for item in items)


def parse_endpoint(endpoint: str) -> Endpoint:
    """One endpoint: ``HOST:PORT`` is plain http; ``http://`` and ``https://``
    (any case) are kept; other schemes and malformed URLs raise ValueError."""
    text = endpoint.strip()
    if not text:
        raise ValueError(f"the endpoint list has an empty entry; {ENDPOINT_FORMS}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        hint = (
            " (an s3:// URL names data to warm, not the expresscache server)"
            if scheme == "s3"
            else ""
        )
        raise ValueError(f"{endpoint!r}: unsupported scheme {scheme!r}{hint}; {ENDPOINT_FORMS}")
    rest = rest.rstrip("/")
    if not rest or "/" in rest or any(c.isspace() for c in rest):
        raise ValueError(f"{endpoint!r} is not an endpoint; {ENDPOINT_FORMS}")
    try:
        url = urlsplit(f"{scheme}://{rest}")
        port = url.port
    except ValueError as e:
        raise ValueError(f"{endpoint!r} is not a valid endpoint ({e}); {ENDPOINT_FORMS}") from None
    host = url.hostname
    if not host:
        raise ValueError(f"{endpoint!r} names no host; {ENDPOINT_FORMS}")
    if url.username is not None or url.query or url.fragment:
        raise ValueError(f"{endpoint!r} is not an endpoint; {ENDPOINT_FORMS}")
    # grpc resolves a target without a port to 443 whatever the scheme:
    # give the URL's default port explicitly, as an HTTP client would.
    if port is None:
        port = 443 if scheme == "https" else 80
    # The host as written (urlsplit lowercases it and strips IPv6 brackets).
    netloc = url.netloc
    if netloc.endswith(":"):
        raise ValueError(f"{endpoint!r} has an empty port; {ENDPOINT_FORMS}")
    host_part = netloc if url.port is None else netloc[: netloc.rindex(":")]
    return Endpoint(target=f"{host_part}:{port}", tls=scheme == "https")


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
