"""The asyncio client (grpc.aio): the blocking client's methods, awaitable."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc
import grpc.aio

from . import channels
from .cache_status import EvictReport, PrefixStatus
from .client import Metadata, Timeout, check_tls, plan_of, seconds
from .credentials import Credentials, Pem
from .endpoints import Rotation, parse_endpoints
from .errors import PlanFailed, RpcError, StreamEnded, Unavailable, from_grpc
from .operations import OperationFilter, OperationPage, OperationStatus
from .plan import WarmPlan
from .progress import Progress, WarmReport
from .retry import Backoff, RetryPolicy, breaks_connection, is_retryable
from .v1 import cache_pb2 as pb
from .v1.cache_pb2_grpc import CacheServiceStub
from .warm_request import WarmRequest, as_dry_run, as_proto_with_id, prefix_list

if TYPE_CHECKING:
    # Only in the typing stubs: at run time CacheServiceStub serves both.
    from .v1.cache_pb2_grpc import CacheServiceAsyncStub

log = logging.getLogger("expresscache")

T = TypeVar("T")


class _ProgressCall(Protocol):
    """A WarmCache or WatchOperation call: a stream of WarmProgress."""

    def __aiter__(self) -> AsyncIterator[pb.WarmProgress]: ...

    def cancel(self) -> bool: ...


OnProgress = Callable[[Progress], "Awaitable[object] | object"]
"""A progress callback: a plain function or a coroutine function."""


class AsyncClient:
    """An asyncio connection to an expresscache server or fleet of replicas.

    Same arguments and methods as :class:`~expresscache.Client`, awaitable.
    Create and use it inside one running event loop (grpc.aio channels
    belong to the loop they were made in); ``async with`` closes it.
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
        self._lock = asyncio.Lock()
        self._connections = _Connections()

    # -- warms --------------------------------------------------------------

    async def warm_and_wait(
        self,
        request: WarmRequest | pb.WarmCacheRequest,
        on_progress: OnProgress | None = None,
    ) -> WarmReport:
        """Submits a warm, calls ``on_progress`` (a function or coroutine
        function) for every update, and returns the final report; reattaches
        after broken connections exactly like ``Client.warm_and_wait``."""
        wire = as_proto_with_id(request)
        operation_id: str | None = None

        async def attempt(stub: CacheServiceAsyncStub) -> Progress:
            nonlocal operation_id
            # Once the operation is known, follow that very operation (see
            # Client.warm_and_wait).
            call: _ProgressCall
            if operation_id is None:
                call = stub.WarmCache(wire, metadata=self._metadata)
            else:
                call = stub.WatchOperation(
                    pb.WatchOperationRequest(operation_id=operation_id), metadata=self._metadata
                )
            async for progress in _progress(call):
                operation_id = progress.operation_id
                await _notify(on_progress, progress)
                if progress.done:
                    return progress
            raise StreamEnded(operation_id or "")

        return await self._follow(attempt)

    async def watch_and_wait(
        self, operation_id: str, on_progress: OnProgress | None = None
    ) -> WarmReport:
        """Follows an operation until it is done, reattaching after broken
        connections."""

        async def attempt(stub: CacheServiceAsyncStub) -> Progress:
            call = stub.WatchOperation(
                pb.WatchOperationRequest(operation_id=operation_id), metadata=self._metadata
            )
            async for progress in _progress(call):
                await _notify(on_progress, progress)
                if progress.done:
                    return progress
            raise StreamEnded(operation_id)

        return await self._follow(attempt)

    def warm(self, request: WarmRequest | pb.WarmCacheRequest) -> AsyncIterator[Progress]:
        """Submits a warm and yields its progress up to the final message.
        One stream, no reattaching."""
        wire = request.to_proto() if isinstance(request, WarmRequest) else request
        return self._stream(lambda stub: stub.WarmCache(wire, metadata=self._metadata))

    async def plan(
        self,
        request: WarmRequest | pb.WarmCacheRequest,
        on_progress: OnProgress | None = None,
    ) -> WarmPlan:
        """Plans ``request`` without warming it (a dry run); see
        ``Client.plan``."""
        wire = as_dry_run(request)

        async def use(stub: CacheServiceAsyncStub) -> WarmPlan:
            async for progress in _progress(stub.WarmCache(wire, metadata=self._metadata)):
                try:
                    plan = plan_of(progress)
                except PlanFailed:
                    if progress.operation_id:
                        await self._cancel_quietly(stub, progress.operation_id)
                    raise
                await _notify(on_progress, progress)
                if plan is not None:
                    return plan
            raise StreamEnded("")

        return await self._using(use, breaks_connection)

    def watch(self, operation_id: str) -> AsyncIterator[Progress]:
        """Yields an operation's current state, then every update until the
        final message. One stream, no reattaching."""
        req = pb.WatchOperationRequest(operation_id=operation_id)
        return self._stream(lambda stub: stub.WatchOperation(req, metadata=self._metadata))

    # -- unary calls --------------------------------------------------------

    async def status(self, operation_id: str, *, timeout: Timeout = None) -> OperationStatus:
        """An operation's request and latest progress."""
        req = pb.GetStatusRequest(operation_id=operation_id)
        resp = await self._unary(
            lambda stub, t, md: stub.GetStatus(req, timeout=t, metadata=md), timeout
        )
        if not resp.HasField("operation"):
            raise RpcError(grpc.StatusCode.INTERNAL, "server sent no operation status")
        return OperationStatus.from_proto(resp.operation)

    async def prefix_status(
        self, directory_bucket: str, prefixes: Sequence[str], *, timeout: Timeout = None
    ) -> list[PrefixStatus]:
        """How warm each prefix of ``directory_bucket`` is, in request order."""
        req = pb.GetStatusRequest(
            prefixes=pb.PrefixQuery(directory_bucket=directory_bucket, prefixes=prefix_list(prefixes))
        )
        resp = await self._unary(
            lambda stub, t, md: stub.GetStatus(req, timeout=t, metadata=md), timeout
        )
        return [PrefixStatus.from_proto(p) for p in resp.prefixes]

    async def evict(
        self,
        directory_bucket: str,
        prefixes: Sequence[str],
        *,
        force: bool = False,
        timeout: Timeout = None,
    ) -> EvictReport:
        """Ends the leases of ``prefixes`` now and deletes their cached
        objects, except those another live lease covers (unless ``force``)."""
        req = pb.EvictRequest(
            directory_bucket=directory_bucket, prefixes=prefix_list(prefixes), force=force
        )
        return EvictReport.from_proto(
            await self._unary(lambda stub, t, md: stub.Evict(req, timeout=t, metadata=md), timeout)
        )

    async def cancel(self, operation_id: str, *, timeout: Timeout = None) -> OperationStatus:
        """Stops a running warm and returns its final state."""
        req = pb.CancelOperationRequest(operation_id=operation_id)
        return OperationStatus.from_proto(
            await self._unary(
                lambda stub, t, md: stub.CancelOperation(req, timeout=t, metadata=md), timeout
            )
        )

    async def list_operations(
        self,
        state: OperationFilter = OperationFilter.ALL,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: Timeout = None,
    ) -> OperationPage:
        """One page of recent operations, newest first."""
        req = pb.ListOperationsRequest(
            filter=pb.OperationFilter.ValueType(int(state)),
            page_size=page_size,
            page_token=page_token,
        )
        return OperationPage.from_proto(
            await self._unary(
                lambda stub, t, md: stub.ListOperations(req, timeout=t, metadata=md), timeout
            )
        )

    # -- lifecycle ----------------------------------------------------------

    async def close(self) -> None:
        """Closes the connections; a later call connects again."""
        async with self._lock:
            await self._connections.close_all()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connections (as in Client) -------------------------------------------

    async def _acquire(self) -> _Connection:
        async with self._lock:
            conn = self._connections.current
            if conn is None:
                conn = await self._connect()
            conn.users += 1
            return conn

    async def _connect(self) -> _Connection:
        failures = []
        for index in self._rotation.order():
            endpoint = self.endpoints[index]
            channel = channels.open_channel_async(endpoint, self.credentials)
            if await channels.wait_ready_async(channel, self.connect_timeout):
                self._rotation.connected(index)
                return self._connections.add(channel, CacheServiceStub(channel))
            await channel.close()
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

    async def _release(self, conn: _Connection, failed: bool) -> None:
        async with self._lock:
            if failed:
                self._rotation.failed()
                self._connections.retire(conn)
            conn.users -= 1
            await self._connections.close_if_unused(conn)

    async def _using(
        self,
        use: Callable[[CacheServiceAsyncStub], Awaitable[T]],
        fails: Callable[[BaseException], bool],
    ) -> T:
        conn = await self._acquire()
        failed = False
        try:
            return await use(conn.stub)
        except BaseException as e:
            failed = fails(e)
            raise
        finally:
            await self._release(conn, failed)

    async def _cancel_quietly(self, stub: CacheServiceAsyncStub, operation_id: str) -> None:
        """Stops a warm a dry run started on a server that ignored dry_run."""
        try:
            await stub.CancelOperation(
                pb.CancelOperationRequest(operation_id=operation_id),
                timeout=self.timeout or 30.0,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            log.warning("could not cancel warm %s: %s", operation_id, from_grpc(e))

    async def _unary(
        self,
        call: Callable[[CacheServiceAsyncStub, float | None, Metadata], Awaitable[T]],
        timeout: Timeout,
    ) -> T:
        deadline = seconds(timeout) if timeout is not None else self.timeout

        async def use(stub: CacheServiceAsyncStub) -> T:
            try:
                return await call(stub, deadline, self._metadata)
            except grpc.RpcError as e:
                raise from_grpc(e) from e

        return await self._using(use, breaks_connection)

    async def _stream(
        self, start: Callable[[CacheServiceAsyncStub], _ProgressCall]
    ) -> AsyncIterator[Progress]:
        conn = await self._acquire()
        failed = False
        try:
            async for progress in _progress(start(conn.stub)):
                yield progress
        except BaseException as e:
            failed = breaks_connection(e)
            raise
        finally:
            await self._release(conn, failed)

    async def _follow(
        self, attempt: Callable[[CacheServiceAsyncStub], Awaitable[Progress]]
    ) -> WarmReport:
        """Runs ``attempt`` until it returns the final progress, reconnecting
        with backoff after retryable failures (see Client._follow)."""
        backoff = Backoff(self.retry, len(self.endpoints))
        while True:
            try:
                final = await self._using(attempt, is_retryable)
                return WarmReport.from_final(final, reconnects=backoff.tries)
            except (RpcError, StreamEnded) as error:
                delay = backoff.next_delay(error)
                if delay is None:
                    raise
                log.warning(
                    "%s; reconnecting (attempt %d/%d)", error, backoff.tries, self.retry.attempts
                )
                await asyncio.sleep(delay)


class _Connection:
    """One channel to one endpoint, and how many calls use it."""

    def __init__(self, channel: grpc.aio.Channel, stub: CacheServiceAsyncStub) -> None:
        self.channel = channel
        self.stub = stub
        self.users = 0


class _Connections:
    """The current connection and those retired after a failure, each
    closed once no call uses it (see client._Connections)."""

    def __init__(self) -> None:
        self.current: _Connection | None = None
        self.live: set[_Connection] = set()

    def add(self, channel: grpc.aio.Channel, stub: CacheServiceAsyncStub) -> _Connection:
        conn = _Connection(channel, stub)
        self.current = conn
        self.live.add(conn)
        return conn

    def retire(self, conn: _Connection) -> None:
        if self.current is conn:
            self.current = None

    async def close_if_unused(self, conn: _Connection) -> None:
        if conn is not self.current and conn.users == 0 and conn in self.live:
            self.live.discard(conn)
            await conn.channel.close()

    async def close_all(self) -> None:
        self.current = None
        conns, self.live = self.live, set()
        for conn in conns:
            await conn.channel.close()


async def _progress(
    call: _ProgressCall,
) -> AsyncIterator[Progress]:
    """The messages of a progress stream as :class:`Progress`; grpc errors
    as this package's exceptions. Leaving early cancels the call."""
    try:
        async for message in call:
            yield Progress.from_proto(message)
    except grpc.RpcError as e:
        raise from_grpc(e) from e
    finally:
        call.cancel()


async def _notify(on_progress: OnProgress | None, progress: Progress) -> None:
    if on_progress is None:
        return
    result = on_progress(progress)
    if inspect.isawaitable(result):
        await result
