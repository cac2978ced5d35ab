"""coalesced_http: a request leaves in one TLS record, through real sockets.

A TLS server on 127.0.0.1 answers HTTP/1.1 requests; between it and the client a TCP relay reads
the client's TLS records (their 5-byte headers are plain text) and counts the application-data
ones. TLS 1.2, so that the handshake's own records are not application data. httpx's plain
transport sends a request with a body as two records (head, body); ours as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from matrix_invite_operator.coalesced_http import FLUSH_AT, coalesced_transport

from tests.doubles.smtp import Certificates, make_certificates

APPLICATION_DATA = 0x17


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


async def test_a_request_with_a_body_is_one_record_not_two(certificates: Certificates) -> None:
    async with tls_server_behind_relay(certificates) as relay:
        answers = await _send_three(coalesced_transport(verify=_trusting(certificates)), relay)
    assert answers == ["27", "1000", "0"]
    assert relay.application_data() == 3

    # The same requests through httpx's own transport: head and body apart (the test can fail).
    async with tls_server_behind_relay(certificates) as relay:
        plain = httpx.AsyncHTTPTransport(verify=_trusting(certificates))
        assert await _send_three(plain, relay) == ["27", "1000", "0"]
    assert relay.application_data() == 5


async def test_a_large_body_goes_out_in_parts_and_arrives_whole(
    certificates: Certificates,
) -> None:
    size = 3 * FLUSH_AT + 123
    async with tls_server_behind_relay(certificates) as relay:
        transport = coalesced_transport(verify=_trusting(certificates))
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            url = f"https://127.0.0.1:{relay.port}/big"
            answer = await client.post(url, content=b"y" * size)
            again = await client.post(url, content=b"z" * 10)  # the connection is reused
    assert (answer.text, again.text) == (str(size), "10")


async def test_the_certificate_is_still_verified(
    tmp_path: Path, certificates: Certificates
) -> None:
    stranger = make_certificates(tmp_path / "other", ca_name="another CA")
    async with tls_server_behind_relay(certificates) as relay:
        transport = coalesced_transport(verify=_trusting(stranger))
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://127.0.0.1:{relay.port}/")


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    certificates: Certificates,
) -> None:
    """The pool's idle check (a closed connection reads as readable) still works: a request
    sent on a connection the server has closed would fail with "Server disconnected"."""
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
    async with server:
        transport = coalesced_transport(verify=_trusting(certificates))
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            first = await client.get(f"https://127.0.0.1:{port}/")
            await asyncio.sleep(0.2)
            second = await client.get(f"https://127.0.0.1:{port}/")
    assert (first.text, second.text, connections) == ("ok", "ok", 2)
