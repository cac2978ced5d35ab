"""A stand-in for the Kubernetes API that only counts: every request is recorded, every write OK.

For measuring what a sync pass writes (`bench/sync_cost.py`, `tests/contract/test_sync_cost.py`):
the operator's own `KubeApi` talks plain HTTP to it, so each status patch and each Event it would
send to a real API server shows up here, with its JSON body, and nothing is patched in. It serves
reads only of the objects put into `objects` (by path; 404 otherwise), and records them too, so a
code path that reads Kubernetes during a pass shows up as well.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.doubles.loopback_server import LoopbackHttpServer

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class KubeRequest:
    method: str
    path: str
    content_type: str | None
    body: Any

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS

    @property
    def is_status_patch(self) -> bool:
        return self.method == "PATCH" and self.path.endswith("/status")

    @property
    def is_read(self) -> bool:
        return self.method == "GET"

    @property
    def is_event(self) -> bool:
        return self.method == "POST" and self.path.endswith("/events")


class KubeRecorder(LoopbackHttpServer):
    """`with KubeRecorder() as kube: KubeApi(httpx.AsyncClient(base_url=kube.url))`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self._requests: list[KubeRequest] = []
        self.objects: dict[str, Any] = {}  # path -> body, answered to GET
        super().__init__(self._handler_class(), host=host, name="kube-recorder")

    def requests(self) -> list[KubeRequest]:
        with self._lock:
            return list(self._requests)

    def writes(self) -> list[KubeRequest]:
        return [r for r in self.requests() if r.is_write]

    def status_patches(self) -> list[KubeRequest]:
        return [r for r in self.requests() if r.is_status_patch]

    def events(self) -> list[KubeRequest]:
        return [r for r in self.requests() if r.is_event]

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: KubeRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                recorder._record(
                    KubeRequest(self.command, self.path, self.headers.get("Content-Type"), body)
                )
                stored = recorder.objects.get(self.path) if self.command == "GET" else None
                found = self.command in WRITE_METHODS or stored is not None
                answer = json.dumps(
                    stored or {} if found else {"kind": "Status", "status": "Failure", "code": 404}
                ).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the recorder is the log."""

        return Handler
