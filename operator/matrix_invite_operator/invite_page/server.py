"""`serve-invite-page`: a small read-only HTTP server for the invite page, nothing else.

Serves `/` (the language the browser prefers), `/en/`, `/de/`, the page's two static files and
`/healthz`, from memory, rendered once at startup. It needs no credentials, writes nothing and
reaches nothing: it runs in its own Deployment, so the operator itself stays unreachable.

Every answer carries a Content-Security-Policy without inline script (the page's one script is a
file of its own, and it may fetch nothing), `Referrer-Policy: no-referrer`, and, for the pages,
whose URLs carry the token in the fragment, `Cache-Control: no-store`. Request lines reach the
access log, which is safe: browsers never send the fragment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from .page import STATIC_FILES, InvitePage, negotiate_locale

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
}
NO_STORE = "no-store"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
STATIC_CACHE = "public, max-age=3600"


class InvitePageHandler(BaseHTTPRequestHandler):
    """GET and HEAD only; the page and its files are bytes in memory."""

    page: ClassVar[InvitePage]
    server_version = "matrix-invite-page"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        page = self.page
        if path == "/":
            locale = negotiate_locale(self.headers.get("Accept-Language"), page.default_locale)
            self._send(
                HTTPStatus.OK,
                HTML,
                page.pages[locale],
                send_body,
                cache=NO_STORE,
                vary="Accept-Language",
                language=locale,
            )
            return
        for locale, body in page.pages.items():
            if path == f"/{locale}/":
                self._send(HTTPStatus.OK, HTML, body, send_body, cache=NO_STORE, language=locale)
                return
        name = path.removeprefix("/static/")
        if name != path and name in STATIC_FILES:
            self._send(
                HTTPStatus.OK, STATIC_FILES[name], page.static[name], send_body, cache=STATIC_CACHE
            )
        elif path == "/healthz":
            self._send(HTTPStatus.OK, TEXT, b"ok\n", send_body, cache=NO_STORE)
        else:
            self._send(HTTPStatus.NOT_FOUND, TEXT, b"not found\n", send_body, cache=NO_STORE)

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes,
        send_body: bool,
        *,
        cache: str,
        vary: str | None = None,
        language: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        if vary:
            self.send_header("Vary", vary)
        if language:
            self.send_header("Content-Language", language)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _refuse(self) -> None:
        body = b"method not allowed\n"
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", TEXT)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", NO_STORE)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: object) -> None:
        logger.info("%s %s", self.address_string(), format % args)


class InvitePageServer(ThreadingHTTPServer):
    daemon_threads = True


def make_server(page: InvitePage, host: str, port: int) -> InvitePageServer:
    """A server for `page` bound to host:port (port 0: a free one), not yet serving."""
    handler = type("BoundInvitePageHandler", (InvitePageHandler,), {"page": page})
    return InvitePageServer((host, port), handler)


def serve_in_thread(server: InvitePageServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="invite-page", daemon=True)
    thread.start()
    return thread
