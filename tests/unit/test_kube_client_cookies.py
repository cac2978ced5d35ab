"""The Kubernetes client keeps no cookies: the API server sets none, and looking for them in
every answer cost 2 % of the operator's CPU in a burst. Through a TLS socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import yaml
from matrix_invite_operator.kube import kube_http_client
from matrix_invite_operator.kube_identity import KubeLogin, KubeTransport

from tests.doubles.smtp import make_certificates


@contextlib.asynccontextmanager
async def cookie_setting_server(tmp_path: Path) -> AsyncIterator[tuple[int, list[str], Path]]:
    """HTTPS on 127.0.0.1 that sets a cookie on each answer and keeps each request's head."""
    certificates = make_certificates(tmp_path / "tls", ca_name="cookie test CA")
    heads: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                heads.append(head.decode())
                writer.write(
                    b"HTTP/1.1 200 OK\r\nSet-Cookie: affinity=node-1; Path=/\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=certificates.server_context())
    async with server:
        yield server.sockets[0].getsockname()[1], heads, certificates.ca_path


def _kubeconfig(path: Path, port: int, ca_path: Path) -> Path:
    cluster = {"server": f"https://127.0.0.1:{port}", "certificate-authority": str(ca_path)}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "ctx",
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    return path


def _cookies_sent(heads: list[str]) -> list[str]:
    return [
        line for head in heads for line in head.split("\r\n") if line.lower().startswith("cookie")
    ]


async def test_a_cookie_the_server_sets_is_not_sent_back(tmp_path: Path) -> None:
    async with cookie_setting_server(tmp_path) as (port, heads, ca_path):
        login = KubeLogin(kubeconfig=_kubeconfig(tmp_path / "config", port, ca_path), environ={})
        client = await kube_http_client(login)
        async with client:
            answers = [(await client.get("/api")).json(), (await client.get("/api")).json()]
        assert answers == [{}, {}]
        assert len(heads) == 2
        assert _cookies_sent(heads) == []

        # httpx's own client keeps it and sends it back (the check can fail).
        heads.clear()
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", transport=KubeTransport(login)
        ) as plain:
            await plain.get("/api")
            await plain.get("/api")
        assert _cookies_sent(heads) == ["Cookie: affinity=node-1"]
