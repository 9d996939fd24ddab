"""Exceptions: one class per gRPC status code the service answers with.

Each carries the google.rpc details the server attaches in the
``grpc-status-details-bin`` trailer: the field violations of a rejected
request (``BadRequest``), the bucket that is missing or refused
(``ResourceInfo``) and how long to wait before trying again (``RetryInfo``,
with RESOURCE_EXHAUSTED from a busy server).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One field of a request that failed validation."""

    field: str
    """The field's path, e.g. ``bucket``, ``prefixes[2]``, ``ttl``."""
    description: str


@dataclass(frozen=True)
class ResourceInfo:
    """The resource an error is about (a bucket, an operation)."""

    resource_type: str
    resource_name: str
    owner: str
    description: str


class ExpressCacheError(Exception):
    """Base of every error this package raises."""


class RpcError(ExpressCacheError):
    """The service (or the connection to it) answered with an error status."""

    code: grpc.StatusCode
    message: str
    field_violations: tuple[FieldViolation, ...]
    resource_info: ResourceInfo | None
    retry_delay: timedelta | None
    """How long the server asked the caller to wait before trying again
    (``google.rpc.RetryInfo``), if it did."""
    status: status_pb2.Status | None
    """The decoded ``google.rpc.Status`` with every detail, when sent."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        resource_info: ResourceInfo | None = None,
        retry_delay: timedelta | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.resource_info = resource_info
        self.retry_delay = retry_delay
        self.status = status
        super().__init__(self._describe())

    def _describe(self) -> str:
        # The server's message usually names every violation and the
        # resource already; add what it leaves out, not everything twice.
        text = f"{self.code.name}: {self.message}"
        for v in self.field_violations:
            if f"{v.field}:" not in self.message:
                text += f"\n  {v.field}: {v.description}"
        r = self.resource_info
        if r is not None and r.resource_name not in self.message:
            text += f"\n  {r.resource_type} {r.resource_name!r}: {r.description}"
        return text


class InvalidRequest(RpcError):
    """INVALID_ARGUMENT: the request failed validation; ``field_violations`` says where."""


class NotFound(RpcError):
    """NOT_FOUND: a bucket or operation does not exist (``resource_info`` names it)."""


class PermissionDenied(RpcError):
    """PERMISSION_DENIED: the service's credentials cannot use a bucket."""


class AlreadyExists(RpcError):
    """ALREADY_EXISTS: the request_id is in use by a different request."""


class Unauthenticated(RpcError):
    """UNAUTHENTICATED: the caller's credentials were refused."""


class FailedPrecondition(RpcError):
    """FAILED_PRECONDITION: the service cannot do this in its current state."""


class ResourceExhausted(RpcError):
    """RESOURCE_EXHAUSTED: a limit of the service was reached. When the
    server says when to come back (``retry_delay``), ``warm_and_wait``
    waits that long and tries again."""


class Unavailable(RpcError):
    """UNAVAILABLE: no endpoint could be reached, or the connection broke."""


class DeadlineExceeded(RpcError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""


class Cancelled(RpcError):
    """CANCELLED: the call was cancelled."""


class Aborted(RpcError):
    """ABORTED: the service gave up on the call; retrying may succeed."""


class Unimplemented(RpcError):
    """UNIMPLEMENTED: the server does not know this call (an older server)."""


class InternalError(RpcError):
    """INTERNAL or DATA_LOSS: the service failed."""


class PlanFailed(ExpressCacheError):
    """A dry run (``Client.plan``) ended without a plan: the listing failed,
    or the server does not support dry runs (it started a warm, which was
    cancelled at once)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"the dry run failed: {message}")


class StreamEnded(ExpressCacheError):
    """A progress stream ended without its final (phase DONE) message."""

    def __init__(self, operation_id: str) -> None:
        self.operation_id = operation_id
        super().__init__(
            f"progress stream of operation {operation_id!r} ended before the warm finished"
        )


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def error_for(
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None = None,
) -> RpcError:
    """The exception for a status, with the details of its trailer decoded."""
    status = _status_details(trailing_metadata or ())
    violations: list[FieldViolation] = []
    resource: ResourceInfo | None = None
    retry_delay: timedelta | None = None
    if status is not None:
        for any_detail in status.details:
            # Unpack answers whether the detail is of that type.
            bad_request = error_details_pb2.BadRequest()
            if any_detail.Unpack(bad_request):
                violations.extend(
                    FieldViolation(field=v.field, description=v.description)
                    for v in bad_request.field_violations
                )
                continue
            retry_info = error_details_pb2.RetryInfo()
            if retry_delay is None and any_detail.Unpack(retry_info):
                retry_delay = (
                    retry_info.retry_delay.ToTimedelta()
                    if retry_info.HasField("retry_delay")
                    else None
                )
                continue
            info = error_details_pb2.ResourceInfo()
            if resource is None and any_detail.Unpack(info):
                resource = ResourceInfo(
                    resource_type=info.resource_type,
                    resource_name=info.resource_name,
                    owner=info.owner,
                    description=info.description,
                )
    cls = _BY_CODE.get(code, RpcError)
    return cls(
        code,
        message,
        field_violations=tuple(violations),
        resource_info=resource,
        retry_delay=retry_delay,
        status=status,
    )


def from_grpc(error: grpc.RpcError) -> RpcError:
    """The exception for an error raised by grpc (blocking or asyncio)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error_for(error.code(), error.details() or "", error.trailing_metadata())
    # The blocking API raises objects that are both RpcError and Call (the
    # typing stubs declare the two incompatible, hence the plain object).
    call: object = error
    if isinstance(call, grpc.Call):
        return error_for(call.code(), call.details() or "", call.trailing_metadata())
    # grpc raises calls; a bare RpcError carries nothing to decode.
    return RpcError(grpc.StatusCode.UNKNOWN, str(error))


def _status_details(metadata: Iterable[tuple[str, str | bytes]]) -> status_pb2.Status | None:
    for key, value in metadata:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                # A garbled trailer must not hide the error it came with.
                return None
    return None
