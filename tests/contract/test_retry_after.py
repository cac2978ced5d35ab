"""Retry-After, read by one parser (`formats.retry_after_seconds`) for MAS, Synapse and the
Kubernetes API: delta seconds or an HTTP date (RFC 9110), bounded (issue 21, defect 4).

The Kubernetes client once read the header with `float()`, and an API server (or a proxy in
front of it) answering 429 with an HTTP date crashed the step instead of pacing it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from matrix_invite_operator.errors import KubeUnavailable
from matrix_invite_operator.formats import RETRY_AFTER_BOUNDS, retry_after_seconds
from matrix_invite_operator.kube import KubeApi

from tests.doubles.loopback_server import LoopbackHttpServer

NOW = dt.datetime(2026, 12, 6, 2, 30, tzinfo=dt.UTC)


def http_date(moment: dt.datetime) -> str:
    return email.utils.format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 42 ", 42.0),
        ("0", RETRY_AFTER_BOUNDS[0]),
        ("999999", RETRY_AFTER_BOUNDS[1]),
        (http_date(NOW + dt.timedelta(seconds=90)), 90.0),
        (http_date(NOW - dt.timedelta(days=1)), RETRY_AFTER_BOUNDS[0]),
        ("Sun, 06 Dec 2026 02:32:00", 120.0),  # no zone: an HTTP date is GMT
        ("soon", 5.0),
        ("-3", 5.0),
        ("", 5.0),
        (None, 5.0),
    ],
)
def test_delta_seconds_or_an_http_date(header: str | None, seconds: float) -> None:
    assert retry_after_seconds(header, 5.0, now=NOW) == seconds


class _Throttling(BaseHTTPRequestHandler):
    """An API server (or its proxy) that throttles everything with an HTTP-date Retry-After."""

    def do_GET(self) -> None:
        body = b'{"kind":"Status","code":429,"message":"too many requests"}'
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
        self.send_header("Retry-After", http_date(later))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_the_kubernetes_client_reads_an_http_date() -> None:
    async def ask(url: str) -> KubeUnavailable:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(5.0)) as http:
            with pytest.raises(KubeUnavailable) as raised:
                await KubeApi(http).get_invitation("invites", "ada")
            return raised.value

    with LoopbackHttpServer(_Throttling, host="127.0.0.1", name="throttling") as server:
        error = asyncio.run(ask(server.url))
    assert 80 <= error.retry_after <= 90
