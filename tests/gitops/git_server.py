"""A Git repository on 127.0.0.1 that Flux's source-controller can clone, and commits into it.

Owns a bare repository served with git's smart HTTP protocol (the Go git library Flux uses does
not speak the "dumb" protocol, and ``git://`` is rejected by GitRepository's URL pattern), and a
working clone that tests commit to. The server is ``git http-backend``, the CGI program that
ships with git, behind a small standard-library HTTP server in a thread; each request runs one
``git http-backend`` process, bounded by a timeout. Only fetching is served: commits reach the
bare repository by a local push, never over HTTP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
BRANCH = "main"
REPOSITORY = "repo.git"
CGI_TIMEOUT_SECONDS = 60
GIT_TIMEOUT_SECONDS = 30
# Requests remembered for a failure report: a setup fetches a handful, a long test a few hundred.
LOG_LINES = 400
COMMITTER = {
    "GIT_AUTHOR_NAME": "GitOps Test",
    "GIT_AUTHOR_EMAIL": "gitops@example.org",
    "GIT_COMMITTER_NAME": "GitOps Test",
    "GIT_COMMITTER_EMAIL": "gitops@example.org",
}


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **COMMITTER, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


class _SmartHttpHandler(BaseHTTPRequestHandler):
    """Translates one HTTP request into a ``git http-backend`` CGI run (RFC 3875)."""

    server: _GitHttpServer

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def log_message(self, format: str, *args: object) -> None:
        # Into the bounded log, not stderr: one line per fetch would drown the test output.
        self.server.log.append(f"{time.strftime('%H:%M:%S')} {format % args}")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "SERVER_PROTOCOL": self.request_version,
        }
        for header, variable in (
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "GIT_PROTOCOL"),
        ):
            if header in self.headers:
                env[variable] = self.headers[header]
        started = time.monotonic()
        try:
            result = subprocess.run(
                ["git", "http-backend"],
                input=body,
                env=env,
                capture_output=True,
                timeout=CGI_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.send_error(504, "git http-backend timed out")
            return
        if result.returncode != 0 or result.stderr:
            self.log_message(
                "git http-backend %s exited %d after %.1fs: %s",
                path,
                result.returncode,
                time.monotonic() - started,
                result.stderr.decode("utf-8", "replace").strip()[-500:],
            )
        head, separator, payload = result.stdout.partition(b"\r\n\r\n")
        if not separator:
            head, separator, payload = result.stdout.partition(b"\n\n")
        if not separator:
            self.send_error(502, f"git http-backend answered no headers: {result.stderr[-200:]!r}")
            return
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GitHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, log: deque[str]) -> None:
        self.root = root
        self.log = log
        super().__init__((HOST, 0), _SmartHttpHandler)


class GitServer:
    """A served bare repository plus a working clone; ``commit`` returns the new commit id.

    ``with GitServer(workdir) as git: sha = git.commit({"path/in/repo.yaml": text}) ...``
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bare = workdir / "served" / REPOSITORY
        self.clone = workdir / "clone"
        self._server: _GitHttpServer | None = None
        self._thread: threading.Thread | None = None
        # Outlives the server: a failure report is written after the fixture stopped it.
        self._log: deque[str] = deque(maxlen=LOG_LINES)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("GitServer not started")
        return f"http://{HOST}:{self._server.server_address[1]}/{REPOSITORY}"

    def start(self) -> GitServer:
        self.bare.mkdir(parents=True)
        _git(
            "init",
            "--quiet",
            "--bare",
            f"--initial-branch={BRANCH}",
            str(self.bare),
            cwd=self.workdir,
        )
        self.clone.mkdir()
        _git("init", "--quiet", f"--initial-branch={BRANCH}", cwd=self.clone)
        _git("remote", "add", "origin", str(self.bare), cwd=self.clone)
        self._server = _GitHttpServer(self.bare.parent, self._log)
        self._log.append(f"{time.strftime('%H:%M:%S')} serving {self.url}")
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="git-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def log_tail(self, lines: int = 60) -> str:
        """The last requests served (one line each) and git's complaints, oldest first."""
        return "\n".join(list(self._log)[-lines:]) or "(no request yet)"

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def commit(self, files: Mapping[str, str | None], message: str = "update") -> str:
        """Write (text) or remove (None) files in the clone, commit, push; return the commit id."""
        for relative, text in files.items():
            path = self.clone / relative
            if text is None:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        _git("add", "--all", cwd=self.clone)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.clone)
        _git("push", "--quiet", "origin", f"HEAD:{BRANCH}", cwd=self.clone)
        return _git("rev-parse", "HEAD", cwd=self.clone).strip()

    def show(self, relative: str) -> str:
        """A file as committed at the head of the branch (what Flux fetches)."""
        return _git("show", f"{BRANCH}:{relative}", cwd=self.bare)
