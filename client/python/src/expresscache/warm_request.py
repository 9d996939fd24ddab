"""What to warm: the request a launcher builds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from . import _proto_time
from .v1 import cache_pb2 as pb


@dataclass(frozen=True)
class WarmRequest:
    """Warm ``prefixes`` of general-purpose ``bucket`` into ``directory_bucket``.

    The server validates every field and reports all violations at once as
    :class:`~expresscache.InvalidRequest`; this class only fixes the types.
    """

    bucket: str
    """Source general-purpose bucket."""
    directory_bucket: str
    """Destination directory bucket, ``base-name--zone-id--x-s3``."""
    prefixes: Sequence[str] = ("",)
    """``""`` is the whole bucket; any other prefix ends in ``/``. A single
    string is taken as one prefix, not as a sequence of characters."""
    ttl: timedelta = timedelta(hours=24)
    """How long the objects must stay cached, counted from the call."""
    force_copy: bool = False
    """Copy everything again, even objects cached and unchanged."""
    destination_prefix: str = ""
    """Cache source key K as ``destination_prefix + K`` (``""`` or ending in ``/``)."""
    max_staleness: timedelta = timedelta(0)
    """Answer at once from a SUCCEEDED warm of the same data that finished at
    most this long ago, if its leases are live, without listing (changes in
    the window go unnoticed). Zero, the default: always list."""
    request_id: str | None = None
    """Idempotency key (1-128 of ``[A-Za-z0-9._:-]``): resubmitting the same
    request with it attaches to the same operation. ``warm_and_wait``
    generates one when it is None, so its reconnects never start a second
    warm."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefixes", tuple(prefix_list(self.prefixes)))

    def with_request_id(self) -> WarmRequest:
        """This request, with a generated request_id if it has none."""
        if self.request_id:
            return self
        return replace(self, request_id=generate_request_id())

    def to_proto(self) -> pb.WarmCacheRequest:
        return pb.WarmCacheRequest(
            bucket=self.bucket,
            prefixes=list(self.prefixes),
            directory_bucket=self.directory_bucket,
            ttl=_proto_time.to_duration(self.ttl),
            force_copy=self.force_copy,
            request_id=self.request_id or "",
            destination_prefix=self.destination_prefix,
            max_staleness=(
                _proto_time.to_duration(self.max_staleness) if self.max_staleness else None
            ),
        )

    @classmethod
    def from_proto(cls, m: pb.WarmCacheRequest) -> WarmRequest:
        return cls(
            bucket=m.bucket,
            directory_bucket=m.directory_bucket,
            prefixes=tuple(m.prefixes),
            ttl=_proto_time.duration(m, "ttl") or timedelta(0),
            force_copy=m.force_copy,
            destination_prefix=m.destination_prefix,
            max_staleness=_proto_time.duration(m, "max_staleness") or timedelta(0),
            request_id=m.request_id or None,
        )


def generate_request_id() -> str:
    """A fresh idempotency key, as the CLI makes one (``cli-<uuid>``)."""
    return f"py-{uuid.uuid4()}"


def as_proto_with_id(request: WarmRequest | pb.WarmCacheRequest) -> pb.WarmCacheRequest:
    """The wire request to submit (and resubmit), with a request_id."""
    if isinstance(request, WarmRequest):
        return request.with_request_id().to_proto()
    out = pb.WarmCacheRequest()
    out.CopyFrom(request)
    if not out.request_id:
        out.request_id = generate_request_id()
    return out


def prefix_list(prefixes: Sequence[str]) -> list[str]:
    """``prefixes`` as a list; a lone string is one prefix (str is itself a
    Sequence[str]: "data/" would otherwise become "d", "a", "t", ...)."""
    return [prefixes] if isinstance(prefixes, str) else list(prefixes)
