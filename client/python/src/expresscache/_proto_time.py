"""protobuf Timestamp and Duration as datetime and timedelta.

An unset message field reads as the zero value in protobuf; the ones that
mean "unknown" when unset (an ETA, an expiry) are turned into None instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(parent: Message, field: str) -> datetime | None:
    """``parent.field`` as an aware UTC datetime, None when unset."""
    if not parent.HasField(field):
        return None
    value: Timestamp = getattr(parent, field)
    return value.ToDatetime(tzinfo=timezone.utc)


def duration(parent: Message, field: str) -> timedelta | None:
    """``parent.field`` as a timedelta, None when unset."""
    if not parent.HasField(field):
        return None
    value: Duration = getattr(parent, field)
    return value.ToTimedelta()


def to_duration(value: timedelta) -> Duration:
    d = Duration()
    d.FromTimedelta(value)
    return d
