"""The client's rules that need no server: retries and backoff as the CLI
has them (RESOURCE_EXHAUSTED with a retry hint included), endpoint lists
and their schemes, TLS options and tokens, requests checked before they are
sent, error details decoded from the trailer."""

from __future__ import annotations

import random
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from expresscache import (
    ENDPOINT_FORMS,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    AsyncClient,
    Client,
    InternalError,
    InvalidRequest,
    NotFound,
    PlanFailed,
    Progress,
    ResourceExhausted,
    RetryPolicy,
    RpcError,
    StreamEnded,
    Unavailable,
    WarmReport,
    WarmRequest,
    is_retryable,
    retry_hint,
)
from expresscache.client import plan_of
from expresscache.credentials import Credentials
from expresscache.endpoints import ENDPOINT_ENV, Endpoint, Rotation, parse_endpoints
from expresscache.errors import STATUS_DETAILS_KEY, error_for
from expresscache.retry import Backoff
from expresscache.v1 import cache_pb2 as pb
from expresscache.warm_request import as_dry_run


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
    assert [one.next_ceiling(unavailable) for _ in range(11)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0, None
    ]
    two = Backoff(RetryPolicy(attempts=6), endpoints=2)
    assert [two.next_ceiling(unavailable) for _ in range(7)] == [0.2, 0.5, 0.2, 1.0, 0.2, 2.0, None]
    assert Backoff(RetryPolicy(), 1).next_delay(status(grpc.StatusCode.INVALID_ARGUMENT)) is None
    with pytest.raises(ValueError):
        RetryPolicy(attempts=-1)


def test_many_clients_pause_for_different_times_within_the_ceiling() -> None:
    unavailable = status(grpc.StatusCode.UNAVAILABLE)
    # A job array's launchers, all failing at once on their third round.
    delays: list[float] = []
    for _ in range(100):
        backoff = Backoff(RetryPolicy(), endpoints=1)
        for _ in range(2):
            backoff.next_delay(unavailable)
        delay = backoff.next_delay(unavailable)
        assert delay is not None
        delays.append(delay)
    assert all(0.0 <= d <= 2.0 for d in delays), delays
    assert len(set(delays)) > 50, "lockstep would be one value"
    assert 10 <= sum(d < 1.0 for d in delays) <= 90, "spread over the whole range"
    # Its own generator, for a reproducible schedule.
    seeded = [Backoff(RetryPolicy(), 1, rng=random.Random(7)).next_delay(unavailable) for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_endpoint_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    assert parse_endpoints(None) == (Endpoint("127.0.0.1:50051", tls=False),)
    monkeypatch.setenv(ENDPOINT_ENV, "http://a:1, https://b:2")
    assert parse_endpoints(None) == (Endpoint("a:1", tls=False), Endpoint("b:2", tls=True))
    assert parse_endpoints(["http://c:3/", "d:4"]) == (Endpoint("c:3", False), Endpoint("d:4", False))
    for bad in ["", "http://a:1,,http://b:1", "http://host:1/path", "http://", "http://a b:1", []]:
        with pytest.raises(ValueError, match="give http://HOST:PORT"):
            parse_endpoints(bad)


def test_host_and_port_without_a_scheme_mean_plain_http() -> None:
    # As the CLI: the scheme in any case; no port is the scheme's own.
    parsed = parse_endpoints("127.0.0.1:50051, HTTPS://cache.internal:443,http://b:1,https://h,[::1]:7")
    assert [str(e) for e in parsed] == [
        "http://127.0.0.1:50051", "https://cache.internal:443", "http://b:1", "https://h:443",
        "http://[::1]:7",
    ]
    assert [e.tls for e in parsed] == [False, True, False, True, False]
    assert parsed[0].target == "127.0.0.1:50051"


def test_other_schemes_are_refused_naming_the_accepted_forms() -> None:
    for bad in ["ftp://h:21", "s3://demo-src/datasets/", "unix:///tmp/s.sock", "grpc://h:1"]:
        with pytest.raises(ValueError) as caught:
            parse_endpoints(bad)
        assert "unsupported scheme" in str(caught.value), bad
        assert ENDPOINT_FORMS in str(caught.value), bad
    with pytest.raises(ValueError, match="names data to warm"):
        Client("s3://b/")


def test_tls_options_need_an_https_endpoint(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="need an https:// endpoint"):
        Client("http://127.0.0.1:1", ca_cert=str(ca))
    with pytest.raises(ValueError, match="need an https:// endpoint"):
        AsyncClient("https://a:1,b:2", ca_cert=str(ca))
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        Client("https://a:1", client_cert=str(ca))
    with pytest.raises(ValueError, match="not a PEM certificate"):
        Client("https://a:1", ca_cert=b"not a certificate")
    with pytest.raises(ValueError, match="ca_cert .*missing"):
        Client("https://a:1", ca_cert=str(tmp_path / "missing"))
    Client("https://a:1", ca_cert=str(ca)).close()


def test_the_token_is_sent_as_a_bearer_header_from_the_argument_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def sent(**kwargs: Any) -> tuple[tuple[str, str], ...]:
        return Credentials.load(**kwargs).metadata

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    assert sent() == ()
    assert sent(token=" s3cret \n") == (("authorization", "Bearer s3cret"),)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\nignored\n")
    assert sent(token_file=token_file) == (("authorization", "Bearer from-file"),)
    with pytest.raises(ValueError, match="not both"):
        sent(token="a", token_file=token_file)

    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert sent() == (("authorization", "Bearer from-env"),)
    assert sent(token="explicit") == (("authorization", "Bearer explicit"),)
    assert sent(token_file=token_file) == (("authorization", "Bearer from-file"),)
    assert sent(token="") == (), "an empty token sends none"
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token_file))
    with pytest.raises(ValueError, match="both set"):
        sent()
    monkeypatch.delenv(TOKEN_ENV)
    assert sent() == (("authorization", "Bearer from-file"),)

    with pytest.raises(ValueError, match="characters a header cannot carry") as caught:
        sent(token="bad\ttoken")
    assert "bad" not in str(caught.value), "the token is never echoed"
    assert "from-file" not in repr(Credentials.load()), "nor shown"


def test_a_failure_moves_the_next_connect_to_the_next_endpoint() -> None:
    rotation = Rotation(3)
    assert rotation.order() == [0, 1, 2]
    rotation.connected(1)
    assert rotation.order() == [1, 2, 0]
    rotation.failed()
    assert rotation.order() == [2, 0, 1]


def packed(
    message: error_details_pb2.BadRequest | error_details_pb2.ResourceInfo | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(message)
    return a


def retry_trailer(seconds: float) -> list[tuple[str, str | bytes]]:
    """A status trailer with a RetryInfo detail, as a busy server sends it."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromTimedelta(timedelta(seconds=seconds))
    trailer = status_pb2.Status(code=8, message="busy", details=[packed(info)])
    return [(STATUS_DETAILS_KEY, trailer.SerializeToString())]


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


def test_resource_exhausted_is_retried_only_with_a_retry_hint_and_not_before_it() -> None:
    busy = error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", retry_trailer(5.0))
    assert isinstance(busy, ResourceExhausted) and busy.retry_delay == timedelta(seconds=5)
    assert is_retryable(busy) and retry_hint(busy) == 5.0
    assert not is_retryable(error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "request too large"))
    assert retry_hint(error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "x")) is None

    # The hint, then the jittered pause; within the same reconnect budget.
    policy = RetryPolicy(attempts=3)
    backoff = Backoff(policy, endpoints=1)
    pauses = [backoff.next_delay(busy) for _ in range(3)]
    for pause, ceiling in zip(pauses, [0.5, 1.0, 2.0]):
        assert pause is not None and 5.0 <= pause <= 5.0 + ceiling, pauses
    assert backoff.next_delay(busy) is None, "the hinted retries count as reconnects"
    mixed = Backoff(policy, endpoints=1)
    assert mixed.next_delay(status(grpc.StatusCode.UNAVAILABLE)) is not None
    assert mixed.next_delay(busy) is not None
    assert mixed.next_delay(status(grpc.StatusCode.UNAVAILABLE)) is not None
    assert mixed.next_delay(busy) is None
    unhinted = Backoff(policy, endpoints=1).next_delay(status(grpc.StatusCode.UNAVAILABLE))
    assert unhinted is not None and unhinted <= 0.5


def test_final_answers_are_never_retried_even_with_a_retry_hint() -> None:
    for code in [
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
    ]:
        for trailer in ([], retry_trailer(1.0)):
            e = error_for(code, "the answer", trailer)
            assert not is_retryable(e), code
            assert Backoff(RetryPolicy(), 1).next_delay(e) is None, code


def test_prefixes_are_required_and_the_whole_bucket_is_explicit() -> None:
    # Neither prefixes nor keys: the whole bucket is never a default.
    with pytest.raises(ValueError, match=r'prefixes=\[""\] for the whole bucket'):
        WarmRequest(bucket="b", directory_bucket="d")
    with pytest.raises(ValueError, match=r'prefixes=\[""\] for the whole bucket'):
        WarmRequest(bucket="b", directory_bucket="d", prefixes=[])
    whole = WarmRequest(bucket="b", directory_bucket="d", prefixes=[""])
    assert whole.to_proto().prefixes == [""]
    assert WarmRequest.from_proto(pb.WarmCacheRequest(bucket="b")).prefixes == ("",)


def test_an_s3_url_as_a_prefix_is_refused_with_what_it_meant() -> None:
    with pytest.raises(ValueError) as caught:
        WarmRequest(bucket="demo-src", directory_bucket="d", prefixes=["s3://demo-src/datasets/"])
    assert str(caught.value) == (
        "prefix 's3://demo-src/datasets/' is a URL; "
        "did you mean bucket='demo-src', prefixes=['datasets/']?"
    )
    for url, meant in [
        ("S3://demo-src/datasets", "bucket='demo-src', prefixes=['datasets/']"),
        ("s3://demo-src", "bucket='demo-src', prefixes=['']"),
        ("s3://demo-src/", "bucket='demo-src', prefixes=['']"),
    ]:
        with pytest.raises(ValueError, match=re.escape(meant)):
            WarmRequest(bucket="x", directory_bucket="d", prefixes=["ok/", url])
    # A key that merely contains "s3://" further in is a key.
    assert WarmRequest(bucket="b", directory_bucket="d", prefixes="logs/s3://x/").prefixes == (
        "logs/s3://x/",
    )


def test_the_new_request_fields_reach_the_wire_and_the_report_names_empty_prefixes() -> None:
    request = WarmRequest(
        bucket="b", directory_bucket="d", prefixes=["p/"], batch_operations=True, allow_empty=True
    )
    wire = request.to_proto()
    assert wire.batch_operations and wire.allow_empty and not wire.dry_run
    assert WarmRequest.from_proto(wire) == request
    assert as_dry_run(request).dry_run and not request.to_proto().dry_run
    final = pb.WarmProgress(
        operation_id="op", phase=pb.PHASE_DONE, outcome=pb.OUTCOME_SUCCEEDED,
        empty_prefixes=["q/"],
    )
    report = WarmReport.from_final(Progress.from_proto(final))
    assert report.empty_prefixes == ("q/",) and report.last.plan is None


def test_a_warm_request_round_trips_and_a_lone_prefix_is_one() -> None:
    request = WarmRequest(
        bucket="b", directory_bucket="d--use1-az4--x-s3", prefixes="p/",
        ttl=timedelta(minutes=90, milliseconds=5), force_copy=True, destination_prefix="t/",
        request_id="id-1",
    )
    assert request.prefixes == ("p/",)
    assert WarmRequest.from_proto(request.to_proto()) == request
    generated = WarmRequest(bucket="b", directory_bucket="d", prefixes=[""]).with_request_id()
    assert generated.request_id is not None and generated.request_id.startswith("py-")


def test_a_dry_run_without_a_plan_fails_and_an_old_server_that_warms_is_caught() -> None:
    def final(**fields: Any) -> Progress:
        return Progress.from_proto(pb.WarmProgress(phase=pb.PHASE_DONE, **fields))

    assert plan_of(Progress.from_proto(pb.WarmProgress(phase=pb.PHASE_PLANNING))) is None
    plan = plan_of(final(outcome=pb.OUTCOME_SUCCEEDED, plan=pb.WarmPlan(list_requests=3)))
    assert plan is not None and plan.list_requests == 3
    with pytest.raises(PlanFailed, match="listing failed"):
        plan_of(final(outcome=pb.OUTCOME_FAILED, error="listing failed"))
    with pytest.raises(PlanFailed, match="carries no plan"):
        plan_of(final(outcome=pb.OUTCOME_SUCCEEDED))
    with pytest.raises(PlanFailed, match="does not support dry runs"):
        plan_of(Progress.from_proto(pb.WarmProgress(operation_id="op-1", phase=pb.PHASE_QUEUED)))
