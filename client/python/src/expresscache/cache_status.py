"""What is cached under prefixes of a directory bucket, and what evicting them did."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from . import _proto_time
from .progress import KeyFailure, key_failures
from .v1 import cache_pb2 as pb


@dataclass(frozen=True)
class Lease:
    """A promise to keep what is under ``prefix`` cached until ``expires_at``."""

    directory_bucket: str
    prefix: str
    source_bucket: str
    expires_at: datetime | None

    @classmethod
    def from_proto(cls, m: pb.Lease) -> Lease:
        return cls(
            directory_bucket=m.directory_bucket,
            prefix=m.prefix,
            source_bucket=m.source_bucket,
            expires_at=_proto_time.timestamp(m, "expires_at"),
        )


@dataclass(frozen=True)
class SweepFailure:
    """An expired lease whose objects the expiry sweeper could not delete yet."""

    lease: Lease
    attempts: int
    error: str
    next_attempt_at: datetime | None

    @classmethod
    def from_proto(cls, m: pb.SweepFailure) -> SweepFailure:
        return cls(
            lease=Lease.from_proto(m.lease),
            attempts=m.attempts,
            error=m.error,
            next_attempt_at=_proto_time.timestamp(m, "next_attempt_at"),
        )


@dataclass(frozen=True)
class PrefixStatus:
    """How warm one prefix is."""

    prefix: str
    cached_objects: int
    """Objects under the prefix recorded as cached."""
    cached_bytes: int
    leases: tuple[Lease, ...]
    """Live leases on the prefix, an ancestor, or under it, ordered by prefix."""
    sweep_failures: tuple[SweepFailure, ...]
    raw: pb.PrefixStatus = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: pb.PrefixStatus) -> PrefixStatus:
        return cls(
            prefix=m.prefix,
            cached_objects=m.cached_objects,
            cached_bytes=m.cached_bytes,
            leases=tuple(Lease.from_proto(lease) for lease in m.leases),
            sweep_failures=tuple(SweepFailure.from_proto(f) for f in m.sweep_failures),
            raw=m,
        )


@dataclass(frozen=True)
class EvictReport:
    """What an eviction deleted, ended and kept."""

    objects_deleted: int
    bytes_deleted: int
    leases_ended: int
    """Live leases at or under the prefixes that the call ended."""
    objects_kept: int
    """Objects kept: another live lease covers them or a warm is copying them."""
    kept_under: tuple[str, ...]
    """The live lease prefixes that kept objects (at most 100)."""
    forced: bool
    failures: tuple[KeyFailure, ...]
    """Keys that could not be deleted (the first 100); the sweeper retries them."""
    failures_omitted: int
    raw: pb.EvictResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: pb.EvictResponse) -> EvictReport:
        return cls(
            objects_deleted=m.objects_deleted,
            bytes_deleted=m.bytes_deleted,
            leases_ended=m.leases_ended,
            objects_kept=m.objects_kept,
            kept_under=tuple(m.kept_under),
            forced=m.forced,
            failures=key_failures(m.failures),
            failures_omitted=m.failures_omitted,
            raw=m,
        )
