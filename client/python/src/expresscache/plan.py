"""What a warm would do and cost: the plan of a dry run (``Client.plan``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from . import _proto_time
from .v1 import cache_pb2 as pb


@dataclass(frozen=True)
class PrefixPlan:
    """One listed prefix: what would be copied and what is cached already."""

    prefix: str
    objects_to_copy: int
    bytes_to_copy: int
    objects_cached: int
    bytes_cached: int
    objects_refused: int
    """Objects that cannot be warmed (KeyClash, KeyTooLong)."""

    @classmethod
    def from_proto(cls, m: pb.PrefixPlan) -> PrefixPlan:
        return cls(
            prefix=m.prefix,
            objects_to_copy=m.objects_to_copy,
            bytes_to_copy=m.bytes_to_copy,
            objects_cached=m.objects_cached,
            bytes_cached=m.bytes_cached,
            objects_refused=m.objects_refused,
        )


@dataclass(frozen=True)
class CostLine:
    """One billed item of an estimate."""

    item: str
    """What is billed, e.g. "LIST requests on the source"."""
    quantity: float
    unit: str
    """"1,000 requests", "GB", "job", ..."""
    usd_per_unit: float
    usd: float

    @classmethod
    def from_proto(cls, m: pb.CostLine) -> CostLine:
        return cls(
            item=m.item, quantity=m.quantity, unit=m.unit, usd_per_unit=m.usd_per_unit, usd=m.usd
        )


@dataclass(frozen=True)
class CostEstimate:
    """An estimated cost, in US dollars, with its lines."""

    usd: float
    lines: tuple[CostLine, ...]

    @classmethod
    def from_proto(cls, m: pb.CostEstimate) -> CostEstimate:
        return cls(usd=m.usd, lines=tuple(CostLine.from_proto(line) for line in m.lines))


@dataclass(frozen=True)
class WarmPlan:
    """What a warm of the request would do, and what it would cost by the
    server's copy engine and by S3 Batch Operations. Nothing was copied,
    leased or recorded to make it."""

    prefixes: tuple[PrefixPlan, ...]
    """One per prefix listed (a requested prefix under another is listed with it)."""
    list_requests: int
    """Source listing requests (pages) the plan took; a warm takes as many."""
    large_objects: int
    """Objects to copy over the 5 GiB single-copy limit."""
    engine: CostEstimate | None
    """Estimated cost by the server's copy engine."""
    batch: CostEstimate | None
    """Estimated cost by an S3 Batch Operations job."""
    estimated_duration: timedelta | None
    """Estimated time by the engine; None when the server has not measured
    a copy rate yet."""
    prices: str
    """Where the prices come from and when they were taken."""
    raw: pb.WarmPlan = field(repr=False, compare=False)

    @property
    def objects_to_copy(self) -> int:
        return sum(p.objects_to_copy for p in self.prefixes)

    @property
    def bytes_to_copy(self) -> int:
        return sum(p.bytes_to_copy for p in self.prefixes)

    @property
    def objects_cached(self) -> int:
        return sum(p.objects_cached for p in self.prefixes)

    @classmethod
    def from_proto(cls, m: pb.WarmPlan) -> WarmPlan:
        return cls(
            prefixes=tuple(PrefixPlan.from_proto(p) for p in m.prefixes),
            list_requests=m.list_requests,
            large_objects=m.large_objects,
            engine=CostEstimate.from_proto(m.engine) if m.HasField("engine") else None,
            batch=CostEstimate.from_proto(m.batch) if m.HasField("batch") else None,
            estimated_duration=_proto_time.duration(m, "estimated_duration"),
            prices=m.prices,
            raw=m,
        )
