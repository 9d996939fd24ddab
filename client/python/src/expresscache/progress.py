"""A warm's progress as it streams, and its final report.

Plain dataclasses built from the wire messages, so a launcher needs none of
the generated types; each keeps the message it came from as ``raw`` for
anything newer than this module.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import _proto_time
from .plan import WarmPlan
from .v1 import cache_pb2 as pb


class Phase(enum.IntEnum):
    """Where an operation is in its life (values as on the wire)."""

    UNSPECIFIED = 0
    QUEUED = 1
    """Accepted, waiting to start."""
    PLANNING = 2
    """Listing the source and comparing it with the cache index."""
    COPYING = 3
    """Copying objects (listing may still be going on for later pages)."""
    DONE = 4
    """Finished; the outcome is set."""

    @classmethod
    def of(cls, value: int) -> Phase:
        # A newer server may send a phase this client does not know yet.
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


class Outcome(enum.IntEnum):
    """How a finished operation ended (values as on the wire)."""

    UNSPECIFIED = 0
    SUCCEEDED = 1
    """Every listed object is present and current in the directory bucket."""
    PARTIALLY_FAILED = 2
    """Some objects could not be copied; ``failures`` names them."""
    FAILED = 3
    """The operation could not do its job; ``error`` says why."""
    CANCELLED = 4
    """Cancelled before it finished."""

    @classmethod
    def of(cls, value: int) -> Outcome:
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True)
class Counters:
    """What a warm has found and done so far."""

    objects_listed: int = 0
    """Objects found under the prefixes in the source."""
    objects_hit: int = 0
    """Objects already cached and current: not copied."""
    objects_to_copy: int = 0
    """Objects the plan decided to copy (so far, while listing goes on)."""
    objects_copied: int = 0
    """Objects this operation copied."""
    objects_failed: int = 0
    """Objects that could not be copied."""
    objects_shared: int = 0
    """Objects another warm was copying: waited for, not copied again."""
    bytes_listed: int = 0
    bytes_to_copy: int = 0
    bytes_copied: int = 0
    copy_retries: int = 0
    """Requests retried after a retryable error (throttling, 5xx, timeouts)."""
    throttle_events: int = 0
    """Of those, throttling answers (503 SlowDown, 429, timeouts)."""

    @classmethod
    def from_proto(cls, m: pb.Counters) -> Counters:
        return cls(
            objects_listed=m.objects_listed,
            objects_hit=m.objects_hit,
            objects_to_copy=m.objects_to_copy,
            objects_copied=m.objects_copied,
            objects_failed=m.objects_failed,
            objects_shared=m.objects_shared,
            bytes_listed=m.bytes_listed,
            bytes_to_copy=m.bytes_to_copy,
            bytes_copied=m.bytes_copied,
            copy_retries=m.copy_retries,
            throttle_events=m.throttle_events,
        )


@dataclass(frozen=True)
class KeyFailure:
    """One object that could not be copied (or deleted)."""

    key: str
    code: str
    """Short machine-readable reason: the S3 error code or e.g. ``SourceChanged``."""
    message: str

    @classmethod
    def from_proto(cls, m: pb.KeyFailure) -> KeyFailure:
        return cls(key=m.key, code=m.code, message=m.message)


def key_failures(ms: Iterable[pb.KeyFailure]) -> tuple[KeyFailure, ...]:
    return tuple(KeyFailure.from_proto(m) for m in ms)


@dataclass(frozen=True)
class BatchJob:
    """The S3 Batch Operations job a warm's copies run in, as S3 Control
    last reported it."""

    job_id: str
    status: str
    """As S3 Control names it: Preparing, Active, Complete, Cancelled, ..."""
    total_tasks: int
    tasks_succeeded: int
    tasks_failed: int

    @classmethod
    def from_proto(cls, m: pb.BatchJobProgress) -> BatchJob:
        return cls(
            job_id=m.job_id,
            status=m.status,
            total_tasks=m.total_tasks,
            tasks_succeeded=m.tasks_succeeded,
            tasks_failed=m.tasks_failed,
        )


@dataclass(frozen=True)
class Progress:
    """One progress message of a warm (or of a watched operation)."""

    operation_id: str
    phase: Phase
    counters: Counters
    outcome: Outcome | None
    """Set only when ``phase`` is DONE."""
    failures: tuple[KeyFailure, ...]
    """In the final message: the first failed keys (at most 100)."""
    failures_omitted: int
    error: str | None
    """Operation-level error when the outcome is FAILED."""
    started_at: datetime | None
    elapsed: timedelta
    objects_per_second: float
    bytes_per_second: float
    eta: timedelta | None
    """Estimated time to finish copying what is planned so far; None when unknown."""
    lease_expires_at: datetime | None
    """When the leases written by this warm expire."""
    concurrency_limit: int
    """The destination bucket's current adaptive copy concurrency."""
    superseded_operation_id: str | None
    """The earlier operation whose request_id this warm took over, if any."""
    joined_operation_id: str | None
    """The running warm of the same data this one joined instead of listing."""
    fresh_from_operation_id: str | None
    """The recent SUCCEEDED warm this one was answered from (max_staleness)."""
    empty_prefixes: tuple[str, ...]
    """In the final message: the requested prefixes under which the source
    listed no object (a typo, or data not there yet)."""
    batch_job: BatchJob | None
    """While the copies run in an S3 Batch Operations job: that job."""
    plan: WarmPlan | None
    """In the final message of a dry run: what the warm would do."""
    raw: pb.WarmProgress = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether this is the operation's last message."""
        return self.phase is Phase.DONE

    @classmethod
    def from_proto(cls, m: pb.WarmProgress) -> Progress:
        phase = Phase.of(m.phase)
        return cls(
            operation_id=m.operation_id,
            phase=phase,
            counters=Counters.from_proto(m.counters),
            outcome=Outcome.of(m.outcome) if phase is Phase.DONE else None,
            failures=key_failures(m.failures),
            failures_omitted=m.failures_omitted,
            error=m.error or None,
            started_at=_proto_time.timestamp(m, "started_at"),
            elapsed=_proto_time.duration(m, "elapsed") or timedelta(0),
            objects_per_second=m.objects_per_second,
            bytes_per_second=m.bytes_per_second,
            eta=_proto_time.duration(m, "eta"),
            lease_expires_at=_proto_time.timestamp(m, "lease_expires_at"),
            concurrency_limit=m.concurrency_limit,
            superseded_operation_id=m.superseded_operation_id or None,
            joined_operation_id=m.joined_operation_id or None,
            fresh_from_operation_id=m.fresh_from_operation_id or None,
            empty_prefixes=tuple(m.empty_prefixes),
            batch_job=BatchJob.from_proto(m.batch_job) if m.HasField("batch_job") else None,
            plan=WarmPlan.from_proto(m.plan) if m.HasField("plan") else None,
            raw=m,
        )


@dataclass(frozen=True)
class WarmReport:
    """The final state of a warm: what ``warm_and_wait`` returns."""

    operation_id: str
    outcome: Outcome
    counters: Counters
    failures: tuple[KeyFailure, ...]
    """The first failed keys with their errors (at most 100)."""
    failures_omitted: int
    """Failed keys not listed in ``failures``."""
    error: str | None
    """Operation-level error when the outcome is FAILED."""
    empty_prefixes: tuple[str, ...]
    """The requested prefixes under which the source listed no object (a
    typo, or data not there yet). When every prefix is empty the warm fails
    unless the request allowed it (``WarmRequest.allow_empty``)."""
    last: Progress
    """The final progress message as received."""
    reconnects: int = 0
    """How often the client reconnected and reattached on the way."""

    @property
    def succeeded(self) -> bool:
        """Every object is present and current in the directory bucket."""
        return self.outcome is Outcome.SUCCEEDED

    @classmethod
    def from_final(cls, last: Progress, reconnects: int = 0) -> WarmReport:
        """The report of a final (phase DONE) progress message."""
        if not last.done:
            raise ValueError(f"operation {last.operation_id} is not done: {last.phase.name}")
        return cls(
            operation_id=last.operation_id,
            outcome=last.outcome if last.outcome is not None else Outcome.UNSPECIFIED,
            counters=last.counters,
            failures=last.failures,
            failures_omitted=last.failures_omitted,
            error=last.error,
            empty_prefixes=last.empty_prefixes,
            last=last,
            reconnects=reconnects,
        )
