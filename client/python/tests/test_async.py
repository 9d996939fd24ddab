"""The asyncio client: the same calls as the blocking one, awaited."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from expresscache import AsyncClient, InvalidRequest, NotFound, OperationFilter, Outcome, Progress, WarmRequest
from harness import Buckets, Server, numbered_keys

pytestmark = pytest.mark.asyncio


async def test_warm_with_a_coroutine_callback_then_rewarm_hits(
    server: Server, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 20))
    seen: list[Progress] = []

    async def on_progress(p: Progress) -> None:
        seen.append(p)

    request = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["d/"])
    async with AsyncClient(server.endpoint, timeout=timedelta(seconds=30)) as client:
        report = await client.warm_and_wait(request, on_progress=on_progress)
        assert report.outcome is Outcome.SUCCEEDED and report.reconnects == 0
        assert seen[-1] == report.last and not any(p.done for p in seen[:-1])
        assert (report.counters.objects_listed, report.counters.objects_copied) == (20, 20)

        plain: list[Progress] = []
        again = await client.warm_and_wait(request, on_progress=plain.append)
        assert (again.counters.objects_hit, again.counters.objects_copied) == (20, 0)
        assert plain[-1].done

        streamed = [p async for p in client.warm(request)]
        assert streamed[-1].done and streamed[-1].counters.objects_hit == 20


async def test_errors_carry_their_details(server: Server, buckets: Callable[..., Buckets]) -> None:
    src = buckets([])
    async with AsyncClient(server.endpoint) as client:
        with pytest.raises(InvalidRequest) as invalid:
            await client.warm_and_wait(
                WarmRequest(bucket=src.source, directory_bucket="not-a-directory-bucket", prefixes=[""])
            )
        assert [v.field for v in invalid.value.field_violations] == ["directory_bucket"]
        with pytest.raises(NotFound) as missing:
            await client.warm_and_wait(WarmRequest(bucket="no-such-bucket", directory_bucket=src.directory, prefixes=[""]))
        assert missing.value.resource_info is not None
        assert missing.value.resource_info.resource_name == "no-such-bucket"
        with pytest.raises(NotFound):
            await client.status("no-such-operation")


async def test_status_watch_list_evict(server: Server, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("d/", 6), size=10)
    async with AsyncClient([server.endpoint]) as client:
        report = await client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""]))
        status = await client.status(report.operation_id)
        assert status.done and status.request.bucket == src.source

        [final] = [p async for p in client.watch(report.operation_id)]
        assert final.counters == report.counters
        watched = await client.watch_and_wait(report.operation_id)
        assert watched.outcome is Outcome.SUCCEEDED

        page = await client.list_operations(OperationFilter.FINISHED, page_size=1)
        assert [o.operation_id for o in page.operations] == [report.operation_id]

        [prefix] = await client.prefix_status(src.directory, [""])
        assert (prefix.cached_objects, prefix.cached_bytes) == (6, 60)
        evicted = await client.evict(src.directory, [""])
        assert (evicted.objects_deleted, evicted.leases_ended) == (6, 1)


async def test_cancel(slow_server: Server, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("d/", 300))
    async with AsyncClient(slow_server.endpoint) as client:
        stream = client.warm(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""]))
        first = await anext(stream)
        cancelled = await client.cancel(first.operation_id)
        assert cancelled.progress.outcome is Outcome.CANCELLED
        assert [p async for p in stream][-1].outcome is Outcome.CANCELLED
