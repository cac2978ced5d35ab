"""Nothing is imported or looked up on the file system per HTTP request (issue 24).

httpcore asks `import sniffio` on every request which event loop runs it. Without sniffio
installed, each of those imports failed only after searching every directory of sys.path:
8 % of the operator's CPU in a burst of 1,000 Invitations. Requests go through a real server
on 127.0.0.1; a meta path finder records every module the import system had to look for.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import httpx
import pytest


class _Recorder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.looked_for: list[str] = []

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        self.looked_for.append(fullname)
        return None  # the other finders decide


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_requests_import_nothing(server_url: str) -> None:
    async def requests() -> None:
        async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
            (await client.get("/")).raise_for_status()  # warm: first use may import
            recorder = _Recorder()
            sys.meta_path.insert(0, recorder)
            try:
                for _ in range(3):
                    (await client.get("/")).raise_for_status()
            finally:
                sys.meta_path.remove(recorder)
            assert recorder.looked_for == []

    asyncio.run(requests())
