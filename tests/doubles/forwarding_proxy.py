"""A plain-HTTP proxy on 127.0.0.1 in front of a real server (the API server, the MAS double).

Tests point one operator's kubeconfig or MAS URL at it to see what that operator sends (every
request is recorded: method and path) and to break one exact answer the real server would only
give by chance: `answer_once` replaces the answer to the first request a predicate picks,
`rewrite_once` alters one request's path before it goes upstream, and `hang` takes the requests a
predicate picks and never answers them (a server that accepts the connection and stops).
Everything else, watch streams included, is passed through as it comes (chunk by chunk), with
the client's own credentials.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.doubles.loopback_server import LoopbackHttpServer

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}
)

PathPredicate = Callable[[str, str], bool]  # (method, path) -> whether this request is meant


@dataclass(frozen=True)
class ProxiedRequest:
    method: str
    path: str

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


class ForwardingProxy(LoopbackHttpServer):
    """`with ForwardingProxy("https://127.0.0.1:6443") as proxy: ... proxy.url ...`"""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        self._upstream_tls = parts.scheme == "https"
        self._upstream_host = parts.hostname or "127.0.0.1"
        self._upstream_port = parts.port or (443 if self._upstream_tls else 80)
        self._lock = threading.Lock()
        self._requests: list[ProxiedRequest] = []
        self._answers: list[tuple[PathPredicate, int, dict[str, Any]]] = []
        self._rewrites: list[tuple[PathPredicate, Callable[[str], str]]] = []
        self._hangs: list[PathPredicate] = []
        self._stopping = threading.Event()
        self.held: list[ProxiedRequest] = []  # requests taken and never answered
        self.answered: list[ProxiedRequest] = []  # requests that got a replaced answer
        super().__init__(self._handler_class(), host=host, name="forwarding-proxy")

    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._requests)

    def answer_once(
        self, meant: PathPredicate, status: int, body: dict[str, Any], *, times: int = 1
    ) -> None:
        """The first `times` requests `meant` picks get this answer; upstream never sees them."""
        with self._lock:
            self._answers.extend((meant, status, body) for _ in range(times))

    def rewrite_once(self, meant: PathPredicate, rewrite: Callable[[str], str]) -> None:
        """The first request `meant` picks goes upstream with its path rewritten."""
        with self._lock:
            self._rewrites.append((meant, rewrite))

    def hang(self, meant: PathPredicate) -> None:
        """From now on, requests `meant` picks are read and never answered, until `stop`."""
        with self._lock:
            self._hangs.append(meant)

    def stop(self) -> None:
        self._stopping.set()  # lets the held requests' threads end
        super().stop()

    def _holds(self, method: str, path: str) -> bool:
        with self._lock:
            held = any(meant(method, path) for meant in self._hangs)
            if held:
                self.held.append(ProxiedRequest(method, path))
            return held

    def _take(self, method: str, path: str) -> tuple[str, tuple[int, dict[str, Any]] | None]:
        with self._lock:
            self._requests.append(ProxiedRequest(method, path))
            for index, (meant, status, body) in enumerate(self._answers):
                if meant(method, path):
                    del self._answers[index]
                    self.answered.append(ProxiedRequest(method, path))
                    return path, (status, body)
            for index, (meant, rewrite) in enumerate(self._rewrites):
                if meant(method, path):
                    del self._rewrites[index]
                    return rewrite(path), None
        return path, None

    def _connect(self) -> http.client.HTTPConnection:
        if self._upstream_tls:
            # Loopback to the tests' own API server; the operator's side is what is under test.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(
                self._upstream_host, self._upstream_port, context=context, timeout=600
            )
        return http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=600)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else None
                if proxy._holds(self.command, self.path):
                    proxy._stopping.wait(timeout=600)
                    self.close_connection = True
                    return
                path, replaced = proxy._take(self.command, self.path)
                if replaced is not None:
                    status, body = replaced
                    raw = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                upstream = proxy._connect()
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, path, body=payload, headers=headers)
                    answer = upstream.getresponse()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while chunk := answer.read1(65536):
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (OSError, http.client.HTTPException):
                    # Either side went away (a killed operator, a watch cut at shutdown).
                    self.close_connection = True
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: `requests()` is the log."""

        return Handler
