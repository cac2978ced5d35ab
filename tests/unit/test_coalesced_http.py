"""coalesced_http: httpx over the loop's own connections, through real sockets on 127.0.0.1.

Every test runs on asyncio's loop and on uvloop's (the operator's, `__main__.run_in_loop`).

A request leaves in one TLS record: a TLS server answers HTTP/1.1 requests; between it and the
client a TCP relay reads the client's TLS records (their 5-byte headers are plain text) and
counts the application-data ones. TLS 1.2, so that the handshake's own records are not
application data. httpx's plain transport sends a request with a body as two records (head,
body); ours as one. The failures (refused, peer closes, timeouts, an untrusted certificate)
surface as the httpx exceptions httpx's own backend raises, with the cause our error mapping
looks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
import pytest
import uvloop
from matrix_invite_operator.backends.transport import no_answer
from matrix_invite_operator.coalesced_http import (
    FLUSH_AT,
    READ_BUFFER_LIMIT,
    LoopBackend,
    coalesced_transport,
)
from matrix_invite_operator.errors import BackendTlsError
from matrix_invite_operator.providers import peer_http_client
from matrix_invite_operator.settings import Settings

from tests.doubles.smtp import Certificates, make_certificates

APPLICATION_DATA = 0x17
T = TypeVar("T")

Run = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Runs a scenario to its end in a new loop of the kind the test is parametrised with."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def run_on_loop(scenario: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(scenario, 30))

    return run_on_loop


@dataclass
class Relay:
    port: int = 0
    records: list[int] = field(default_factory=list)  # each client record's content type

    def application_data(self) -> int:
        return self.records.count(APPLICATION_DATA)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive: each request's body length, back as the answer."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while head := await reader.readuntil(b"\r\n\r\n"):
            lines = head.decode().split("\r\n")
            length = next(
                (int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length")), 0
            )
            body = await reader.readexactly(length)
            answer = str(len(body)).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
    writer.close()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, records: list[int] | None
) -> None:
    buffered = b""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if records is None:
                continue
            buffered += data
            while len(buffered) >= 5 and len(buffered) >= 5 + int.from_bytes(buffered[3:5]):
                records.append(buffered[0])
                buffered = buffered[5 + int.from_bytes(buffered[3:5]) :]
    writer.close()


@contextlib.asynccontextmanager
async def tls_server_behind_relay(certificates: Certificates) -> AsyncIterator[Relay]:
    context = certificates.server_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    server = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=context)
    server_port = server.sockets[0].getsockname()[1]
    relay = Relay()

    async def relay_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", server_port)
        await asyncio.gather(
            _pump(reader, upstream_writer, relay.records), _pump(upstream_reader, writer, None)
        )

    relay_server = await asyncio.start_server(relay_one, "127.0.0.1", 0)
    relay.port = relay_server.sockets[0].getsockname()[1]
    async with server, relay_server:
        yield relay


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(Path(tmp_path_factory.mktemp("coalesced")), ca_name="coalesced CA")


async def _send_three(transport: httpx.AsyncHTTPTransport, relay: Relay) -> list[str]:
    async with httpx.AsyncClient(
        transport=transport, base_url=f"https://127.0.0.1:{relay.port}", timeout=10
    ) as client:
        answers = [
            (await client.patch("/a", json={"status": {"phase": "Sent"}})).text,
            (await client.post("/b", content=b"x" * 1000)).text,
            (await client.get("/c")).text,
        ]
    await asyncio.sleep(0.1)  # the relay has counted what it forwarded
    return answers


def _trusting(certificates: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates.ca_path))


def _ours(certificates: Certificates | None = None) -> httpx.AsyncHTTPTransport:
    return coalesced_transport(verify=_trusting(certificates) if certificates else True)


def _httpx_own(certificates: Certificates | None = None) -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(verify=_trusting(certificates) if certificates else True)


def test_a_request_with_a_body_is_one_record_not_two(
    run: Run[Any], certificates: Certificates
) -> None:
    async def records_of(transport: httpx.AsyncHTTPTransport) -> tuple[list[str], int]:
        async with tls_server_behind_relay(certificates) as relay:
            answers = await _send_three(transport, relay)
        return answers, relay.application_data()

    assert run(records_of(_ours(certificates))) == (["27", "1000", "0"], 3)
    # The same requests through httpx's own transport: head and body apart (the test can fail).
    assert run(records_of(_httpx_own(certificates))) == (["27", "1000", "0"], 5)


def test_a_large_body_goes_out_in_parts_and_arrives_whole(
    run: Run[Any], certificates: Certificates
) -> None:
    size = 3 * FLUSH_AT + 123

    async def scenario() -> tuple[str, str]:
        async with (
            tls_server_behind_relay(certificates) as relay,
            httpx.AsyncClient(transport=_ours(certificates), timeout=10) as client,
        ):
            url = f"https://127.0.0.1:{relay.port}/big"
            answer = await client.post(url, content=b"y" * size)
            again = await client.post(url, content=b"z" * 10)  # the connection is reused
        return answer.text, again.text

    assert run(scenario()) == (str(size), "10")


def test_an_untrusted_certificate_is_our_tls_error(
    run: Run[Any], tmp_path: Path, certificates: Certificates
) -> None:
    stranger = make_certificates(tmp_path / "other", ca_name="another CA")

    async def scenario() -> None:
        async with (
            tls_server_behind_relay(certificates) as relay,
            httpx.AsyncClient(transport=_ours(stranger), timeout=10) as client,
        ):
            await client.get(f"https://127.0.0.1:{relay.port}/")

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        run(scenario())
    # The verification error is the cause the backends look for: BackendTlsError, Stalled.
    with pytest.raises(BackendTlsError, match="certificate we do not trust"):
        no_answer(caught.value, backend="MAS", what="the test", ca_setting="THE_CA_SETTING")


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    run: Run[Any], certificates: Certificates
) -> None:
    """The pool's idle check (a closed connection reads as readable) still works: a request
    sent on a connection the server has closed would fail with "Server disconnected"."""

    async def scenario() -> tuple[str, str, int]:
        context = certificates.server_context()
        connections = 0

        async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(0.05)  # the client has read the answer: its connection idles
            writer.close()  # keep-alive promised, then closed: an idle timeout, a restart

        server = await asyncio.start_server(once, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx.AsyncClient(transport=_ours(certificates), timeout=10) as client:
            first = await client.get(f"https://127.0.0.1:{port}/")
            await asyncio.sleep(0.2)
            second = await client.get(f"https://127.0.0.1:{port}/")
        return first.text, second.text, connections

    assert run(scenario()) == ("ok", "ok", 2)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def _fails_with(
    transport: httpx.AsyncHTTPTransport,
    handler: Handler,
    *,
    timeouts: httpx.Timeout,
    certificates: Certificates | None = None,
    content: bytes | None = None,
) -> httpx.TransportError:
    """What a request to a server acting as `handler` raises (the test fails if it succeeds)."""
    context = certificates.server_context() if certificates else None
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if certificates else "http"
    async with server, httpx.AsyncClient(transport=transport, timeout=timeouts) as client:
        try:
            response = await client.post(f"{scheme}://127.0.0.1:{port}/", content=content or b"{}")
        except httpx.TransportError as exc:
            return exc
    raise AssertionError(f"answered {response.status_code}")


async def _read_request(reader: asyncio.StreamReader) -> None:
    """All of it: a socket closed with unread data resets the connection instead."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)


async def _closes_after_the_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await _read_request(reader)
    writer.transport.abort()  # no answer, no close_notify: a FIN


async def _closes_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    await writer.drain()
    writer.transport.abort()


async def _resets_after_the_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await _read_request(reader)
    linger_zero = struct.pack("ii", 1, 0)  # close() sends a reset
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
    writer.transport.abort()


async def _never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(5)


async def _never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)  # its stream stops reading the socket once its buffer is full


# Below the peers' 5 s of silence, so those time out; above what a TLS handshake and an answer
# take on a loaded machine (0.3 s let httpx's own transport time out a handshake in a CI run).
QUICK = httpx.Timeout(10, connect=2.0, read=1.0, write=1.0)
CLOSED = (httpx.RemoteProtocolError,)  # "Server disconnected", "peer closed connection"
RESET = (httpx.ReadError,)


@pytest.mark.parametrize(
    ("handler", "tls", "content", "expected"),
    [
        (_closes_after_the_request, False, None, CLOSED),
        (_closes_after_the_request, True, None, CLOSED),
        (_closes_mid_body, False, None, CLOSED),
        (_closes_mid_body, True, None, CLOSED),
        (_resets_after_the_request, False, None, RESET),
        (_resets_after_the_request, True, None, RESET),
        (_never_answers, False, None, (httpx.ReadTimeout,)),
        (_never_answers, True, None, (httpx.ReadTimeout,)),
        (_never_reads, False, b"w" * (64 << 20), (httpx.WriteTimeout,)),
    ],
    ids=[
        "peer-closes-before-answering",
        "peer-closes-before-answering-tls",
        "peer-closes-mid-body",
        "peer-closes-mid-body-tls",
        "peer-resets",
        "peer-resets-tls",
        "read-timeout",
        "read-timeout-tls",
        "write-timeout",
    ],
)
def test_a_failing_peer_raises_what_httpx_own_transport_raises(
    run: Run[Any],
    certificates: Certificates,
    handler: Handler,
    tls: bool,
    content: bytes | None,
    expected: tuple[type[httpx.TransportError], ...],
) -> None:
    certs = certificates if tls else None

    async def both() -> tuple[httpx.TransportError, httpx.TransportError]:
        ours = await _fails_with(
            _ours(certs), handler, timeouts=QUICK, certificates=certs, content=content
        )
        theirs = await _fails_with(
            _httpx_own(certs), handler, timeouts=QUICK, certificates=certs, content=content
        )
        return ours, theirs

    ours, theirs = run(both())
    assert type(ours) is type(theirs)
    assert type(ours) in expected


def _chain(exc: BaseException) -> list[type[BaseException]]:
    """The types of an error and what led to it (httpcore's pool keeps it as the context)."""
    seen: list[type[BaseException]] = []
    cause: BaseException | None = exc
    while cause is not None:
        seen.append(type(cause))
        cause = cause.__cause__ or cause.__context__
    return seen


def test_a_refused_connection_is_a_connect_error(run: Run[Any]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=_ours(), timeout=QUICK) as client:
            await client.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(httpx.ConnectError) as caught:
        run(scenario())
    assert ConnectionRefusedError in _chain(caught.value)
    # Never sent: a MAS create that failed so is known not to have happened.
    answer = no_answer(caught.value, backend="MAS", what="the test", ca_setting="THE_CA_SETTING")
    assert not answer.may_have_taken_effect


def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(
    run: Run[Any], certificates: Certificates
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # a plain TCP server: the client's hello gets no answer

    async def scenario() -> httpx.TransportError:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with (
            server,
            httpx.AsyncClient(transport=_ours(certificates), timeout=QUICK) as client,
        ):
            try:
                await client.get(f"https://127.0.0.1:{port}/")
            except httpx.TransportError as exc:
                return exc
        raise AssertionError("answered")

    assert type(run(scenario())) is httpx.ConnectTimeout


def test_a_large_answer_read_late_arrives_whole(run: Run[Any], certificates: Certificates) -> None:
    """More than `READ_BUFFER_LIMIT` arrives before it is read: the loop stops reading the
    socket, and reads on once the stream has taken enough (a stalled answer would time out)."""
    body = bytes(range(256)) * (4 * READ_BUFFER_LIMIT // 256)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await reader.read()  # until the client closes

    async def scenario() -> bytes:
        server = await asyncio.start_server(big, "127.0.0.1", 0, ssl=certificates.server_context())
        port = server.sockets[0].getsockname()[1]
        async with (
            server,
            httpx.AsyncClient(transport=_ours(certificates), timeout=QUICK) as client,
            client.stream("GET", f"https://127.0.0.1:{port}/") as response,
        ):
            await asyncio.sleep(0.5)  # everything the socket takes arrives meanwhile
            return await response.aread()

    assert run(scenario()) == body


def test_what_httpcore_asks_of_a_connection(run: Run[Any], certificates: Certificates) -> None:
    """Socket options are set, the stream names its addresses and its TLS session, and a
    closed pool's socket is closed when the close returns (not in a later loop callback)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async def scenario() -> tuple[object, ...]:
        server = await asyncio.start_server(
            answer, "127.0.0.1", 0, ssl=certificates.server_context()
        )
        port: int = server.sockets[0].getsockname()[1]
        async with server:
            pool = httpcore.AsyncConnectionPool(
                ssl_context=_trusting(certificates),
                network_backend=LoopBackend(),
                socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)],
            )
            response = await pool.request("GET", f"https://127.0.0.1:{port}/")
            stream = response.extensions["network_stream"]
            sock = stream.get_extra_info("socket")
            seen = (
                response.content,
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                stream.get_extra_info("server_addr") == ("127.0.0.1", port),
                stream.get_extra_info("client_addr")[0],
                stream.get_extra_info("ssl_object").version().startswith("TLS"),
                stream.get_extra_info("is_readable"),
            )
            await pool.aclose()
            return (*seen, sock.fileno())

    # Idle and nothing sent since: not readable (readable would retire the connection).
    assert run(scenario()) == (b"ok", 1, True, "127.0.0.1", True, False, -1)


def test_a_unix_socket(run: Run[Any], tmp_path: Path) -> None:
    path = tmp_path / "http.sock"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nunix")
        await writer.drain()
        await reader.read()

    async def scenario() -> bytes:
        server = await asyncio.start_unix_server(answer, str(path))
        async with (
            server,
            httpcore.AsyncConnectionPool(uds=str(path), network_backend=LoopBackend()) as pool,
        ):
            response = await pool.request("GET", "http://localhost/")
            return response.content

    assert run(scenario()) == b"unix"


def test_the_peers_client_still_goes_through_a_proxy_the_environment_names(
    run: Run[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peers' clients (MAS, Synapse, authentik) use our transport only when no proxy is
    configured: httpx honours HTTP(S)_PROXY only with its own. A proxy and a server on
    127.0.0.1 each answer who they are."""

    def answering(who: bytes) -> Handler:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(who), who))
            await writer.drain()
            await reader.read()

        return answer

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def who_answers() -> str:
        server = await asyncio.start_server(answering(b"server"), "127.0.0.1", 0)
        proxy = await asyncio.start_server(answering(b"proxy"), "127.0.0.1", 0)
        async with server, proxy:
            monkeypatch.setenv(
                "HTTP_PROXY", f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
            )
            if not proxied:
                monkeypatch.delenv("HTTP_PROXY")
                monkeypatch.delenv("http_proxy", raising=False)
            async with peer_http_client(Settings(), ca_bundle=None) as client:
                url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
                return (await client.get(url)).text

    proxied = True
    assert run(who_answers()) == "proxy"
    proxied = False
    assert run(who_answers()) == "server"
