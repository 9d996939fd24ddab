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
    """Warm ``prefixes`` (or the exact ``keys``) of general-purpose ``bucket``
    into ``directory_bucket``.

    The server validates every field and reports all violations at once as
    :class:`~expresscache.InvalidRequest`; this class fixes the types and
    refuses at once (ValueError) the mistakes that would otherwise warm the
    wrong thing: neither prefixes nor keys, both, and an ``s3://`` URL given
    as a prefix or key.
    """

    bucket: str
    """Source general-purpose bucket."""
    directory_bucket: str
    """Destination directory bucket, ``base-name--zone-id--x-s3``."""
    prefixes: Sequence[str] = ()
    """Key prefixes inside ``bucket``, each ending in ``/``; ``[""]`` is the
    whole bucket, which must be asked for so (there is no default: give
    prefixes or ``keys``). A single string is taken as one prefix, not as a
    sequence of characters."""
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
    batch_operations: bool = False
    """Copy through one S3 Batch Operations job instead of the server's copy
    engine (the server must be configured for it, else
    :class:`~expresscache.FailedPrecondition`)."""
    allow_empty: bool = False
    """Accept a warm in which no prefix lists any object. Without it such a
    warm ends FAILED (a mistyped prefix would otherwise report success with
    nothing cached); ``WarmReport.empty_prefixes`` names the empty prefixes
    either way."""
    keys: Sequence[str] = ()
    """Exact source keys to warm instead of prefixes (each not ending in
    ``/``; at most 100,000; a key given twice counts once). A key the source
    does not hold fails with code ``NoSuchKey`` (the warm ends
    PARTIALLY_FAILED). The server lists and leases the keys' directories.
    A single string is taken as one key."""
    include: Sequence[str] = ()
    """Glob patterns: only keys matching one are warmed. A pattern matches
    the whole key from the bucket's root: ``*`` within a directory, ``**``
    across directories (``**/``: none or more), ``?`` one character,
    ``[a-z]`` one of a set, ``\\`` escapes; e.g. ``"datasets/**/*.parquet"``.
    At most 100 patterns with ``exclude``. A single string is one pattern."""
    exclude: Sequence[str] = ()
    """Glob patterns: keys matching one are never warmed (exclude wins over
    include)."""

    def __post_init__(self) -> None:
        prefixes = tuple(prefix_list(self.prefixes))
        # A key given twice is one key (the server refuses duplicates).
        keys = tuple(dict.fromkeys(prefix_list(self.keys)))
        if not prefixes and not keys:
            raise ValueError(
                "prefixes is empty: name the prefixes to warm, or prefixes=[\"\"] for the "
                "whole bucket, or the exact keys (keys=[...])"
            )
        if prefixes and keys:
            raise ValueError(
                "a warm names either prefixes or exact keys, not both: warm them separately, "
                "or select keys under the prefixes with include=[...]"
            )
        for prefix in prefixes:
            check_not_url(prefix)
        for key in keys:
            check_key_not_url(key)
        object.__setattr__(self, "prefixes", prefixes)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "include", tuple(prefix_list(self.include)))
        object.__setattr__(self, "exclude", tuple(prefix_list(self.exclude)))

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
            batch_operations=self.batch_operations,
            allow_empty=self.allow_empty,
            keys=list(self.keys),
            include=list(self.include),
            exclude=list(self.exclude),
        )

    @classmethod
    def from_proto(cls, m: pb.WarmCacheRequest) -> WarmRequest:
        return cls(
            bucket=m.bucket,
            directory_bucket=m.directory_bucket,
            # The wire's empty list is the whole bucket, unless keys are
            # named instead.
            prefixes=tuple(m.prefixes) or (() if m.keys else ("",)),
            keys=tuple(m.keys),
            include=tuple(m.include),
            exclude=tuple(m.exclude),
            ttl=_proto_time.duration(m, "ttl") or timedelta(0),
            force_copy=m.force_copy,
            destination_prefix=m.destination_prefix,
            max_staleness=_proto_time.duration(m, "max_staleness") or timedelta(0),
            request_id=m.request_id or None,
            batch_operations=m.batch_operations,
            allow_empty=m.allow_empty,
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


def as_dry_run(request: WarmRequest | pb.WarmCacheRequest) -> pb.WarmCacheRequest:
    """The wire request of a dry run of ``request`` (request_id and
    max_staleness are ignored by the server then)."""
    out = pb.WarmCacheRequest()
    out.CopyFrom(request.to_proto() if isinstance(request, WarmRequest) else request)
    out.dry_run = True
    return out


def prefix_list(prefixes: Sequence[str]) -> list[str]:
    """``prefixes`` as a list; a lone string is one prefix (str is itself a
    Sequence[str]: "data/" would otherwise become "d", "a", "t", ...)."""
    return [prefixes] if isinstance(prefixes, str) else list(prefixes)


def check_key_not_url(key: str) -> None:
    """Refuses an ``s3://BUCKET/KEY`` URL given as a key, saying what was
    probably meant."""
    if key[:5].lower() != "s3://":
        return
    bucket, _, meant = key[5:].partition("/")
    raise ValueError(f"key {key!r} is a URL; did you mean bucket={bucket!r}, keys=[{meant!r}]?")


def check_not_url(prefix: str) -> None:
    """Refuses an ``s3://BUCKET/KEY`` URL given as a prefix (it would list
    nothing), saying what was probably meant."""
    if prefix[:5].lower() != "s3://":
        return
    bucket, _, key = prefix[5:].partition("/")
    meant = key if key == "" or key.endswith("/") else f"{key}/"
    raise ValueError(
        f"prefix {prefix!r} is a URL; did you mean bucket={bucket!r}, prefixes=[{meant!r}]?"
    )
