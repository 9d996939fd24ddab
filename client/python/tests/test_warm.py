"""Warming through the blocking client: progress, hits, idempotency."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from expresscache import Client, FailedPrecondition, Outcome, Phase, Progress, WarmRequest
from expresscache.v1 import cache_pb2
from harness import Buckets, numbered_keys


def test_warm_reports_progress_then_succeeds(client: Client, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("data/", 40) + numbered_keys("other/", 5), size=100)
    seen: list[Progress] = []
    request = WarmRequest(
        bucket=src.source, directory_bucket=src.directory, prefixes=["data/"], ttl=timedelta(hours=2)
    )
    report = client.warm_and_wait(request, on_progress=seen.append)

    assert report.outcome is Outcome.SUCCEEDED and report.succeeded
    assert report.reconnects == 0
    # The stream opens with the operation id, moves forward through the
    # phases, and ends with the one final message the report is made of.
    assert seen[0].operation_id == report.operation_id
    assert all(p.operation_id == report.operation_id for p in seen)
    phases = [p.phase for p in seen]
    assert phases == sorted(phases)
    assert [p.done for p in seen] == [False] * (len(seen) - 1) + [True]
    assert seen[-1] == report.last and seen[-1].outcome is Outcome.SUCCEEDED
    assert all(p.outcome is None for p in seen[:-1])

    c = report.counters
    assert (c.objects_listed, c.objects_hit, c.objects_to_copy, c.objects_copied) == (40, 0, 40, 40)
    assert (c.objects_failed, c.bytes_listed, c.bytes_copied) == (0, 4000, 4000)
    assert report.failures == () and report.error is None
    last = report.last
    assert last.started_at is not None and last.started_at <= datetime.now(timezone.utc)
    # The lease holds for the requested TTL, counted from the call.
    assert last.lease_expires_at is not None
    remaining = last.lease_expires_at - datetime.now(timezone.utc)
    # The service rounds expiries up to the second.
    assert timedelta(hours=1, minutes=59) < remaining <= timedelta(hours=2, seconds=1)
    assert isinstance(last.raw, cache_pb2.WarmProgress)
    assert src.cached_keys() == numbered_keys("data/", 40)


def test_a_rewarm_reports_hits_and_copies_nothing(client: Client, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("data/", 30))
    request = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes="data/")
    assert request.prefixes == ("data/",), "a lone string is one prefix"
    first = client.warm_and_wait(request)
    assert first.counters.objects_copied == 30

    again = client.warm_and_wait(request)
    assert again.outcome is Outcome.SUCCEEDED
    assert again.operation_id != first.operation_id, "no request_id given: a new warm each time"
    c = again.counters
    assert (c.objects_listed, c.objects_hit, c.objects_copied, c.bytes_copied) == (30, 30, 0, 0)

    forced = client.warm_and_wait(WarmRequest(
        bucket=src.source, directory_bucket=src.directory, prefixes=["data/"], force_copy=True
    ))
    assert (forced.counters.objects_hit, forced.counters.objects_copied) == (0, 30)


def test_a_generated_request_id_is_sent_and_a_given_one_attaches(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 5))
    report = client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""]))
    generated = client.status(report.operation_id).request.request_id
    assert generated is not None and generated.startswith("py-")

    request = WarmRequest(bucket=src.source, directory_bucket=src.directory, request_id="job-42", prefixes=[""])
    first = client.warm_and_wait(request)
    # Same id, same request, leases still live: the same operation.
    assert client.warm_and_wait(request).operation_id == first.operation_id


def test_destination_prefix_and_a_generated_request_are_accepted(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 3))
    wire = cache_pb2.WarmCacheRequest(
        bucket=src.source, prefixes=["d/"], directory_bucket=src.directory, destination_prefix="team-a/"
    )
    wire.ttl.FromTimedelta(timedelta(minutes=10))
    report = client.warm_and_wait(wire)
    assert report.succeeded
    assert src.cached_keys() == [f"team-a/{k}" for k in numbered_keys("d/", 3)]
    status = client.status(report.operation_id)
    assert status.request.destination_prefix == "team-a/"
    assert status.request.ttl == timedelta(minutes=10)


def test_warm_streams_progress_without_waiting(client: Client, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("d/", 10))
    messages = list(client.warm(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""])))
    assert messages[0].phase in (Phase.QUEUED, Phase.PLANNING)
    assert messages[-1].done and messages[-1].outcome is Outcome.SUCCEEDED
    assert messages[-1].counters.objects_copied == 10


def test_a_warm_of_an_empty_prefix_fails_unless_allowed(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("data/", 3))
    empty = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["dataz/"])
    failed = client.warm_and_wait(empty)
    assert failed.outcome is Outcome.FAILED, failed
    assert failed.error is not None and "no object under any requested prefix" in failed.error
    assert failed.empty_prefixes == ("dataz/",)

    allowed = client.warm_and_wait(
        WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["dataz/"], allow_empty=True)
    )
    assert allowed.outcome is Outcome.SUCCEEDED, allowed
    assert allowed.empty_prefixes == ("dataz/",)
    assert allowed.counters.objects_listed == 0

    # One empty prefix among others is reported, not failed.
    mixed = client.warm_and_wait(
        WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["data/", "dataz/"])
    )
    assert mixed.outcome is Outcome.SUCCEEDED and mixed.counters.objects_copied == 3
    assert mixed.empty_prefixes == ("dataz/",)
    assert client.status(mixed.operation_id).request.allow_empty is False
    assert client.status(allowed.operation_id).request.allow_empty is True


def test_batch_operations_without_a_configured_server_fail_at_once(
    client: Client, buckets: Callable[..., Buckets], caplog: pytest.LogCaptureFixture
) -> None:
    src = buckets(numbered_keys("d/", 2))
    request = WarmRequest(
        bucket=src.source, directory_bucket=src.directory, prefixes=["d/"], batch_operations=True
    )
    assert request.to_proto().batch_operations
    with caplog.at_level(logging.WARNING, logger="expresscache"):
        with pytest.raises(FailedPrecondition) as caught:
            client.warm_and_wait(request)
    assert [v.field for v in caught.value.field_violations] == ["batch_operations"]
    assert "reconnecting" not in caplog.text, "FAILED_PRECONDITION is the answer, not retried"
    assert src.cached_keys() == []
