"""Runs the real operator (`python -m matrix_invite_operator run`) as a separate process.

Integration tests, the demo and the benchmarks use it the same way: environment in, PID out,
logs to a file; `kill()` sends SIGKILL for crash tests, `stop()` SIGTERM then SIGKILL.
`wait_for_sync_pass()` is the barrier for "nothing happened": it returns once a whole status-sync
pass has run after the call, as the operator's own /metrics reports it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


SYNC_METRIC = "matrix_invite_last_successful_sync_timestamp_seconds"
CLEANUP_DONE = "Activity 'stop' succeeded"  # Kopf, after handlers.stop (on.cleanup) returned
PORT_TAKEN = "address already in use"  # a probe or metrics port taken between pick and bind
BIND_ATTEMPTS = 3
# A refused connection costs next to nothing, and every test waits for a start: a probe every
# 0.2 s wasted 0.1 s of each of the suite's few hundred starts on average.
HEALTH_POLL_SECONDS = 0.05


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OperatorProcess:
    """One operator process with its own log file and liveness port on 127.0.0.1."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Sequence[str] = ()) -> None:
        self.liveness_port = free_port()
        self.args = tuple(args)  # after `run`, e.g. "--verbose"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MATRIX_INVITE_")},
            "MATRIX_INVITE_BIND_ADDRESS": "127.0.0.1",
            "MATRIX_INVITE_LIVENESS_PORT": str(self.liveness_port),
            "MATRIX_INVITE_METRICS_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, *, wait_healthy: float = 30.0) -> OperatorProcess:
        """Start it; with `wait_healthy`, wait until its liveness probe answers.

        Its ports are picked free but released before it binds them, so another server started
        meanwhile may take one (seen under load: Kopf's health reporter failed to bind and the
        process exited). Such a start is tried again on fresh ports, as the control plane and the
        Flux controllers are; any other early exit fails at once. An attempt that lost a port is
        over when its log says so: the process is killed then, not waited for (after its health
        reporter failed, Kopf took ~12 s of retries on a closed session before it exited).
        """
        for attempt in range(1, BIND_ATTEMPTS + 1):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            if not wait_healthy:
                return self
            try:
                self.wait_healthy(wait_healthy, log_offset=offset)
                return self
            except RuntimeError:
                lost_a_port = PORT_TAKEN in self._log_since(offset)
                if not lost_a_port or attempt == BIND_ATTEMPTS:
                    raise
            self.kill()
            self.liveness_port = free_port()
            self.env["MATRIX_INVITE_LIVENESS_PORT"] = str(self.liveness_port)
            self.env["MATRIX_INVITE_METRICS_PORT"] = str(free_port())
        raise AssertionError("unreachable")

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _spawn(self) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "matrix_invite_operator", "run", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1

    def wait_healthy(self, timeout: float, *, log_offset: int | None = None) -> None:
        """Wait until /healthz answers; with `log_offset`, a port lost since that offset of the
        log ends the wait at once (the process will not serve the probe)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.log_tail()}")
            if log_offset is not None and PORT_TAKEN in self._log_since(log_offset):
                raise RuntimeError(f"operator lost a port:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError(f"operator not healthy within {timeout}s:\n{self.log_tail()}")

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled sample on the operator's /metrics, None if it has none."""
        url = f"http://127.0.0.1:{self.env['MATRIX_INVITE_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == name:
                return float(value)
        return None

    def wait_for_sync_pass(self, timeout: float = 30.0) -> None:
        """Wait until a status-sync pass that began after this call has listed the backend and
        updated every Invitation: the pass in progress now (if any) ends, then one more."""
        deadline = time.monotonic() + timeout
        mark = time.time()
        for what in ("the current sync pass to end", "a whole sync pass after it"):
            while (self.metric(SYNC_METRIC) or 0.0) <= mark:
                if self.returncode is not None:
                    raise RuntimeError(f"operator exited:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"not within {timeout}s: {what}\n{self.log_tail()}")
                time.sleep(0.1)
            mark = self.metric(SYNC_METRIC) or mark

    def kill(self) -> None:
        """SIGKILL: the crash that gives no chance to clean up."""
        self._signal(signal.SIGKILL, wait=10)

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._signal(signal.SIGTERM, wait=15)
        if self._process.poll() is None:
            self._signal(signal.SIGKILL, wait=10)

    def stop_after_cleanup(self, timeout: float = 15.0) -> None:
        """For a test's teardown: SIGTERM, then SIGKILL once the operator's cleanup handler has
        run (Kopf logs "Activity 'stop' succeeded"), or after `timeout`.

        What `stop()` waits for beyond that is Kopf giving its idle per-object workers up to 5 s
        to end; no test is about it, and every test would pay it. A test about an orderly stop
        (the Lease handed over, say) calls `stop()`.
        """
        if self._process is None or self._process.poll() is not None:
            return
        done = len(self.log_lines(CLEANUP_DONE))  # Kopf may have restarted in this process
        os.killpg(self._process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._process.poll() is None and time.monotonic() < deadline:
            if len(self.log_lines(CLEANUP_DONE)) > done:
                break
            time.sleep(0.05)
        self._signal(signal.SIGKILL, wait=10)

    def _signal(self, sig: signal.Signals, *, wait: float) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        # The operator runs in its own session: signal the whole group so no child survives.
        os.killpg(self._process.pid, sig)
        try:
            self._process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def logs(self) -> str:
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )

    def log_lines(self, *fragments: str) -> list[str]:
        """The log lines that contain every one of `fragments`."""
        return [line for line in self.logs().splitlines() if all(f in line for f in fragments)]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
