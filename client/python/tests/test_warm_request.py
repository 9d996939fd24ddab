"""Key lists and include/exclude patterns in WarmRequest: checked at once,
carried on the wire, and honoured by the real server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from expresscache import Client, InvalidRequest, Outcome, WarmRequest
from expresscache.v1 import cache_pb2 as pb
from harness import Buckets


def test_a_key_list_goes_on_the_wire_instead_of_prefixes_each_key_once() -> None:
    request = WarmRequest(
        bucket="src-b",
        directory_bucket="c--use1-az4--x-s3",
        keys=["d/a.bin", "d/b.bin", "d/a.bin"],
        include="**/*.bin",
        exclude=["tmp/**"],
    )
    assert request.keys == ("d/a.bin", "d/b.bin")
    assert request.include == ("**/*.bin",), "a lone string is one pattern"
    m = request.to_proto()
    assert list(m.prefixes) == [], "keys, not the whole bucket"
    assert list(m.keys) == ["d/a.bin", "d/b.bin"]
    assert (list(m.include), list(m.exclude)) == (["**/*.bin"], ["tmp/**"])
    back = WarmRequest.from_proto(m)
    assert (back.prefixes, back.keys, back.include) == ((), ("d/a.bin", "d/b.bin"), ("**/*.bin",))
    # A stored request with neither is the whole bucket, as before.
    assert WarmRequest.from_proto(pb.WarmCacheRequest(bucket="b", directory_bucket="d")).prefixes == ("",)


def test_neither_or_both_prefixes_and_keys_and_a_url_as_a_key_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="prefixes is empty"):
        WarmRequest(bucket="src-b", directory_bucket="c--use1-az4--x-s3")
    with pytest.raises(ValueError, match="either prefixes or exact keys"):
        WarmRequest(bucket="src-b", directory_bucket="c--use1-az4--x-s3", prefixes=["d/"], keys=["d/a"])
    with pytest.raises(ValueError, match=r"did you mean bucket='src-b', keys=\['d/a'\]"):
        WarmRequest(bucket="src-b", directory_bucket="c--use1-az4--x-s3", keys=["s3://src-b/d/a"])


def test_a_key_list_warms_exactly_its_keys_and_fails_a_missing_one(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(["d/a.bin", "d/b.bin", "d/c.txt", "e/f.bin"])
    report = client.warm_and_wait(
        WarmRequest(
            bucket=src.source,
            directory_bucket=src.directory,
            keys=["d/a.bin", "e/f.bin", "d/missing.bin"],
        )
    )
    assert report.outcome is Outcome.PARTIALLY_FAILED
    assert [(f.key, f.code) for f in report.failures] == [("d/missing.bin", "NoSuchKey")]
    assert report.counters.objects_listed == 2
    assert src.cached_keys() == ["d/a.bin", "e/f.bin"]


def test_include_and_exclude_select_the_keys_a_warm_copies(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(["d/a.bin", "d/b.txt", "d/tmp/c.bin", "d/sub/e.bin"])
    report = client.warm_and_wait(
        WarmRequest(
            bucket=src.source,
            directory_bucket=src.directory,
            prefixes=["d/"],
            include=["**/*.bin"],
            exclude=["d/tmp/**"],
        )
    )
    assert report.outcome is Outcome.SUCCEEDED
    assert report.counters.objects_listed == 2
    assert src.cached_keys() == ["d/a.bin", "d/sub/e.bin"]


def test_a_bad_pattern_is_an_invalid_request_naming_it(
    client: Client, buckets: Callable[..., Buckets]
) -> None:
    src = buckets(["d/a"])
    with pytest.raises(InvalidRequest) as caught:
        client.warm_and_wait(
            WarmRequest(
                bucket=src.source, directory_bucket=src.directory, prefixes=["d/"], include=["d/[a"]
            )
        )
    fields = {v.field: v.description for v in caught.value.field_violations}
    assert set(fields) == {"include[0]"}
    assert "closing ']'" in fields["include[0]"]
