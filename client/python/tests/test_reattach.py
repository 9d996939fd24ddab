"""A warm outlives its server: killed with SIGKILL mid-warm and started
again on the same port and index (or replaced by another replica on the
same index), the server resumes the warm, and the client that started it
reconnects and reattaches to the same operation."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import pytest

from expresscache import AsyncClient, Client, OperationFilter, Outcome, Progress, WarmReport, WarmRequest
from conftest import SLOW_SERVER_FLAGS
from harness import Buckets, Moto, Server, numbered_keys

OBJECTS = 600
KILL_AFTER = 100


class KillSwitch:
    """Collects progress; SIGKILLs and restarts the server once enough was copied."""

    def __init__(self) -> None:
        self.seen: list[Progress] = []
        self.reached = threading.Event()

    def on_progress(self, p: Progress) -> None:
        self.seen.append(p)
        if p.counters.objects_copied >= KILL_AFTER:
            self.reached.set()

    def strike(self, server: Server, restart: bool = True) -> None:
        assert self.reached.wait(60), f"never copied {KILL_AFTER}: {self.seen[-1:]}\n{server.log()}"
        server.kill9()
        if restart:
            server.start()


def check_resumed(report: WarmReport, switch: KillSwitch, src: Buckets, client: Client) -> None:
    assert report.outcome is Outcome.SUCCEEDED, report
    assert report.reconnects >= 1, "the client saw the crash and reconnected"
    # The same operation throughout: reattached, not a second warm.
    first = switch.seen[0].operation_id
    assert {p.operation_id for p in switch.seen} == {first}
    assert report.operation_id == first
    # The resumed run counts its own work: what was recorded before the
    # kill is a hit, the rest was copied.
    c = report.counters
    assert c.objects_listed == OBJECTS
    assert c.objects_hit >= KILL_AFTER
    assert c.objects_hit + c.objects_copied == OBJECTS
    assert src.cached_keys("data/") == src.keys
    # Resumed after the crash (more than once only if a starved server let
    # its own run lease lapse, which the server then also resumes).
    assert client.status(first).resumptions >= 1
    page = client.list_operations(OperationFilter.ALL)
    assert [o.operation_id for o in page.operations] == [first]


def test_warm_and_wait_reattaches_after_the_server_is_killed_and_restarted(
    slow_server: Server, buckets: Callable[..., Buckets], caplog: pytest.LogCaptureFixture
) -> None:
    src = buckets(numbered_keys("data/", OBJECTS))
    switch = KillSwitch()
    result: list[WarmReport | BaseException] = []
    request = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["data/"])

    with Client(slow_server.endpoint) as client:

        def run() -> None:
            try:
                result.append(client.warm_and_wait(request, on_progress=switch.on_progress))
            except BaseException as e:  # handed to the test thread
                result.append(e)

        caplog.set_level(logging.WARNING, logger="expresscache")
        worker = threading.Thread(target=run)
        worker.start()
        switch.strike(slow_server)
        worker.join(90)
        assert not worker.is_alive(), f"warm_and_wait still running\n{slow_server.log()}"
        report = result[0]
        if isinstance(report, BaseException):
            raise AssertionError(f"warm failed\n{slow_server.log()}") from report
        assert "reconnecting" in caplog.text
        check_resumed(report, switch, src, client)
        # The broken connection was closed once its stream was done with:
        # a long-lived client does not pile them up.
        assert len(client._connections.live) == 1


def test_warm_and_wait_fails_over_to_another_replica_when_its_server_dies(
    moto: Moto, buckets: Callable[..., Buckets], caplog: pytest.LogCaptureFixture
) -> None:
    first = Server(moto, *SLOW_SERVER_FLAGS)
    second = Server(moto, *SLOW_SERVER_FLAGS, index=first.index)
    try:
        src = buckets(numbered_keys("data/", OBJECTS))
        switch = KillSwitch()
        request = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["data/"])
        caplog.set_level(logging.WARNING, logger="expresscache")
        with Client([first.endpoint, second.endpoint]) as client:
            # Killed for good: the warm is taken over by the second replica,
            # which the client reattaches to.
            killer = threading.Thread(target=switch.strike, args=(first, False))
            killer.start()
            report = client.warm_and_wait(request, on_progress=switch.on_progress)
            killer.join()
            assert "reconnecting" in caplog.text
            check_resumed(report, switch, src, client)
    finally:
        first.stop()
        second.stop()


def test_async_warm_and_wait_reattaches_after_the_server_is_killed_and_restarted(
    slow_server: Server, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("data/", OBJECTS))
    switch = KillSwitch()
    request = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["data/"])

    async def main() -> WarmReport:
        async with AsyncClient(slow_server.endpoint) as client:
            warm = asyncio.create_task(client.warm_and_wait(request, on_progress=switch.on_progress))
            # The kill blocks (it waits for the restart to listen): off the loop.
            await asyncio.to_thread(switch.strike, slow_server)
            return await asyncio.wait_for(warm, 90)

    report = asyncio.run(main())
    with Client(slow_server.endpoint) as client:
        check_resumed(report, switch, src, client)
