"""gRPC channels to one endpoint: options, and connecting with a bound.

grpc connects lazily and, once a connection fails, retries on its own with
a backoff of a second or more. To try the next replica promptly (as the Rust
client does with its 5 s connect timeout) a connect here waits until the
channel is READY or has failed, at most ``timeout`` seconds, and a client
makes a fresh channel after a failure instead of waiting for the old one's
backoff.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import grpc.aio

from .credentials import Credentials
from .endpoints import Endpoint

# HTTP/2 keepalive as the Rust client sets it: a peer that vanished (host
# down, network cut) breaks the stream within a minute instead of never,
# also while a long warm sends nothing.
OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]



def open_channel(endpoint: Endpoint, credentials: Credentials) -> grpc.Channel:
    """A channel to ``endpoint``: TLS for ``https://``, plain for ``http://``."""
    if endpoint.tls:
        return grpc.secure_channel(
            endpoint.target, credentials.channel_credentials(), options=OPTIONS
        )
    return grpc.insecure_channel(endpoint.target, options=OPTIONS)


def open_channel_async(endpoint: Endpoint, credentials: Credentials) -> grpc.aio.Channel:
    """As :func:`open_channel`, for asyncio."""
    if endpoint.tls:
        return grpc.aio.secure_channel(
            endpoint.target, credentials.channel_credentials(), options=OPTIONS
        )
    return grpc.aio.insecure_channel(endpoint.target, options=OPTIONS)


_SETTLED = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)


def wait_ready(channel: grpc.Channel, timeout: float) -> bool:
    """Connects ``channel``; whether it is READY within ``timeout`` seconds."""
    settled = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def on_change(state: grpc.ChannelConnectivity) -> None:
        if state in _SETTLED and not settled.is_set():
            states.append(state)
            settled.set()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        return settled.wait(timeout) and states[0] is grpc.ChannelConnectivity.READY
    finally:
        channel.unsubscribe(on_change)


async def wait_ready_async(channel: grpc.aio.Channel, timeout: float) -> bool:
    """Connects ``channel``; whether it is READY within ``timeout`` seconds."""

    async def settle() -> grpc.ChannelConnectivity:
        state = channel.get_state(try_to_connect=True)
        while state not in _SETTLED:
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
        return state

    try:
        state = await asyncio.wait_for(settle(), timeout)
    except asyncio.TimeoutError:
        return False
    return state is grpc.ChannelConnectivity.READY
