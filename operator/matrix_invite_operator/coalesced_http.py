"""An httpx transport whose HTTP/1.1 requests leave in one socket write, not two.

httpcore hands a request's head and its body to the socket one after the other: two TLS
records and two send() calls per PATCH or POST, each a system call whose loopback delivery
(the peer's TCP receive, its wake-up) runs on the sender's CPU. In a burst that was a tenth of
the operator's CPU (issue 24, docs/performance.md). `coalesced_transport` is httpx's own
transport over a network backend whose streams keep what is written until the first read (a
request is written whole before its response is read), a TLS upgrade, or `FLUSH_AT` bytes;
they also answer the pool's "has the server closed it?" without anyio's attribute lookup.
"""

# ruff: noqa: ASYNC109
from __future__ import annotations

import select
import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore
import httpx

#: A larger body goes out in parts of about this size, as it is written.
FLUSH_AT = 64 * 1024

# httpcore's interface, which takes its timeouts as arguments (hence no ASYNC109 here).
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _CoalescingStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._pending = bytearray()
        self._timeout: float | None = None
        self._socket: socket.socket | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._pending += buffer
        self._timeout = timeout
        if len(self._pending) >= FLUSH_AT:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            await self._stream.write(data, timeout=self._timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush()
        return await self._stream.read(max_bytes, timeout=timeout)

    async def aclose(self) -> None:
        self._pending.clear()  # a request not written whole was given up
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await self._flush()  # a proxy's CONNECT, say
        upgraded = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _CoalescingStream(upgraded)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            # httpcore's pool asks this of each idle connection on every request and response
            # close (readable: the server closed it). anyio builds the map of all of a TLS
            # stream's attributes for every lookup, so the socket is looked up once.
            if self._socket is None:
                self._socket = self._stream.get_extra_info("socket")
            return _readable_or_closed(self._socket)
        return self._stream.get_extra_info(info)


def _readable_or_closed(sock: socket.socket | None) -> bool:
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _CoalescingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CoalescingStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(path, timeout, socket_options)
        return _CoalescingStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def coalesced_transport(
    *, verify: ssl.SSLContext | bool = True, limits: httpx.Limits | None = None
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (HTTP/1.1, no proxy from the environment), writing once per request."""
    transport = httpx.AsyncHTTPTransport(
        verify=verify, limits=limits or httpx.Limits(), trust_env=False
    )
    # httpx builds its connection pool without a way to pass a backend; the pool makes each
    # connection with the backend it holds, so the one it was given is wrapped.
    pool = transport._pool
    pool._network_backend = _CoalescingBackend(pool._network_backend)
    return transport
