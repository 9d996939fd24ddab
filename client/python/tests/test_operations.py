"""status, prefix_status, evict, watch, cancel and list_operations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from expresscache import Client, OperationFilter, Outcome, Phase, WarmRequest
from harness import Buckets, Server, numbered_keys


def test_status_of_an_operation_echoes_its_request_and_final_progress(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 4))
    request = WarmRequest(
        bucket=src.source, directory_bucket=src.directory, prefixes=["d/"], ttl=timedelta(minutes=30),
        request_id="status-test",
    )
    report = client.warm_and_wait(request)
    status = client.status(report.operation_id)
    assert status.operation_id == report.operation_id
    assert status.done and status.progress.outcome is Outcome.SUCCEEDED
    assert status.progress.counters == report.counters
    assert status.request == request
    assert status.resumptions == 0
    assert status.created_at is not None and status.created_at <= datetime.now(timezone.utc)


def test_prefix_status_then_evict(client: Client, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("d/", 10), size=10)
    client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["d/"]))

    [d, empty] = client.prefix_status(src.directory, ["d/", "nothing/"])
    assert (d.prefix, d.cached_objects, d.cached_bytes) == ("d/", 10, 100)
    [lease] = d.leases
    assert (lease.prefix, lease.source_bucket, lease.directory_bucket) == ("d/", src.source, src.directory)
    assert lease.expires_at is not None and lease.expires_at > datetime.now(timezone.utc)
    assert d.sweep_failures == ()
    assert (empty.cached_objects, empty.leases) == (0, ())

    evicted = client.evict(src.directory, ["d/"])
    assert (evicted.objects_deleted, evicted.bytes_deleted, evicted.leases_ended) == (10, 100, 1)
    assert (evicted.objects_kept, evicted.forced, evicted.failures) == (0, False, ())
    [after] = client.prefix_status(src.directory, "d/")
    assert (after.cached_objects, after.leases) == (0, ())
    assert src.cached_keys() == []


def test_evict_keeps_what_a_parent_lease_covers_unless_forced(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 5))
    client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""]))
    client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=["d/"]))

    kept = client.evict(src.directory, ["d/"])
    assert (kept.objects_deleted, kept.objects_kept, kept.kept_under, kept.leases_ended) == (0, 5, ("",), 1)
    forced = client.evict(src.directory, ["d/"], force=True)
    assert (forced.objects_deleted, forced.forced) == (5, True)
    assert src.cached_keys() == []


def test_watch_of_a_finished_operation_is_its_final_message(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 3))
    report = client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""]))
    [only] = list(client.watch(report.operation_id))
    assert only.done and only.counters == report.counters
    assert client.watch_and_wait(report.operation_id).last.counters == report.counters


def test_cancel_stops_a_running_warm_that_watchers_see_end(
    slow_server: Server, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 400))
    with Client(slow_server.endpoint, timeout=60) as client:
        stream = client.warm(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""]))
        operation_id = next(stream).operation_id
        watcher = client.watch(operation_id)
        current = next(watcher)
        assert current.operation_id == operation_id and not current.done

        running = client.list_operations(OperationFilter.RUNNING)
        assert operation_id in [o.operation_id for o in running.operations]

        cancelled = client.cancel(operation_id)
        assert cancelled.done and cancelled.progress.outcome is Outcome.CANCELLED
        assert cancelled.progress.counters.objects_copied < 400
        # Both streams end with the same final message.
        assert [p for p in stream if p.done][0].outcome is Outcome.CANCELLED
        assert [p for p in watcher if p.done][0].outcome is Outcome.CANCELLED
        report = client.watch_and_wait(operation_id)
        assert report.outcome is Outcome.CANCELLED and not report.succeeded
        # Cancelling a finished operation changes nothing.
        assert client.cancel(operation_id).progress.counters == report.counters

        assert operation_id not in [
            o.operation_id for o in client.list_operations(OperationFilter.RUNNING).operations
        ]
        assert operation_id in [
            o.operation_id for o in client.list_operations(OperationFilter.FINISHED).operations
        ]


def test_list_operations_pages_newest_first(client: Client, buckets: Callable[..., Buckets]) -> None:
    src = buckets(numbered_keys("d/", 1))
    request = WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""])
    older = client.warm_and_wait(request).operation_id
    newer = client.warm_and_wait(request).operation_id

    first = client.list_operations(page_size=1)
    assert [o.operation_id for o in first.operations] == [newer]
    assert first.next_page_token != ""
    second = client.list_operations(page_size=1, page_token=first.next_page_token)
    assert [o.operation_id for o in second.operations] == [older]
    assert second.operations[0].progress.phase is Phase.DONE
    finished = client.list_operations(OperationFilter.FINISHED, page_size=1000)
    assert {older, newer} <= {o.operation_id for o in finished.operations}
