"""The blocking client."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TypeAlias, TypeVar

import grpc

from . import channels
from .cache_status import EvictReport, PrefixStatus
from .credentials import Credentials, Pem
from .endpoints import Endpoint, Rotation, parse_endpoints
from .errors import PlanFailed, RpcError, StreamEnded, Unavailable, from_grpc
from .operations import OperationFilter, OperationPage, OperationStatus
from .plan import WarmPlan
from .progress import Outcome, Progress, WarmReport
from .retry import Backoff, RetryPolicy, breaks_connection, is_retryable
from .v1 import cache_pb2 as pb
from .v1.cache_pb2_grpc import CacheServiceStub
from .warm_request import WarmRequest, as_dry_run, as_proto_with_id, prefix_list

log = logging.getLogger("expresscache")

T = TypeVar("T")

Timeout: TypeAlias = "float | timedelta | None"
"""Seconds (or a timedelta); None for no deadline."""

Metadata: TypeAlias = "tuple[tuple[str, str], ...]"
"""What every call carries (the bearer token)."""


def seconds(timeout: Timeout) -> float | None:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else timeout


def check_tls(endpoints: Sequence[Endpoint], credentials: Credentials) -> None:
    """TLS options make sense only for https:// endpoints (as for the CLI)."""
    if credentials.tls_options:
        for e in endpoints:
            if not e.tls:
                raise ValueError(
                    f"{e}: TLS options (a CA or a client certificate) need an https:// endpoint"
                )


def plan_of(progress: Progress) -> WarmPlan | None:
    """The plan of a dry run's message: None while it goes on; raises
    PlanFailed for a final message without one, or for a message that
    names an operation (a server that predates dry runs warms instead)."""
    if progress.operation_id:
        raise PlanFailed(
            "the server does not support dry runs (it started warm "
            f"{progress.operation_id}, now cancelled); upgrade it"
        )
    if not progress.done:
        return None
    if progress.outcome is Outcome.SUCCEEDED:
        if progress.plan is None:
            raise PlanFailed("the final message carries no plan")
        return progress.plan
    outcome = progress.outcome.name if progress.outcome is not None else "UNSPECIFIED"
    raise PlanFailed(progress.error or f"the dry run ended {outcome}")


class Client:
    """A blocking connection to an expresscache server or fleet of replicas.

    ``endpoints``: ``"http://host:port"``, ``"https://host:port"`` (TLS),
    ``"host:port"`` (plain http), several separated by commas, or a list;
    None reads ``$EXPRESSCACHE_ENDPOINT`` (else ``http://127.0.0.1:50051``).
    Calls go to the first endpoint that answers. ``timeout`` is the deadline
    of each unary call (status, evict, cancel, list_operations; None: no
    deadline); progress streams have none, a warm may take hours.
    ``connect_timeout`` bounds each connect, so a dead replica does not hold
    up the next. ``retry`` says how ``warm_and_wait`` and ``watch_and_wait``
    survive broken connections.

    TLS and identity, as for the CLI (each None reads its
    ``$EXPRESSCACHE_*`` variable): ``ca_cert``, the PEM CA that signs the
    server's certificate (without it ``https://`` trusts the system's
    roots); ``client_cert`` and ``client_key`` for mutual TLS (paths, or PEM
    bytes); ``token`` or ``token_file`` (its first line), a bearer token
    sent with every call as ``authorization: Bearer TOKEN``.

    Safe to share between threads. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        timeout: Timeout = None,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        ca_cert: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.credentials = Credentials.load(
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            token=token,
            token_file=token_file,
        )
        check_tls(self.endpoints, self.credentials)
        self._metadata = self.credentials.metadata
        self.timeout = seconds(timeout)
        self.connect_timeout = connect_timeout
        self.retry = retry or RetryPolicy()
        self._rotation = Rotation(len(self.endpoints))
        self._lock = threading.Lock()
        self._connections = _Connections()
        # A channel left open until the interpreter's final garbage
        # collection can hang the exit (grpc's connectivity poller may still
        # be running then): close them with the client, when it is
        # collected, or at exit, whichever comes first.
        weakref.finalize(self, self._connections.close_all)

    # -- warms --------------------------------------------------------------

    def warm_and_wait(
        self,
        request: WarmRequest | pb.WarmCacheRequest,
        on_progress: Callable[[Progress], object] | None = None,
    ) -> WarmReport:
        """Submits a warm, calls ``on_progress`` for every update, and
        returns the final report once the warm is done.

        Survives a dropped connection, a server restart and the loss of a
        replica: it reconnects with backoff (to the next endpoint) and
        reattaches to the same operation, by resubmitting the request with
        its request_id (generated if the request has none) until the
        operation id is known, then by watching that operation. The outcome
        is in the report; errors (invalid request, missing bucket, a
        connection that did not come back) are raised.
        """
        wire = as_proto_with_id(request)
        operation_id: str | None = None

        def attempt(stub: CacheServiceStub) -> Progress:
            nonlocal operation_id
            # Once the operation is known, follow that very operation: had it
            # ended meanwhile (cancelled, say), resubmitting the request
            # could start a new one.
            if operation_id is None:
                call = stub.WarmCache(wire, metadata=self._metadata)
            else:
                call = stub.WatchOperation(
                    pb.WatchOperationRequest(operation_id=operation_id), metadata=self._metadata
                )
            for progress in _progress(call):
                operation_id = progress.operation_id
                if on_progress is not None:
                    on_progress(progress)
                if progress.done:
                    return progress
            raise StreamEnded(operation_id or "")

        return self._follow(attempt)

    def watch_and_wait(
        self,
        operation_id: str,
        on_progress: Callable[[Progress], object] | None = None,
    ) -> WarmReport:
        """Follows an operation (started by anyone) until it is done,
        reattaching after broken connections like :meth:`warm_and_wait`."""

        def attempt(stub: CacheServiceStub) -> Progress:
            call = stub.WatchOperation(
                pb.WatchOperationRequest(operation_id=operation_id), metadata=self._metadata
            )
            for progress in _progress(call):
                if on_progress is not None:
                    on_progress(progress)
                if progress.done:
                    return progress
            raise StreamEnded(operation_id)

        return self._follow(attempt)

    def warm(self, request: WarmRequest | pb.WarmCacheRequest) -> Iterator[Progress]:
        """Submits a warm and yields its progress, ending with the final
        (done) message. One stream, no reattaching: a broken connection
        raises. Closing the iterator stops listening, not the warm."""
        wire = request.to_proto() if isinstance(request, WarmRequest) else request
        return self._stream(lambda stub: stub.WarmCache(wire, metadata=self._metadata))

    def plan(
        self,
        request: WarmRequest | pb.WarmCacheRequest,
        on_progress: Callable[[Progress], object] | None = None,
    ) -> WarmPlan:
        """Plans ``request`` without warming it (a dry run): lists the
        source and compares it with the cache, calling ``on_progress`` with
        the listing's progress, and returns the plan: what would be copied
        and what is cached, per prefix, and what the warm would cost by the
        copy engine and by S3 Batch Operations. Nothing is copied, leased or
        recorded. One stream, no reattaching (run it again); a listing that
        fails raises :class:`~expresscache.PlanFailed`."""
        wire = as_dry_run(request)

        def use(stub: CacheServiceStub) -> WarmPlan:
            for progress in _progress(stub.WarmCache(wire, metadata=self._metadata)):
                try:
                    plan = plan_of(progress)
                except PlanFailed:
                    if progress.operation_id:
                        self._cancel_quietly(stub, progress.operation_id)
                    raise
                if on_progress is not None:
                    on_progress(progress)
                if plan is not None:
                    return plan
            raise StreamEnded("")

        return self._using(use, breaks_connection)

    def watch(self, operation_id: str) -> Iterator[Progress]:
        """Yields an operation's current state, then every update until the
        final (done) message. One stream, no reattaching."""
        req = pb.WatchOperationRequest(operation_id=operation_id)
        return self._stream(lambda stub: stub.WatchOperation(req, metadata=self._metadata))

    # -- unary calls --------------------------------------------------------

    def status(self, operation_id: str, *, timeout: Timeout = None) -> OperationStatus:
        """An operation's request and latest progress."""
        req = pb.GetStatusRequest(operation_id=operation_id)
        resp = self._unary(lambda stub, t, md: stub.GetStatus(req, timeout=t, metadata=md), timeout)
        if not resp.HasField("operation"):
            raise RpcError(grpc.StatusCode.INTERNAL, "server sent no operation status")
        return OperationStatus.from_proto(resp.operation)

    def prefix_status(
        self, directory_bucket: str, prefixes: Sequence[str], *, timeout: Timeout = None
    ) -> list[PrefixStatus]:
        """How warm each prefix of ``directory_bucket`` is, in request order."""
        req = pb.GetStatusRequest(
            prefixes=pb.PrefixQuery(directory_bucket=directory_bucket, prefixes=prefix_list(prefixes))
        )
        resp = self._unary(lambda stub, t, md: stub.GetStatus(req, timeout=t, metadata=md), timeout)
        return [PrefixStatus.from_proto(p) for p in resp.prefixes]

    def evict(
        self,
        directory_bucket: str,
        prefixes: Sequence[str],
        *,
        force: bool = False,
        timeout: Timeout = None,
    ) -> EvictReport:
        """Ends the leases of ``prefixes`` now and deletes their cached
        objects, except those another live lease still covers (unless
        ``force``). Keys that could not be deleted are in the report."""
        req = pb.EvictRequest(
            directory_bucket=directory_bucket, prefixes=prefix_list(prefixes), force=force
        )
        return EvictReport.from_proto(
            self._unary(lambda stub, t, md: stub.Evict(req, timeout=t, metadata=md), timeout)
        )

    def cancel(self, operation_id: str, *, timeout: Timeout = None) -> OperationStatus:
        """Stops a running warm and returns its final state (CANCELLED); a
        finished operation is returned unchanged."""
        req = pb.CancelOperationRequest(operation_id=operation_id)
        return OperationStatus.from_proto(
            self._unary(
                lambda stub, t, md: stub.CancelOperation(req, timeout=t, metadata=md), timeout
            )
        )

    def list_operations(
        self,
        state: OperationFilter = OperationFilter.ALL,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: Timeout = None,
    ) -> OperationPage:
        """One page of recent operations, newest first. ``page_size``
        1..1000 (0: the server's default, 100); pass the previous page's
        ``next_page_token`` for the next."""
        req = pb.ListOperationsRequest(
            filter=pb.OperationFilter.ValueType(int(state)),
            page_size=page_size,
            page_token=page_token,
        )
        return OperationPage.from_proto(
            self._unary(
                lambda stub, t, md: stub.ListOperations(req, timeout=t, metadata=md), timeout
            )
        )

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Closes the connections; a later call connects again."""
        with self._lock:
            self._connections.close_all()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- connections --------------------------------------------------------

    def _acquire(self) -> _Connection:
        """The current connection, marked in use; if there is none, a new
        one to the first endpoint that answers, from where the last failure
        left off."""
        with self._lock:
            conn = self._connections.current
            if conn is None:
                conn = self._connect()
            conn.users += 1
            return conn

    def _connect(self) -> _Connection:
        failures = []
        for index in self._rotation.order():
            endpoint = self.endpoints[index]
            channel = channels.open_channel(endpoint, self.credentials)
            if channels.wait_ready(channel, self.connect_timeout):
                self._rotation.connected(index)
                return self._connections.add(channel, CacheServiceStub(channel))
            channel.close()
            failures.append(str(endpoint))
        self._rotation.failed()
        raise Unavailable(
            grpc.StatusCode.UNAVAILABLE,
            f"cannot connect to {', '.join(failures)} (connect timeout {self.connect_timeout}s"
            + (
                "; for https://, is ca_cert the CA that signed the server's certificate?)"
                if any(e.tls for e in self.endpoints)
                else ")"
            ),
        )

    def _release(self, conn: _Connection, failed: bool) -> None:
        """Done with ``conn``; if the call on it failed, the next call
        connects anew, starting at the next endpoint."""
        with self._lock:
            if failed:
                self._rotation.failed()
                self._connections.retire(conn)
            conn.users -= 1
            self._connections.close_if_unused(conn)

    def _using(
        self, use: Callable[[CacheServiceStub], T], fails: Callable[[BaseException], bool]
    ) -> T:
        """``use`` on a connection; an error ``fails`` says is the
        connection's fault retires it."""
        conn = self._acquire()
        failed = False
        try:
            return use(conn.stub)
        except BaseException as e:
            failed = fails(e)
            raise
        finally:
            self._release(conn, failed)

    def _cancel_quietly(self, stub: CacheServiceStub, operation_id: str) -> None:
        """Stops a warm a dry run started on a server that ignored dry_run."""
        try:
            stub.CancelOperation(
                pb.CancelOperationRequest(operation_id=operation_id),
                timeout=self.timeout or 30.0,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            log.warning("could not cancel warm %s: %s", operation_id, from_grpc(e))

    def _unary(
        self,
        call: Callable[[CacheServiceStub, float | None, Metadata], T],
        timeout: Timeout,
    ) -> T:
        deadline = seconds(timeout) if timeout is not None else self.timeout

        def use(stub: CacheServiceStub) -> T:
            try:
                return call(stub, deadline, self._metadata)
            except grpc.RpcError as e:
                raise from_grpc(e) from e

        return self._using(use, breaks_connection)

    def _stream(
        self, start: Callable[[CacheServiceStub], Iterator[pb.WarmProgress]]
    ) -> Iterator[Progress]:
        conn = self._acquire()
        failed = False
        try:
            yield from _progress(start(conn.stub))
        except BaseException as e:
            failed = breaks_connection(e)
            raise
        finally:
            self._release(conn, failed)

    def _follow(self, attempt: Callable[[CacheServiceStub], Progress]) -> WarmReport:
        """Runs ``attempt`` until it returns the final progress, reconnecting
        with backoff after retryable failures (to the next endpoint: the one
        that failed may be gone)."""
        backoff = Backoff(self.retry, len(self.endpoints))
        while True:
            try:
                final = self._using(attempt, is_retryable)
                return WarmReport.from_final(final, reconnects=backoff.tries)
            except (RpcError, StreamEnded) as error:
                delay = backoff.next_delay(error)
                if delay is None:
                    raise
                log.warning(
                    "%s; reconnecting (attempt %d/%d)", error, backoff.tries, self.retry.attempts
                )
                time.sleep(delay)


class _Connection:
    """One channel to one endpoint, and how many calls use it."""

    def __init__(self, channel: grpc.Channel, stub: CacheServiceStub) -> None:
        self.channel = channel
        self.stub = stub
        self.users = 0


class _Connections:
    """A client's open connections: the current one, and those retired
    after a failure, each closed once no call uses it any more (another
    thread may still be reading a stream on it)."""

    def __init__(self) -> None:
        self.current: _Connection | None = None
        self.live: set[_Connection] = set()

    def add(self, channel: grpc.Channel, stub: CacheServiceStub) -> _Connection:
        conn = _Connection(channel, stub)
        self.current = conn
        self.live.add(conn)
        return conn

    def retire(self, conn: _Connection) -> None:
        if self.current is conn:
            self.current = None

    def close_if_unused(self, conn: _Connection) -> None:
        if conn is not self.current and conn.users == 0 and conn in self.live:
            self.live.discard(conn)
            conn.channel.close()

    def close_all(self) -> None:
        self.current = None
        conns, self.live = self.live, set()
        for conn in conns:
            conn.channel.close()


def _progress(call: Iterator[pb.WarmProgress]) -> Iterator[Progress]:
    """The messages of a progress stream as :class:`Progress`; grpc errors
    as this package's exceptions. Leaving early cancels the call (the warm
    goes on at the server)."""
    try:
        for message in call:
            yield Progress.from_proto(message)
    except grpc.RpcError as e:
        raise from_grpc(e) from e
    finally:
        if isinstance(call, grpc.RpcContext):
            call.cancel()
