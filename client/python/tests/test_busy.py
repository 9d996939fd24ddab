"""A busy server turns a warm away with RESOURCE_EXHAUSTED and a RetryInfo
hint (5 s); warm_and_wait waits that out and tries again, within its
reconnect budget, until the server has room."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import SLOW_SERVER_FLAGS
from expresscache import Client, Outcome, Progress, ResourceExhausted, RetryPolicy, WarmReport, WarmRequest
from harness import Buckets, Moto, Server, numbered_keys


@pytest.fixture
def one_warm_server(moto: Moto) -> Iterator[Server]:
    """One warm at a time and none queued: a second one is refused."""
    s = Server(moto, *SLOW_SERVER_FLAGS, "--max-running-warms", "1", "--max-queued-warms", "0")
    yield s
    s.stop()


def test_a_busy_server_is_waited_out_by_its_retry_hint(
    one_warm_server: Server, buckets: Callable[..., Buckets], caplog: pytest.LogCaptureFixture
) -> None:
    big = buckets(numbered_keys("data/", 400))
    small = buckets(numbered_keys("d/", 3))
    copying = threading.Event()
    first: list[WarmReport] = []

    def on_progress(p: Progress) -> None:
        if p.counters.objects_copied > 0:
            copying.set()

    def warm_big() -> None:
        with Client(one_warm_server.endpoint) as c:
            first.append(c.warm_and_wait(
                WarmRequest(bucket=big.source, directory_bucket=big.directory, prefixes=["data/"]),
                on_progress=on_progress,
            ))

    runner = threading.Thread(target=warm_big)
    runner.start()
    try:
        assert copying.wait(60), one_warm_server.log()
        request = WarmRequest(bucket=small.source, directory_bucket=small.directory, prefixes=["d/"])

        # Without retries the refusal is the answer, with its hint.
        with Client(one_warm_server.endpoint, retry=RetryPolicy(attempts=0)) as c:
            with pytest.raises(ResourceExhausted) as caught:
                c.warm_and_wait(request)
        hint = caught.value.retry_delay
        assert hint is not None and hint.total_seconds() >= 1, caught.value

        with caplog.at_level(logging.WARNING, logger="expresscache"):
            with Client(one_warm_server.endpoint) as c:
                t0 = time.monotonic()
                report = c.warm_and_wait(request)
                waited = time.monotonic() - t0
    finally:
        runner.join(120)

    assert first and first[0].outcome is Outcome.SUCCEEDED, first
    assert report.outcome is Outcome.SUCCEEDED and report.counters.objects_copied == 3, report
    assert report.reconnects >= 1
    # Never sooner than the server asked.
    assert waited >= hint.total_seconds() * report.reconnects, (waited, report.reconnects)
    assert "RESOURCE_EXHAUSTED" in caplog.text and "reconnecting" in caplog.text
