"""Fixtures: one moto and one server for the session, fresh buckets per test.

Tests that kill or slow their server start their own (see test_reattach.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from expresscache import (
    CA_CERT_ENV,
    CLIENT_CERT_ENV,
    CLIENT_KEY_ENV,
    ENDPOINT_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    Client,
)
from harness import Buckets, Moto, Server


@pytest.fixture(autouse=True)
def no_client_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clients under test read $EXPRESSCACHE_ENDPOINT, the TLS files and
    the token from the environment: none of the caller's may leak in (a
    test that needs one sets it)."""
    for name in (ENDPOINT_ENV, CA_CERT_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV, TOKEN_ENV, TOKEN_FILE_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    with tempfile.TemporaryDirectory(prefix="expresscache-moto-") as d:
        m = Moto(Path(d))
        yield m
        m.stop()


@pytest.fixture(scope="session")
def server(moto: Moto) -> Iterator[Server]:
    s = Server(moto)
    yield s
    s.stop()


SLOW_SERVER_FLAGS = ("--max-concurrency", "4", "--run-lease-ttl", "5s", "--clock-skew-margin", "1s")


@pytest.fixture
def slow_server(moto: Moto) -> Iterator[Server]:
    """A server of its own that a test may kill: warms of a few hundred
    objects take seconds (moto copies a few hundred objects a second; 4 at
    a time here), so a test can act mid-warm; and a short run lease, so
    after a crash the restarted server takes a warm over within seconds
    (run lease 5 s + clock skew margin 1 s + a 2 s scan) instead of 17."""
    s = Server(moto, *SLOW_SERVER_FLAGS)
    yield s
    s.stop()


@pytest.fixture
def buckets(moto: Moto) -> Callable[..., Buckets]:
    """Makes a source bucket holding the given keys, and a directory bucket."""

    def make(keys: list[str], size: int = 64) -> Buckets:
        return Buckets(moto, keys, size)

    return make


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.endpoint, timeout=30) as c:
        yield c
