"""Operations as the service lists them: status, pages, filters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from . import _proto_time
from .progress import Progress
from .v1 import cache_pb2 as pb
from .warm_request import WarmRequest


class OperationFilter(enum.IntEnum):
    """Which operations ``list_operations`` returns (values as on the wire)."""

    ALL = 0
    RUNNING = 1
    """Not yet finished (queued, planning, copying)."""
    FINISHED = 2
    """Finished, whatever the outcome."""


@dataclass(frozen=True)
class OperationStatus:
    """An operation's request and its latest progress."""

    operation_id: str
    request: WarmRequest
    progress: Progress
    """The latest progress (the final one once the phase is DONE)."""
    created_at: datetime | None
    resumptions: int
    """How often a server resumed it after a crash or shutdown interrupted it."""
    raw: pb.OperationStatus = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.progress.done

    @classmethod
    def from_proto(cls, m: pb.OperationStatus) -> OperationStatus:
        return cls(
            operation_id=m.operation_id,
            request=WarmRequest.from_proto(m.request),
            progress=Progress.from_proto(m.progress),
            created_at=_proto_time.timestamp(m, "created_at"),
            resumptions=m.resumptions,
            raw=m,
        )


@dataclass(frozen=True)
class OperationPage:
    """One page of ``list_operations``, newest first."""

    operations: tuple[OperationStatus, ...]
    next_page_token: str
    """Pass to the next call for the next page; ``""`` on the last page."""

    @classmethod
    def from_proto(cls, m: pb.ListOperationsResponse) -> OperationPage:
        return cls(
            operations=tuple(OperationStatus.from_proto(o) for o in m.operations),
            next_page_token=m.next_page_token,
        )
