"""Dry runs: the plan of a warm, with nothing copied, leased or recorded."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from expresscache import AsyncClient, Client, OperationFilter, Progress, WarmPlan, WarmRequest
from harness import Buckets, Server, numbered_keys


def test_a_dry_run_returns_the_plan_and_copies_nothing(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("a/", 5) + numbered_keys("b/", 7), size=100)
    client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["a/"]))
    cached = src.cached_keys()
    before = client.list_operations(OperationFilter.ALL, page_size=1000).operations

    seen: list[Progress] = []
    plan = client.plan(
        WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["a/", "b/"]),
        on_progress=seen.append,
    )
    assert isinstance(plan, WarmPlan)
    by_prefix = {p.prefix: p for p in plan.prefixes}
    assert set(by_prefix) == {"a/", "b/"}
    assert (by_prefix["a/"].objects_cached, by_prefix["a/"].objects_to_copy) == (5, 0)
    assert (by_prefix["b/"].objects_cached, by_prefix["b/"].objects_to_copy) == (0, 7)
    assert by_prefix["b/"].bytes_to_copy == 700
    assert (plan.objects_to_copy, plan.bytes_to_copy, plan.objects_cached) == (7, 700, 5)
    assert plan.list_requests >= 1
    assert plan.engine is not None and plan.engine.usd >= 0 and plan.engine.lines
    assert plan.raw.prefixes[0].prefix in by_prefix
    # The listing's progress, ending with the message that carries the plan.
    assert seen and seen[-1].done and seen[-1].plan == plan
    assert all(p.operation_id == "" for p in seen)

    # Nothing copied, no operation recorded.
    assert src.cached_keys() == cached
    after = client.list_operations(OperationFilter.ALL, page_size=1000).operations
    assert [o.operation_id for o in after] == [o.operation_id for o in before]


def test_a_dry_run_of_an_empty_prefix_plans_nothing_for_it(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("a/", 2))
    plan = client.plan(
        WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["a/", "nothing/"])
    )
    by_prefix = {p.prefix: p for p in plan.prefixes}
    assert (by_prefix["a/"].objects_to_copy, plan.objects_to_copy) == (2, 2)
    nothing = by_prefix["nothing/"]
    assert (nothing.objects_to_copy, nothing.objects_cached, nothing.objects_refused) == (0, 0, 0)
    # A plan is not judged empty (only a warm fails on it); it says so.
    only_empty = client.plan(
        WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["nothing/"])
    )
    assert only_empty.objects_to_copy == 0 and only_empty.objects_cached == 0


@pytest.mark.asyncio
async def test_the_async_client_plans_too(server: Server, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("d/", 4))
    async with AsyncClient(server.endpoint, timeout=30) as client:
        plan = await client.plan(
            WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""])
        )
    assert plan.objects_to_copy == 4
    assert src.cached_keys() == []
