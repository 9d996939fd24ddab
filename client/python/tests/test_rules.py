"""The client's rules that need no server: retries and backoff as the CLI
has them, endpoint lists, error details decoded from the trailer."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from expresscache import (
    InternalError,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    RpcError,
    StreamEnded,
    Unavailable,
    WarmRequest,
    is_retryable,
)
from expresscache.endpoints import DEFAULT_ENDPOINT, ENDPOINT_ENV, Rotation, parse_endpoints
from expresscache.errors import STATUS_DETAILS_KEY, error_for
from expresscache.retry import Backoff


def status(code: grpc.StatusCode) -> RpcError:
    return error_for(code, "x")


def test_retryable_errors_are_the_clis() -> None:
    retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
    for code in grpc.StatusCode:
        assert is_retryable(status(code)) == (code in retryable), code
    assert is_retryable(StreamEnded("op"))
    assert not is_retryable(ValueError("a bug in a progress callback"))


def test_backoff_waits_briefly_between_endpoints_and_doubles_after_each_round() -> None:
    unavailable = status(grpc.StatusCode.UNAVAILABLE)
    one = Backoff(RetryPolicy(), endpoints=1)
    assert [one.next_delay(unavailable) for _ in range(11)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0, None
    ]
    two = Backoff(RetryPolicy(attempts=6), endpoints=2)
    assert [two.next_delay(unavailable) for _ in range(7)] == [0.2, 0.5, 0.2, 1.0, 0.2, 2.0, None]
    assert Backoff(RetryPolicy(), 1).next_delay(status(grpc.StatusCode.INVALID_ARGUMENT)) is None
    with pytest.raises(ValueError):
        RetryPolicy(attempts=-1)


def test_endpoint_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    assert parse_endpoints(None) == (DEFAULT_ENDPOINT.removeprefix("http://"),)
    monkeypatch.setenv(ENDPOINT_ENV, "http://a:1, http://b:2")
    assert parse_endpoints(None) == ("a:1", "b:2")
    assert parse_endpoints(["http://c:3/", "d:4"]) == ("c:3", "d:4")
    for bad in ["", "http://a:1,,http://b:1", "https://secure:443", "http://host:1/path", []]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_a_failure_moves_the_next_connect_to_the_next_endpoint() -> None:
    rotation = Rotation(3)
    assert rotation.order() == [0, 1, 2]
    rotation.connected(1)
    assert rotation.order() == [1, 2, 0]
    rotation.failed()
    assert rotation.order() == [2, 0, 1]


def packed(message: error_details_pb2.BadRequest | error_details_pb2.ResourceInfo) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(message)
    return a


def test_details_are_decoded_from_the_trailer() -> None:
    bad = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="ttl", description="must be > 0"),
    ])
    info = error_details_pb2.ResourceInfo(resource_type="s3_bucket", resource_name="b")
    trailer = status_pb2.Status(code=3, message="m", details=[packed(bad), packed(info)])
    metadata: list[tuple[str, str | bytes]] = [
        ("other", "x"),
        (STATUS_DETAILS_KEY, trailer.SerializeToString()),
    ]

    e = error_for(grpc.StatusCode.INVALID_ARGUMENT, "invalid request", metadata)
    assert isinstance(e, InvalidRequest)
    assert [(v.field, v.description) for v in e.field_violations] == [("ttl", "must be > 0")]
    assert e.resource_info is not None and e.resource_info.resource_name == "b"
    assert "ttl: must be > 0" in str(e)

    assert isinstance(error_for(grpc.StatusCode.NOT_FOUND, "gone"), NotFound)
    assert isinstance(error_for(grpc.StatusCode.DATA_LOSS, "lost"), InternalError)
    assert isinstance(error_for(grpc.StatusCode.UNAVAILABLE, "down"), Unavailable)
    garbled = error_for(grpc.StatusCode.INTERNAL, "boom", [(STATUS_DETAILS_KEY, b"\xff\xff")])
    assert garbled.status is None and garbled.field_violations == ()


def test_a_warm_request_round_trips_and_a_lone_prefix_is_one() -> None:
    request = WarmRequest(
        bucket="b", directory_bucket="d--use1-az4--x-s3", prefixes="p/",
        ttl=timedelta(minutes=90, milliseconds=5), force_copy=True, destination_prefix="t/",
        request_id="id-1",
    )
    assert request.prefixes == ("p/",)
    assert WarmRequest.from_proto(request.to_proto()) == request
    generated = WarmRequest(bucket="b", directory_bucket="d").with_request_id()
    assert generated.request_id is not None and generated.request_id.startswith("py-")
    assert WarmRequest(bucket="b", directory_bucket="d").to_proto().prefixes == [""]
