"""httpx's transport over the event loop's own connections, a request in one socket write.

httpx's default network backend is anyio's: TLS in Python (anyio's `TLSStream` over a memory
BIO), a cancel scope around every read and write, an attribute map built per lookup. In a
burst's profile those were about a sixth of the operator's samples, most of it the socket write
itself, which stays; measured against the SMTP double's CPU, the operator costs 8-10 % less per
Invitation over this backend and uvloop (issue 24, docs/performance.md). The backend here
uses the running loop's transports and protocols instead: TLS is the loop's (`loop.start_tls`;
under uvloop, which `__main__` runs, its C implementation), a read waits on one future with a
timer, and data arrives through the loop's callbacks without further system calls.

Its streams also keep what is written until the first read (a request is written whole before
its response is read), a TLS upgrade, or `FLUSH_AT` bytes: httpcore hands a request's head and
its body over one after the other, which would be two TLS records and two send() calls. They
raise httpcore's exceptions as its anyio backend does (ConnectError, ConnectTimeout, ReadError,
ReadTimeout, WriteError, WriteTimeout, each from the error that caused it), so httpx and our error
mapping see what they saw before. `coalesced_transport` builds httpx's own transport over it:
the Kubernetes client's (kube_identity.py) and the peers' (providers.peer_http_client).
"""

# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import typing
from collections import deque
from collections.abc import Iterable

import httpcore
import httpx

#: A larger body goes out in parts of about this size, as it is written.
FLUSH_AT = 64 * 1024
#: How long a close waits for the loop to close the socket (one callback, normally at once).
CLOSE_WAIT_SECONDS = 1.0
#: Received and not yet read: above this the loop stops reading the socket until it is read.
READ_BUFFER_LIMIT = 256 * 1024

# httpcore's interface, which takes its timeouts as arguments (hence no ASYNC109 here).
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Receiver(asyncio.Protocol):
    """What the loop delivers for one connection, kept until the stream reads it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.lost: BaseException | None = None  # why the connection broke, if it did
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for data
        self._drain: asyncio.Future[None] | None = None  # a write waiting for the buffer
        self._gone: asyncio.Future[None] | None = None  # a close waiting for the socket's end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > READ_BUFFER_LIMIT and not self.reading_paused:
            self.reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self.eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        self.lost = exc
        for waiter in (self._waiter, self._drain, self._gone):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def taken(self, size: int) -> None:
        self.buffered -= size
        if self.reading_paused and self.buffered <= READ_BUFFER_LIMIT // 2:
            self.reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    async def received(self, timeout: float | None) -> None:
        """Until data, end of stream or loss arrives; TimeoutError after `timeout` seconds."""
        await self._wait("_waiter", timeout)

    async def drained(self, timeout: float | None) -> None:
        """Until the transport's write buffer is below its limit again (or the end)."""
        await self._wait("_drain", timeout)

    async def gone(self, timeout: float) -> None:
        """Until the loop has closed the socket (it does so right after `connection_lost`)."""
        await self._wait("_gone", timeout)

    async def _wait(self, slot: str, timeout: float | None) -> None:
        # A future and a timer, not asyncio.timeout(): this is every response's wait.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        setattr(self, slot, waiter)
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            setattr(self, slot, None)
            if timer is not None:
                timer.cancel()


class _LoopStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, receiver: _Receiver) -> None:
        self._transport = transport
        self._receiver = receiver
        self._pending = bytearray()
        self._timeout: float | None = None
        self._socket: socket.socket | None = transport.get_extra_info("socket")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._pending += buffer
        self._timeout = timeout
        if len(self._pending) >= FLUSH_AT:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        data = bytes(self._pending)
        self._pending.clear()
        receiver = self._receiver
        if receiver.closed or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed") from receiver.lost
        self._transport.write(data)  # sent now as far as the socket takes it, the rest queued
        if receiver.writing_paused:
            try:
                await receiver.drained(self._timeout)
            except TimeoutError as exc:
                raise httpcore.WriteTimeout("writing timed out") from exc
            if receiver.closed:
                raise httpcore.WriteError("the connection closed while writing") from receiver.lost

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush()
        receiver = self._receiver
        if not receiver.chunks and not receiver.eof:
            try:
                await receiver.received(timeout)
            except TimeoutError as exc:
                raise httpcore.ReadTimeout("reading timed out") from exc
        chunks = receiver.chunks
        if not chunks:
            if receiver.lost is not None:
                raise httpcore.ReadError(str(receiver.lost) or "connection lost") from (
                    receiver.lost
                )
            return b""  # the end of the stream, as httpcore expects it
        data = chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        elif chunks and len(data) + len(chunks[0]) <= max_bytes:
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= max_bytes:
                size += len(chunks[0])
                parts.append(chunks.popleft())
            data = b"".join(parts)
        receiver.taken(len(data))
        return data

    async def aclose(self) -> None:
        self._pending.clear()  # a request not written whole was given up
        # What httpcore closes is finished or given up: nothing is left to send, and no TLS
        # close_notify is exchanged (that could wait for the peer up to the loop's shutdown
        # timeout), as with httpcore's anyio backend (TLS not standard_compatible).
        self._transport.abort()
        if not self._receiver.closed:
            # The loop closes the socket in a callback of its own: until then the connection
            # still counts, e.g. a pool retired for a rotated certificate (kube_identity).
            with contextlib.suppress(TimeoutError):
                await self._receiver.gone(CLOSE_WAIT_SECONDS)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await self._flush()  # a proxy's CONNECT, say
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                upgraded = await loop.start_tls(
                    self._transport, self._receiver, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout("the TLS handshake timed out") from exc
        except OSError as exc:  # ssl.SSLError among them: an untrusted certificate, say
            self._transport.abort()
            raise httpcore.ConnectError(str(exc)) from exc
        if upgraded is None:  # only for a transport already closed
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._receiver.transport = upgraded
        return _LoopStream(upgraded, self._receiver)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            # httpcore's pool asks this of each idle connection on every request and response
            # close (readable: the server closed it, or sent what nobody asked for).
            receiver = self._receiver
            if receiver.chunks or receiver.eof:
                return True
            return _readable_or_closed(self._socket)
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._socket
        return None


def _readable_or_closed(sock: socket.socket | None) -> bool:
    # Data or a FIN the loop has not delivered yet (it reads the socket between callbacks).
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class LoopBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend over the running asyncio loop's transports."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        return await _connected(
            loop.create_connection(_Receiver, host, port, local_addr=local),
            timeout,
            socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await _connected(
            loop.create_unix_connection(_Receiver, path), timeout, socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(
    connecting: typing.Awaitable[tuple[asyncio.Transport, _Receiver]],
    timeout: float | None,
    socket_options: Iterable[SocketOption] | None,
) -> _LoopStream:
    try:
        async with asyncio.timeout(timeout):
            transport, receiver = await connecting
    except TimeoutError as exc:  # before OSError: TimeoutError is one
        raise httpcore.ConnectTimeout("connecting timed out") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    try:
        # After the connect, as httpcore's anyio backend sets them.
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
    except OSError as exc:
        transport.abort()
        raise httpcore.ConnectError(str(exc)) from exc
    return _LoopStream(transport, receiver)


def coalesced_transport(
    *,
    verify: ssl.SSLContext | bool = True,
    limits: httpx.Limits | None = None,
    trust_env: bool = False,
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (HTTP/1.1, no proxy of its own) over `LoopBackend`.

    `trust_env` only decides where `verify=True` finds its CAs (SSL_CERT_FILE, SSL_CERT_DIR);
    proxies from the environment are the client's to mount.
    """
    transport = httpx.AsyncHTTPTransport(
        verify=verify, limits=limits or httpx.Limits(), trust_env=trust_env
    )
    # httpx builds its connection pool without a way to pass a backend; the pool makes each
    # connection with the backend it holds, so that one is replaced.
    transport._pool._network_backend = LoopBackend()
    return transport
