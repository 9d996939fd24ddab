"""gRPC errors as exceptions, with the google.rpc details decoded."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest

from expresscache import (
    AlreadyExists,
    Client,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    RpcError,
    Unavailable,
    WarmRequest,
)
from harness import Buckets, Server, free_port, numbered_keys


def test_an_invalid_request_raises_invalid_request_with_every_field_violation(client: Client) -> None:
    request = WarmRequest(
        bucket="Not_A_Bucket",
        directory_bucket="plain-bucket",
        prefixes=["ok/", "no-slash"],
        ttl=timedelta(0),
    )
    with pytest.raises(InvalidRequest) as caught:
        client.warm_and_wait(request)
    e = caught.value
    assert isinstance(e, RpcError) and e.code is grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field: v.description for v in e.field_violations}
    assert set(fields) == {"bucket", "directory_bucket", "prefixes[1]", "ttl"}
    assert "lowercase" in fields["bucket"]
    assert "--x-s3" in fields["directory_bucket"]
    assert "end in '/'" in fields["prefixes[1]"]
    assert "greater than zero" in fields["ttl"]
    assert e.status is not None and e.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for field in fields:
        assert field in str(e)


def test_a_missing_bucket_raises_not_found_naming_it(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets([])
    with pytest.raises(NotFound) as caught:
        client.warm_and_wait(WarmRequest(bucket="no-such-source", directory_bucket=src.directory, prefixes=[""]))
    info = caught.value.resource_info
    assert info is not None
    assert info.resource_name == "no-such-source"
    assert info.resource_type != ""


def test_an_unknown_operation_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        client.status("no-such-operation")
    with pytest.raises(NotFound):
        list(client.watch("no-such-operation"))
    with pytest.raises(NotFound):
        client.watch_and_wait("no-such-operation")


def test_a_request_id_reused_for_another_request_raises_already_exists(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("a/", 2) + numbered_keys("b/", 2))
    client.warm_and_wait(WarmRequest(
        bucket=src.source, directory_bucket=src.directory, prefixes=["a/"], request_id="reused-id"
    ))
    with pytest.raises(AlreadyExists):
        client.warm_and_wait(WarmRequest(
            bucket=src.source, directory_bucket=src.directory, prefixes=["b/"], request_id="reused-id"
        ))


def test_nothing_listening_raises_unavailable_after_the_retries(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.01)
    with Client(dead, connect_timeout=2, retry=policy) as client:
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            client.status("anything")
        with caplog.at_level(logging.WARNING, logger="expresscache"):
            with pytest.raises(Unavailable):
                client.warm_and_wait(WarmRequest(bucket="b", directory_bucket="d--use1-az4--x-s3", prefixes=[""]))
        # A refused connection fails at once, not after the connect timeout.
        assert time.monotonic() - t0 < 3
    assert "reconnecting (attempt 2/2)" in caplog.text


def test_a_dead_endpoint_fails_over_to_the_next(
    server: Server, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(numbered_keys("d/", 3))
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(f"{dead},{server.endpoint}") as client:
        report = client.warm_and_wait(WarmRequest(bucket=src.source, directory_bucket=src.directory, prefixes=[""]))
        assert report.succeeded and report.reconnects == 0
        assert client.status(report.operation_id).done
