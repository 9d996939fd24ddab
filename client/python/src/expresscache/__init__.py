"""Python client for expresscache: warm S3 Express One Zone directory
buckets from general-purpose S3 buckets before a job reads them.

The call a launcher needs is :meth:`Client.warm_and_wait` (or
:meth:`AsyncClient.warm_and_wait`): submit a warm, follow its progress
across dropped connections and server restarts, and get the final
:class:`WarmReport`. :meth:`Client.plan` is the dry run: what a warm would
copy and cost, without copying anything.

The generated wire types are importable too, from ``expresscache.v1``
(``cache_pb2``, ``cache_pb2_grpc``); every dataclass here keeps the message
it was built from as ``raw``.
"""

from importlib.metadata import PackageNotFoundError, version

from .async_client import AsyncClient
from .cache_status import EvictReport, Lease, PrefixStatus, SweepFailure
from .client import Client
from .credentials import (
    CA_CERT_ENV,
    CLIENT_CERT_ENV,
    CLIENT_KEY_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
)
from .endpoints import DEFAULT_ENDPOINT, ENDPOINT_ENV, ENDPOINT_FORMS
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
    PlanFailed,
    ResourceExhausted,
    ResourceInfo,
    RpcError,
    StreamEnded,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .operations import OperationFilter, OperationPage, OperationStatus
from .plan import CostEstimate, CostLine, PrefixPlan, WarmPlan
from .progress import BatchJob, Counters, KeyFailure, Outcome, Phase, Progress, WarmReport
from .retry import RetryPolicy, is_retryable, retry_hint
from .warm_request import WarmRequest

try:
    __version__ = version("expresscache")
except PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "CA_CERT_ENV",
    "CLIENT_CERT_ENV",
    "CLIENT_KEY_ENV",
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "ENDPOINT_FORMS",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "BatchJob",
    "Cancelled",
    "Client",
    "CostEstimate",
    "CostLine",
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
    "PlanFailed",
    "PrefixPlan",
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
    "WarmPlan",
    "WarmReport",
    "WarmRequest",
    "__version__",
    "is_retryable",
    "retry_hint",
]
