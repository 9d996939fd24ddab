"""Python client for expresscache: warm S3 Express One Zone directory
buckets from general-purpose S3 buckets before a job reads them.

The call a launcher needs is :meth:`Client.warm_and_wait` (or
:meth:`AsyncClient.warm_and_wait`): submit a warm, follow its progress
across dropped connections and server restarts, and get the final
:class:`WarmReport`.

The generated wire types are importable too, from ``expresscache.v1``
(``cache_pb2``, ``cache_pb2_grpc``); every dataclass here keeps the message
it was built from as ``raw``.
"""

from importlib.metadata import PackageNotFoundError, version

from .async_client import AsyncClient
from .cache_status import EvictReport, Lease, PrefixStatus, SweepFailure
from .client import Client
from .endpoints import DEFAULT_ENDPOINT, ENDPOINT_ENV
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    ExpressCacheError,
    FailedPrecondition,
    FieldViolation,
    InternalError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ResourceInfo,
    RpcError,
    StreamEnded,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .operations import OperationFilter, OperationPage, OperationStatus
from .progress import Counters, KeyFailure, Outcome, Phase, Progress, WarmReport
from .retry import RetryPolicy, is_retryable
from .warm_request import WarmRequest

try:
    __version__ = version("expresscache")
except PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "Counters",
    "DeadlineExceeded",
    "EvictReport",
    "ExpressCacheError",
    "FailedPrecondition",
    "FieldViolation",
    "InternalError",
    "InvalidRequest",
    "KeyFailure",
    "Lease",
    "NotFound",
    "OperationFilter",
    "OperationPage",
    "OperationStatus",
    "Outcome",
    "PermissionDenied",
    "Phase",
    "PrefixStatus",
    "Progress",
    "ResourceExhausted",
    "ResourceInfo",
    "RetryPolicy",
    "RpcError",
    "StreamEnded",
    "SweepFailure",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WarmReport",
    "WarmRequest",
    "__version__",
    "is_retryable",
]
