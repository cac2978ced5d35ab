"""The operator benchmark: floor, latency, burst, sync cost, memory and restart, in one run.

Run from the repository root (the control plane's binaries must be built: ``make controlplane``)::

    .venv/bin/python bench/run.py            # the sizes of issue 8 (about 15 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # small sizes, a few minutes: a smoke test
    .venv/bin/python bench/run.py --burst 500 --fill-to 2000 --sync-sizes 1,100

Everything binds 127.0.0.1 and runs as its own process, started and stopped by PID: etcd,
kube-apiserver and kube-controller-manager (``tests/controlplane``), the MAS double
(``python -m tests.doubles.mas``), the SMTP double with STARTTLS and AUTH
(``python -m tests.doubles.smtp``, each mail also written to a maildir, which is how mails are
counted) and the operator (``python -m matrix_invite_operator run`` via
``tests/operator_process.py``, with ``MATRIX_INVITE_MAIL_RATE_PER_MINUTE=0``). The benchmark
process itself creates Invitations over the API (HTTP/1.1, up to 32 at a time) and follows them
with one watch; its CPU competes with the rest on a small machine, so note the load (``uptime``
is printed before and after).

What it prints, one section per measurement, then a summary against the targets of issue 8
and, next to them, those of issue 24 (the newer decides ``ok``):

1. **floor**: the work of one Invitation done directly, without the operator, with the
   operator's own clients: one MAS token created (the access token is fetched once, before),
   one invitation mail rendered and sent (STARTTLS + AUTH once: the operator's mailer keeps its
   session for the next mail, docs/mail.md), one object created and its status patched three
   times on the API server; median (and p95) of ``--floor`` rounds.
2. **latency**: ``--latency`` Invitations applied one after another; each is timed from the
   create request to the watch event that shows it ``Ready`` with phase ``Sent``: p50, p95 and
   their ratios to the floor's median.
3. **burst**: ``--burst`` Invitations created at once (32 requests in flight): the time to
   create them and the time from the first request until the last one is ``Sent``.
4. **sync cost**: MAS requests of one status-sync pass for each of ``--sync-sizes``, measured
   as ``bench/sync_cost.py`` does (the operator's real sync pass and MAS client against the MAS
   double, Kubernetes recorded); plus the pass the running operator made with all Invitations
   in place (MAS request log of the double process, between two passes).
5. **memory**: the operator's VmHWM (peak RSS, ``/proc/PID/status``): of the process that did
   the burst and the fill, and of a fresh process at steady state (after a restart, idle) with
   the burst's and with ``--fill-to`` Invitations in place.
6. **restart**: the operator is stopped (SIGTERM) and started again with all Invitations in
   place; seconds from the start until it is idle again (every Invitation seen, CPU below 2 %
   of a core for 2 s), and the MAS writes (POST/PUT on the Admin API), mails, and Kubernetes
   writes it made meanwhile (counted until 10 s after idle). Done twice: with the burst's
   Invitations, and after filling up to ``--fill-to`` (the fill is a second, larger burst, or
   with ``--fill-burst`` a series of bursts of that many, each created when the one before is all
   ``Sent``; its rate is printed too).
7. **acceptance**: with the burst's Invitations in place, the ``--accept`` newest of the burst and
   the ``--accept-old`` oldest of all are signed up for (the MAS double's sign-up: the token's use,
   then the account with the invited address) at random moments within ``--accept-spread``
   seconds; each is timed from the sign-up to the watch event that shows it ``Accepted``: p50,
   p95. The MAS requests over a whole number of full-pass intervals give the request rate:
   polling (lists, access tokens, site config) apart from the acceptances' account lookups.

Comparing versions: ``PYTHONPATH=DIR`` (a ``git archive`` of ``operator/``) runs everything with
that version; ``--operator DIR`` only the operator's processes, while the benchmark itself (the
floor, the doubles) runs this checkout's code, so that a version older than the modules the
benchmark imports can be measured with the same benchmark; ``--restart-with DIR`` only the
restarts, so that the restart and memory of one version are measured with Invitations another
version settled (one whose bursts finish).
``bench/restart_memory.py`` restarts several versions against one fill.

``--profile DIR`` records the operator with py-spy (``pip install py-spy``) during the burst,
the fill and the restarts (collapsed stacks, ``DIR/<phase>.txt``; ``--profile-format`` for
speedscope or flamegraph SVG). ``--json PATH`` writes every number. The workdir (logs of every
process) is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from matrix_invite_operator.backends import TokenBackend
from matrix_invite_operator.kube import kube_http_client
from matrix_invite_operator.kube_identity import KubeLogin
from matrix_invite_operator.models import GROUP, PLURAL, VERSION
from matrix_invite_operator.ports import Invitation, InvitationMailer
from matrix_invite_operator.providers import build_provider
from matrix_invite_operator.reconcile import generate_token
from matrix_invite_operator.runtime import build_mailer
from matrix_invite_operator.settings import Settings

from bench.sync_cost import PAGE_SIZE, SyncBench
from tests.controlplane.build import ensure_binaries
from tests.controlplane.cluster import ControlPlane
from tests.doubles.kube_recorder import KubeRecorder
from tests.doubles.mas import (
    DISCOVERY_PATH,
    OAUTH_TOKEN_PATH,
    PROVIDERS_PATH,
    REVOKE_PATH,
    SITE_CONFIG_PATH,
    TOKEN_PATH,
    TOKENS_PATH,
    UNREVOKE_PATH,
    MasDouble,
)
from tests.operator_process import REPO_ROOT, OperatorProcess, free_port

NAMESPACE = "bench"
FLOOR_NAMESPACE = "bench-floor"
MAS_CLIENT_ID = "01J44RKQYM4G3TNVANTMTDYTX6"
MAS_CLIENT_SECRET = "mas-client-secret-for-benchmarks-only"  # noqa: S105 - the double's
SMTP_USER = "operator@example.org"
SMTP_PASSWORD = "smtp-password-for-benchmarks-only"  # noqa: S105 - the double's
API = f"/apis/{GROUP}/{VERSION}"
IN_FLIGHT = 32
IDLE_WINDOW = 2.0  # seconds of quiet CPU that count as idle
IDLE_CPU = 0.02  # ... below this share of one core
AFTER_IDLE = 10.0  # keep counting writes and mails this long after idle
# What the operator asks MAS however many invitees sign up: the sync's lists, access tokens,
# the site config. The rest in an acceptance window is per acceptance (onboarding's lookups).
MAS_POLLING = {
    ("GET", TOKENS_PATH),
    ("POST", OAUTH_TOKEN_PATH),
    ("GET", DISCOVERY_PATH),
    ("GET", SITE_CONFIG_PATH),
    ("GET", PROVIDERS_PATH),
}
MAS_WRITES = {
    ("POST", TOKENS_PATH),
    ("PUT", TOKEN_PATH),
    ("POST", REVOKE_PATH),
    ("POST", UNREVOKE_PATH),
}

Body = dict[str, Any]
# What a watch event line must contain to be decoded: the phases the benchmark times, and an
# ERROR (a 410 ends the watch and it lists again).
WATCHED_LINE_MARKERS = ('"phase":"Sent"', '"phase":"Accepted"', '"type":"ERROR"')


# --- child processes ----------------------------------------------------------------------


class Child:
    """A process of ours: own session, log file, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, args: Sequence[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [*args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, wait: float = 15.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


def wait_until(what: str, check: Callable[[], bool], timeout: float, child: Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited; see {child.log}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout}s; see {child.log}")


class MasProcess(Child):
    """`python -m tests.doubles.mas`, steered and counted through its `/__double__/` API."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        secret = workdir / "mas-client-secret"
        secret.write_text(MAS_CLIENT_SECRET)
        super().__init__(
            "MAS double",
            [
                sys.executable,
                "-m",
                "tests.doubles.mas",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--client-id={MAS_CLIENT_ID}",
                f"--client-secret-file={secret}",
            ],
            workdir / "mas.log",
        )
        wait_until("MAS double", lambda: self._get("/__double__/clock") is not None, 30, self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as answer:  # noqa: S310
            return json.loads(answer.read())

    def counts(self) -> Counter[tuple[str, str]]:
        """Requests so far by (method, path template), every status."""
        counts: Counter[tuple[str, str]] = Counter()
        for item in self._get("/__double__/requests")["counts"]:
            if not item["path"].startswith("/__double__"):  # our own counting
                counts[(item["method"], item["path"])] += item["count"]
        return counts

    def violations(self) -> Any:
        return self._get("/__double__/spec-violations")

    def sign_up(self, token_id: str, username: str, email: str) -> None:
        """An invitee completes MAS's sign-up with this token: its use, then the account with
        the invited address (which onboarding's account lookup then finds at once)."""
        request = urllib.request.Request(  # noqa: S310 - the double on 127.0.0.1
            f"{self.url}/__double__/tokens/{token_id}/sign-up",
            data=json.dumps({"username": username, "email": email}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310
            pass


class SmtpProcess(Child):
    """`python -m tests.doubles.smtp` with STARTTLS and AUTH; every mail lands in a maildir."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.maildir = workdir / "maildir"
        self.cert_dir = workdir / "smtp-certs"
        password = workdir / "smtp-password"
        password.write_text(SMTP_PASSWORD)
        super().__init__(
            "SMTP double",
            [
                sys.executable,
                "-m",
                "tests.doubles.smtp",
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--mode=starttls",
                f"--cert-dir={self.cert_dir}",
                f"--maildir={self.maildir}",
                f"--username={SMTP_USER}",
                f"--password-file={password}",
            ],
            workdir / "smtp.log",
        )
        wait_until("SMTP double", self._listening, 30, self)

    def _listening(self) -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return (self.cert_dir / "ca.pem").exists()

    @property
    def ca_path(self) -> Path:
        return self.cert_dir / "ca.pem"

    def mails(self) -> int:
        if not self.maildir.is_dir():
            return 0
        return sum(1 for p in self.maildir.iterdir() if p.suffix == ".eml")


# --- /proc ----------------------------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine used so far (every core, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- Kubernetes through the API ---------------------------------------------------------------


def invitation_manifest(namespace: str, name: str) -> Body:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Invitation",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"email": f"{name}@example.org", "displayName": f"Bench {name}"},
    }


def is_sent(body: Body) -> bool:
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return bool(
        status.get("phase") == "Sent"
        and ready is not None
        and ready.get("status") == "True"
        and status.get("observedGeneration") == body["metadata"].get("generation")
    )


async def create(client: httpx.AsyncClient, body: Body) -> None:
    namespace = body["metadata"]["namespace"]
    answer = await client.post(f"{API}/namespaces/{namespace}/{PLURAL}", json=body)
    answer.raise_for_status()


async def create_many(client: httpx.AsyncClient, bodies: Iterable[Body]) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(body: Body) -> None:
        async with gate:
            await create(client, body)

    await asyncio.gather(*(one(body) for body in bodies))


class Watcher:
    """One watch on the namespace: when each Invitation was first seen Ready with phase Sent."""

    def __init__(self, client: httpx.AsyncClient, namespace: str) -> None:
        self._client = client
        self._path = f"{API}/namespaces/{namespace}/{PLURAL}"
        self.sent: dict[str, float] = {}
        self.accepted: dict[str, float] = {}  # first seen with phase Accepted
        self.token_ids: dict[str, str] = {}
        self.seen: set[str] = set()
        self.events = 0
        self._task: asyncio.Task[None] | None = None
        self._listed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench-watch")
        await asyncio.wait_for(self._listed.wait(), timeout=60)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _see(self, body: Body, now: float) -> None:
        name = body["metadata"]["name"]
        self.seen.add(name)
        if name not in self.sent and is_sent(body):
            self.sent[name] = now
        status = body.get("status") or {}
        if status.get("tokenId"):
            self.token_ids[name] = status["tokenId"]
        if name not in self.accepted and status.get("phase") == "Accepted":
            self.accepted[name] = now

    async def _run(self) -> None:
        while True:
            try:
                version = await self._list()
                self._listed.set()
                params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "1"}
                async with self._client.stream(
                    "GET", self._path, params=params, timeout=httpx.Timeout(None, connect=10)
                ) as answer:
                    async for line in answer.aiter_lines():
                        if not line:
                            continue
                        now = time.perf_counter()
                        self.events += 1
                        # Only a Sent or Accepted phase is news here (a fill of 19,000 brings
                        # 95,000 events of up to 18 KB; decoding each cost the 2 cores the
                        # operator shares as much as a tenth of its CPU). The names come from
                        # the creating side (`expect`). The API server's JSON is compact.
                        if not any(marker in line for marker in WATCHED_LINE_MARKERS):
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break  # e.g. 410 Gone: list again
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._see(event["object"], now)
            except httpx.HTTPError:
                await asyncio.sleep(0.5)

    async def _list(self) -> str:
        path = f"{self._path}?limit=500"
        while True:
            answer = await self._client.get(path)
            answer.raise_for_status()
            page = answer.json()
            now = time.perf_counter()
            for item in page["items"]:
                self._see(item, now)
            token = page["metadata"].get("continue")
            if not token:
                return str(page["metadata"]["resourceVersion"])
            path = f"{self._path}?limit=500&continue={token}"

    def expect(self, names: Iterable[str]) -> None:
        """Invitations this benchmark created (the watch decodes only Sent and Accepted)."""
        self.seen.update(names)

    async def wait_sent(self, names: Iterable[str], within: float) -> bool:
        return await self._wait(self.sent, names, within)

    async def wait_accepted(self, names: Iterable[str], within: float) -> bool:
        return await self._wait(self.accepted, names, within)

    async def _wait(self, seen: dict[str, float], names: Iterable[str], within: float) -> bool:
        """The times come from the events, so how often this looks changes no result; it looks
        only at the names still missing (comparing 19,000 names a hundred times a second was
        a tenth of a core)."""
        missing = set(names)
        deadline = time.perf_counter() + within
        while True:
            missing = {name for name in missing if name not in seen}
            if not missing:
                return True
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(0.01 if len(missing) < 100 else 0.25)


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")


def apiserver_writes(cp: ControlPlane) -> Counter[str]:
    """Write requests the API server served so far, by "VERB resource[/subresource]"."""
    return apiserver_requests(cp, WRITE_VERBS)


def apiserver_requests(cp: ControlPlane, verbs: tuple[str, ...]) -> Counter[str]:
    """Requests with one of `verbs` for Invitations, Secrets and Events the API server served
    so far, by "VERB resource[/subresource]"."""
    request = urllib.request.Request(  # noqa: S310 - our own API server on 127.0.0.1
        f"{cp.server_url}/metrics", headers={"Authorization": f"Bearer {cp.admin_token}"}
    )
    import ssl

    context = ssl.create_default_context(cafile=str(cp.workdir / "apiserver-certs/apiserver.crt"))
    context.check_hostname = False
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310
        text = answer.read().decode()
    counts: Counter[str] = Counter()
    pattern = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("verb") not in verbs:
            continue
        if labels.get("resource") not in ("invitations", "secrets", "events"):
            continue
        what = labels["resource"] + (f"/{labels['subresource']}" if labels["subresource"] else "")
        counts[f"{labels['verb']} {what}"] += int(float(match.group(2)))
    return counts


# --- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    cp: ControlPlane
    mas: MasProcess
    smtp: SmtpProcess
    kube: httpx.AsyncClient
    sync_interval: float
    profile_dir: Path | None
    profile_format: str
    restart_pythonpath: str | None = None
    operator_pythonpath: str | None = None  # the code under test, if not this checkout's
    sync_interval_set: bool = True  # False: the operator's default, not in its environment
    operator: OperatorProcess | None = None
    starts: int = 0
    profiler: subprocess.Popen[bytes] | None = None

    def operator_env(self) -> dict[str, str]:
        secrets_dir = self.workdir
        return {
            "KUBECONFIG": str(self.cp.kubeconfig_path),
            "MATRIX_INVITE_NAMESPACES": NAMESPACE,
            "MATRIX_INVITE_MAS_URL": self.mas.url,
            "MATRIX_INVITE_MAS_CLIENT_ID": MAS_CLIENT_ID,
            "MATRIX_INVITE_MAS_CLIENT_SECRET_FILE": str(secrets_dir / "mas-client-secret"),
            "MATRIX_INVITE_SMTP_HOST": "127.0.0.1",
            "MATRIX_INVITE_SMTP_PORT": str(self.smtp.port),
            "MATRIX_INVITE_SMTP_TLS": "starttls",
            "MATRIX_INVITE_SMTP_USERNAME": SMTP_USER,
            "MATRIX_INVITE_SMTP_PASSWORD_FILE": str(secrets_dir / "smtp-password"),
            "MATRIX_INVITE_SMTP_CA_BUNDLE": str(self.smtp.ca_path),
            "MATRIX_INVITE_MAIL_FROM": "invitations@example.org",
            "MATRIX_INVITE_SERVER_NAME": "example.org",
            "MATRIX_INVITE_REGISTRATION_URL": "https://auth.example.org/register",
            "MATRIX_INVITE_MAIL_RATE_PER_MINUTE": "0",
            **(
                {"MATRIX_INVITE_SYNC_INTERVAL_SECONDS": f"{self.sync_interval:g}"}
                if self.sync_interval_set
                else {}
            ),
        }

    def settings(self) -> Settings:
        """The operator's settings, for the floor (built from the same environment)."""
        env = self.operator_env()
        names = {
            key.removeprefix("MATRIX_INVITE_").lower(): value
            for key, value in env.items()
            if key.startswith("MATRIX_INVITE_")
        }
        names["mas_client_secret_file"] = str(self.workdir / "mas-client-secret")
        names["namespaces"] = FLOOR_NAMESPACE
        return Settings.model_validate(names)

    def start_operator(self, pythonpath: str | None = None) -> OperatorProcess:
        self.starts += 1
        env = self.operator_env()
        pythonpath = pythonpath or self.operator_pythonpath
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        process = OperatorProcess(env, self.workdir / f"operator-{self.starts}.log")
        process.start(wait_healthy=60)
        self.operator = process
        return process

    @property
    def operator_pid(self) -> int:
        if self.operator is None or self.operator.pid is None:
            raise RuntimeError("operator not running")
        return self.operator.pid

    def operator_metrics(self) -> dict[str, float]:
        if self.operator is None:
            return {}
        port = self.operator.env["MATRIX_INVITE_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
        return values

    def watched(self) -> int:
        """How many Invitations the running operator holds in its registry."""
        metrics = self.operator_metrics()
        return int(sum(v for k, v in metrics.items() if k.startswith("matrix_invite_invitations{")))

    def last_sync(self) -> float:
        return self.operator_metrics().get(
            "matrix_invite_last_successful_sync_timestamp_seconds", 0
        )

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process of the benchmark, and by the whole machine."""
        pids = {
            **self.cp.pids(),
            "MAS double": self.mas.popen.pid,
            "SMTP double": self.smtp.popen.pid,
        }
        if self.operator is not None and self.operator.pid is not None:
            pids["operator"] = self.operator.pid
        used = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                used[name] = cpu_seconds(pid)
        own = os.times()
        used["benchmark"] = own.user + own.system
        used["machine"] = machine_busy_seconds()
        return used

    def profile(self, phase: str) -> None:
        if self.profile_dir is None:
            return
        self.stop_profile()
        py_spy = Path(sys.executable).with_name("py-spy")
        suffix = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}[self.profile_format]
        output = self.profile_dir / f"{phase}.{suffix}"
        self.profiler = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(self.operator_pid),
                "--rate",
                "100",
                "--nonblocking",
                "--format",
                self.profile_format,
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"py-spy-{phase}.log").open("ab"),
            start_new_session=True,
        )

    def stop_profile(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is None or profiler.poll() is not None:
            return
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=60)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait(timeout=10)


# --- measurements ---------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Floor:
    rounds: int
    median: float
    p95: float
    parts: dict[str, float]  # median of each part


async def measure_floor(stack: Stack, rounds: int) -> Floor:
    settings = stack.settings()
    provider = build_provider(settings)
    backend: TokenBackend = provider.backend
    mailer: InvitationMailer = build_mailer(settings)
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=7)
    try:
        await backend.issue(generate_token(), usage_limit=1, expires_at=expires)  # access token
        totals: list[float] = []
        parts: dict[str, list[float]] = {"MAS": [], "mail": [], "kube": []}
        for index in range(rounds):
            name = f"floor-{index:03d}"
            started = time.perf_counter()
            body = invitation_manifest(FLOOR_NAMESPACE, name)
            path = f"{API}/namespaces/{FLOOR_NAMESPACE}/{PLURAL}"
            answer = await stack.kube.post(path, json=body)
            answer.raise_for_status()
            created = answer.json()
            kube_first = time.perf_counter() - started
            mark = time.perf_counter()
            token = generate_token()
            state = await backend.issue(token, usage_limit=1, expires_at=expires)
            parts["MAS"].append(time.perf_counter() - mark)
            mark = time.perf_counter()
            invitation = Invitation.from_body(created)
            await mailer.send_invitation(invitation, token=token, token_state=state)
            parts["mail"].append(time.perf_counter() - mark)
            mark = time.perf_counter()
            for step, status in enumerate(
                ({"secretName": f"{name}-invite-token"}, {"tokenId": state.id}, {"phase": "Sent"})
            ):
                answer = await stack.kube.patch(
                    f"{path}/{name}/status",
                    json={"status": {**status, "observedGeneration": step + 1}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                answer.raise_for_status()
            parts["kube"].append(kube_first + time.perf_counter() - mark)
            totals.append(time.perf_counter() - started)
    finally:
        await provider.aclose()
    return Floor(
        rounds=rounds,
        median=statistics.median(totals),
        p95=percentile(totals, 0.95),
        parts={k: statistics.median(v) for k, v in parts.items()},
    )


@dataclass
class Latency:
    n: int
    p50: float
    p95: float
    max: float
    missing: int


async def measure_latency(stack: Stack, watcher: Watcher, n: int, within: float) -> Latency:
    samples: list[float] = []
    missing = 0
    for index in range(n):
        name = f"latency-{index:03d}"
        started = time.perf_counter()
        await create(stack.kube, invitation_manifest(NAMESPACE, name))
        watcher.expect([name])
        if await watcher.wait_sent([name], within):
            samples.append(watcher.sent[name] - started)
        else:
            missing += 1
    if not samples:
        return Latency(n, math.nan, math.nan, math.nan, missing)
    return Latency(n, statistics.median(samples), percentile(samples, 0.95), max(samples), missing)


@dataclass
class Acceptance:
    """Registrations with the tokens of Invitations mailed recently (`recent`) and long ago."""

    recent: Latency
    old: Latency
    window_seconds: float
    mas_requests: dict[str, int]
    polling_requests: int  # of those, the ones not caused by an acceptance (MAS_POLLING)

    @property
    def mas_rate(self) -> float:
        return sum(self.mas_requests.values()) / self.window_seconds

    @property
    def polling_rate(self) -> float:
        return self.polling_requests / self.window_seconds


def latency_of(samples: Sequence[float], n: int) -> Latency:
    if not samples:
        return Latency(n, math.nan, math.nan, math.nan, n)
    return Latency(
        n, statistics.median(samples), percentile(samples, 0.95), max(samples), n - len(samples)
    )


async def measure_acceptance(
    stack: Stack, watcher: Watcher, recent: Sequence[str], old: Sequence[str], spread: float
) -> Acceptance:
    """Each Invitation's token is used (the double's sign-up) at a random moment within
    `spread` seconds; timed from then to the watch event that shows it Accepted. The MAS
    requests of the whole window, a whole number of full-pass intervals, give the rate."""
    rng = random.Random(24)  # noqa: S311 - spacing, not secrets
    names = [*recent, *old]
    offsets = {name: rng.uniform(0, spread) for name in names}
    used: dict[str, float] = {}
    mas_before = stack.mas.counts()
    started = time.perf_counter()

    async def register(name: str) -> None:
        await asyncio.sleep(offsets[name])
        used[name] = time.perf_counter()
        await asyncio.to_thread(
            stack.mas.sign_up, watcher.token_ids[name], name, f"{name}@example.org"
        )

    await asyncio.gather(*(register(name) for name in names))
    # The full pass at its interval must see every one: wait at most two intervals past that.
    await watcher.wait_accepted(names, 2 * stack.sync_interval + 30)
    # The request rate over whole full-pass intervals: a window that holds one full pass more
    # or less than its share would be off by a whole pass (11 requests at N = 1,000).
    intervals = math.ceil((time.perf_counter() - started) / stack.sync_interval)
    await asyncio.sleep(max(0.0, started + intervals * stack.sync_interval - time.perf_counter()))
    window = time.perf_counter() - started
    mas = stack.mas.counts() - mas_before

    def samples(group: Sequence[str]) -> list[float]:
        return [watcher.accepted[n] - used[n] for n in group if n in watcher.accepted]

    return Acceptance(
        recent=latency_of(samples(recent), len(recent)),
        old=latency_of(samples(old), len(old)),
        window_seconds=window,
        mas_requests={f"{m} {p}": c for (m, p), c in mas.items()},
        polling_requests=sum(c for key, c in mas.items() if key in MAS_POLLING),
    )


@dataclass
class Burst:
    n: int
    apply_seconds: float
    total_seconds: float
    sent: int
    kube_writes: dict[str, int]
    mas_requests: dict[str, int]
    cpu: dict[str, float]
    chunk: int | None = None  # created in bursts of this many (the fill's --fill-burst)
    kube_reads: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"burst of {self.n}" + (f" (in bursts of {self.chunk})" if self.chunk else "")

    @property
    def rate(self) -> float:
        return self.sent / self.total_seconds if self.total_seconds else math.nan


async def measure_burst(
    stack: Stack,
    watcher: Watcher,
    prefix: str,
    n: int,
    within: float,
    *,
    chunk: int | None = None,
) -> Burst:
    """`n` Invitations created at once, or (`chunk`) in bursts of that many, each created when
    the one before is all Sent: the same work with a backlog of at most `chunk` waiting."""
    names = [f"{prefix}-{index:05d}" for index in range(n)]
    size = chunk or n
    # Writes and reads of one object (GET; not LIST or WATCH), from one scrape.
    kube_before = apiserver_requests(stack.cp, (*WRITE_VERBS, "GET"))
    mas_before = stack.mas.counts()
    cpu_before = stack.cpu()
    stack.profile(prefix)
    started = time.perf_counter()
    applied = 0.0
    done = True
    for first in range(0, n, size):
        part = names[first : first + size]
        creating = time.perf_counter()
        await create_many(stack.kube, (invitation_manifest(NAMESPACE, name) for name in part))
        applied += time.perf_counter() - creating
        watcher.expect(part)
        done = await watcher.wait_sent(part, within) and done
    cpu = stack.cpu()
    stack.stop_profile()
    if done:
        total = max(watcher.sent[name] for name in names) - started
    else:
        total = time.perf_counter() - started
    kube = apiserver_requests(stack.cp, (*WRITE_VERBS, "GET")) - kube_before
    mas = stack.mas.counts() - mas_before
    return Burst(
        n=n,
        apply_seconds=applied,
        total_seconds=total,
        sent=sum(1 for name in names if name in watcher.sent),
        kube_writes={k: v for k, v in kube.items() if not k.startswith("GET ")},
        mas_requests={f"{m} {p}": c for (m, p), c in mas.items()},
        cpu=cpu_use(cpu_before, cpu),
        chunk=chunk if chunk and chunk < n else None,
        kube_reads={k: v for k, v in kube.items() if k.startswith("GET ")},
    )


def cpu_use(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds by process between two `Stack.cpu()` readings; "others": not ours."""
    used = {k: round(after[k] - before.get(k, 0.0), 1) for k in after}
    ours = sum(v for k, v in used.items() if k != "machine")
    used["others"] = round(used.pop("machine") - ours, 1)
    return used


async def wait_idle(
    pid: int, ready: Callable[[], bool], within: float
) -> tuple[float | None, float]:
    """When the process went quiet (monotonic start of the quiet window), or None on timeout.

    `ready` is asked only once the CPU is quiet (asking may cost the process CPU itself).
    """
    samples: deque[tuple[float, float]] = deque()
    deadline = time.monotonic() + within
    is_ready = False
    while time.monotonic() < deadline:
        now, cpu = time.monotonic(), cpu_seconds(pid)
        samples.append((now, cpu))
        while len(samples) > 1 and samples[1][0] <= now - IDLE_WINDOW:
            samples.popleft()
        start, start_cpu = samples[0]
        if now - start >= IDLE_WINDOW and (cpu - start_cpu) <= IDLE_CPU * (now - start):
            is_ready = is_ready or ready()
            if is_ready:
                return start, cpu
        await asyncio.sleep(0.25)
    return None, cpu_seconds(pid)


@dataclass
class Restart:
    invitations: int
    unsent: int
    seconds_to_idle: float | None
    seconds_to_healthy: float
    cpu_seconds: float
    mas_writes: int
    mas_requests: dict[str, int]
    mails: int
    kube_writes: dict[str, int]
    vm_hwm_mib: float
    vm_rss_mib: float
    cpu: dict[str, float]


async def measure_restart(
    stack: Stack, watcher: Watcher, invitations: int, within: float
) -> Restart:
    if stack.operator is not None:
        stack.operator.stop()
    # Not Sent yet when the operator stopped: their remaining work is not restart overhead.
    unsent = len(watcher.seen - watcher.sent.keys())
    mas_before, mails_before = stack.mas.counts(), stack.smtp.mails()
    kube_before = apiserver_writes(stack.cp)
    cpu_before = stack.cpu()
    started = time.monotonic()
    stack.start_operator(stack.restart_pythonpath)
    healthy = time.monotonic() - started
    pid = stack.operator_pid
    stack.profile(f"restart-{invitations}")
    quiet_since, cpu = await wait_idle(pid, lambda: stack.watched() >= invitations, within)
    stack.stop_profile()
    cpu_after = stack.cpu()
    await asyncio.sleep(AFTER_IDLE)
    mas = stack.mas.counts() - mas_before
    memory = memory_kib(pid)
    return Restart(
        invitations=invitations,
        unsent=unsent,
        seconds_to_idle=None if quiet_since is None else quiet_since - started,
        seconds_to_healthy=healthy,
        cpu_seconds=cpu,
        mas_writes=sum(c for (m, p), c in mas.items() if (m, p) in MAS_WRITES),
        mas_requests={f"{m} {p}": c for (m, p), c in mas.items()},
        mails=stack.smtp.mails() - mails_before,
        kube_writes=dict(apiserver_writes(stack.cp) - kube_before),
        vm_hwm_mib=memory["VmHWM"] / 1024,
        vm_rss_mib=memory["VmRSS"] / 1024,
        cpu=cpu_use(cpu_before, cpu_after),
    )


@dataclass
class LivePass:
    invitations: int
    list_requests: int
    token_requests: int
    other_requests: int
    bound: int


async def measure_live_pass(stack: Stack, invitations: int, within: float) -> LivePass | None:
    """MAS requests between two passes of the running operator's own sync loop."""
    first = stack.last_sync()
    deadline = time.monotonic() + within
    while stack.last_sync() == first:  # wait for a pass boundary
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.5)
    before, marker = stack.mas.counts(), stack.last_sync()
    while stack.last_sync() == marker:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.5)  # the pass's last page is counted before last_success is set
    spent = stack.mas.counts() - before
    listed = spent[("GET", TOKENS_PATH)]
    token = spent[("POST", OAUTH_TOKEN_PATH)]
    return LivePass(
        invitations,
        listed,
        token,
        sum(spent.values()) - listed - token,
        math.ceil(invitations / PAGE_SIZE) + 1,
    )


@dataclass
class SyncRow:
    n: int
    cold: int
    warm: int
    bound: int
    kube_requests: int
    seconds: float


async def measure_sync(sizes: Sequence[int]) -> list[SyncRow]:
    rows: list[SyncRow] = []
    with (
        MasDouble(client_id=MAS_CLIENT_ID, client_secret=MAS_CLIENT_SECRET) as mas,
        KubeRecorder() as kube,
    ):
        for n in sizes:
            bench = SyncBench(mas, kube, MAS_CLIENT_ID, MAS_CLIENT_SECRET)
            try:
                await bench.seed(n)
                cold = await bench.run_pass()
                warm = await bench.run_pass()
            finally:
                await bench.aclose()
            rows.append(
                SyncRow(
                    n,
                    cold.mas_requests,
                    warm.mas_requests,
                    cold.bound,
                    cold.kube_requests + warm.kube_requests,
                    cold.seconds,
                )
            )
    return rows


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    load: dict[str, str] = field(default_factory=dict)
    floor: Floor | None = None
    latency: Latency | None = None
    burst: Burst | None = None
    acceptance: Acceptance | None = None
    fill: Burst | None = None
    restarts: list[Restart] = field(default_factory=list)
    working_hwm_mib: dict[int, float] = field(default_factory=dict)
    live_pass: LivePass | None = None
    sync: list[SyncRow] = field(default_factory=list)


def machine() -> dict[str, str]:
    import importlib.metadata
    import platform

    memory = next(
        line.split(":")[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    cpu = next(
        (
            line.split(":")[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "kopf": importlib.metadata.version("kopf"),
        "kernel": platform.release(),
    }


def default_sync_interval() -> float:
    """The full pass's interval when the environment does not set it (the version under test)."""
    default = Settings.model_fields["sync_interval_seconds"].default
    return float(default)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


async def run(args: argparse.Namespace) -> Results:
    results = Results(machine=machine())
    results.load["start"] = load_average()
    print(f"machine: {results.machine}")
    if args.operator:
        print(f"operator: the package at {args.operator}")
    print(f"load average at start: {results.load['start']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="matrix-invite-bench-"))
    print(f"workdir: {workdir}", flush=True)
    profile_dir: Path | None = args.profile
    children: list[Child] = []
    stack: Stack | None = None
    try:
        with ControlPlane(binaries=ensure_binaries(), workdir=workdir / "controlplane") as cp:
            cp.apply_crds(REPO_ROOT / "crds")
            for namespace in (NAMESPACE, FLOOR_NAMESPACE):
                cp.kubectl("create", "namespace", namespace)
            mas = MasProcess(workdir)
            children.append(mas)
            smtp = SmtpProcess(workdir)
            children.append(smtp)
            kube = await kube_http_client(KubeLogin(kubeconfig=cp.kubeconfig_path))
            kube.timeout = httpx.Timeout(60.0, connect=10.0)
            stack = Stack(
                workdir,
                cp,
                mas,
                smtp,
                kube,
                args.sync_interval or default_sync_interval(),
                profile_dir,
                args.profile_format,
                restart_pythonpath=args.restart_with,
                operator_pythonpath=args.operator,
                sync_interval_set=args.sync_interval is not None,
            )
            async with kube:
                await run_measurements(stack, args, results)
            stack.stop_profile()
            if stack.operator is not None:
                stack.operator.stop()
            violations = mas.violations()
            if violations["response"] or violations["request"]:
                print(f"MAS double spec violations: {violations}", file=sys.stderr)
    finally:
        if stack is not None:
            stack.stop_profile()
            if stack.operator is not None:
                stack.operator.stop()
        for child in reversed(children):
            child.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.sync_sizes:
        section(f"4. sync cost per pass (bench/sync_cost.py's setup), N = {args.sync_sizes}")
        results.sync = await measure_sync(args.sync_sizes)
        print_sync(results)
    results.load["end"] = load_average()
    print(f"\nload average at end: {results.load['end']}")
    return results


async def run_measurements(stack: Stack, args: argparse.Namespace, results: Results) -> None:
    section(f"1. floor: the same work without the operator, {args.floor} rounds")
    results.floor = await measure_floor(stack, args.floor)
    print_floor(results.floor)

    stack.start_operator()
    watcher = Watcher(stack.kube, NAMESPACE)
    await watcher.start()
    try:
        section(f"2. latency: {args.latency} Invitations one after another")
        results.latency = await measure_latency(stack, watcher, args.latency, args.timeout)
        print_latency(results.latency, results.floor)

        section(f"3. burst: {args.burst} Invitations at once, mail rate limit off")
        results.burst = await measure_burst(stack, watcher, "burst", args.burst, args.timeout)
        print_burst(results.burst)
        in_place = args.latency + args.burst
        await wait_idle(stack.operator_pid, lambda: True, args.timeout)
        results.working_hwm_mib[in_place] = memory_kib(stack.operator_pid)["VmHWM"] / 1024

        if args.accept:
            # The newest of the burst (invitees sign up soon after the mail), and the oldest
            # of all (mailed before the burst: only a full pass over every page sees those).
            burst_names = [f"burst-{index:05d}" for index in range(args.burst)]
            recent = burst_names[-args.accept :]
            old = [f"latency-{index:03d}" for index in range(min(args.accept_old, args.latency))]
            section(
                f"7. acceptance: {len(recent)} recent and {len(old)} old Invitations' tokens "
                f"used within {args.accept_spread:g} s, N = {in_place}"
            )
            results.acceptance = await measure_acceptance(
                stack, watcher, recent, old, args.accept_spread
            )
            print_acceptance(results.acceptance)

        section(f"6a. restart with {in_place} Invitations in place")
        results.restarts.append(await measure_restart(stack, watcher, in_place, args.timeout))
        print_restart(results.restarts[-1])

        if args.fill_to > in_place:
            if stack.restart_pythonpath:  # the fill runs the code under test, as the burst did
                if stack.operator is not None:
                    stack.operator.stop()
                stack.start_operator()
            more = args.fill_to - in_place
            how = f"in bursts of {args.fill_burst}" if args.fill_burst else "at once"
            section(f"3b. fill: {more} more Invitations {how} (up to {args.fill_to})")
            results.fill = await measure_burst(
                stack, watcher, "fill", more, args.timeout * 5, chunk=args.fill_burst
            )
            print_burst(results.fill)
            await wait_idle(stack.operator_pid, lambda: True, args.timeout)
            results.working_hwm_mib[args.fill_to] = memory_kib(stack.operator_pid)["VmHWM"] / 1024

            section(f"6b. restart with {args.fill_to} Invitations in place")
            results.restarts.append(
                await measure_restart(stack, watcher, args.fill_to, args.timeout)
            )
            print_restart(results.restarts[-1])
            in_place = args.fill_to

        if args.live_pass:
            section(f"4b. the running operator's own sync pass with {in_place} Invitations")
            results.live_pass = await measure_live_pass(
                stack, in_place, within=2 * stack.sync_interval + 30
            )
            print_live_pass(results.live_pass)
        section("5. memory")
        print_memory(results)
    finally:
        await watcher.stop()


# --- output ---------------------------------------------------------------------------------


def print_floor(floor: Floor) -> None:
    parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in floor.parts.items())
    print(f"{'rounds':>6} {'median s':>9} {'p95 s':>7}  parts (medians)")
    print(f"{floor.rounds:>6} {fmt(floor.median, 4):>9} {fmt(floor.p95, 4):>7}  {parts}")


def print_latency(latency: Latency, floor: Floor | None) -> None:
    base = floor.median if floor else math.nan
    print(f"{'n':>4} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'p50/floor':>9} {'p95/floor':>9}")
    print(
        f"{latency.n:>4} {fmt(latency.p50)} {fmt(latency.p95)} {fmt(latency.max)} "
        f"{fmt(latency.p50 / base, 1):>9} {fmt(latency.p95 / base, 1):>9}"
        + (f"  ({latency.missing} never Sent)" if latency.missing else "")
    )


def print_acceptance(acceptance: Acceptance) -> None:
    print(f"{'which':>6} {'n':>4} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'never':>5}")
    for which, latency in (("recent", acceptance.recent), ("old", acceptance.old)):
        print(
            f"{which:>6} {latency.n:>4} {fmt(latency.p50, 1):>7} {fmt(latency.p95, 1):>7} "
            f"{fmt(latency.max, 1):>7} {latency.missing:>5}"
        )
    print(
        f"  MAS requests in the {acceptance.window_seconds:.0f} s window: "
        f"{acceptance.polling_rate:.3f}/s polling (lists, access tokens, site config), "
        f"{acceptance.mas_rate:.3f}/s with the acceptances' lookups: {acceptance.mas_requests}"
    )


def print_burst(burst: Burst) -> None:
    print(f"{'n':>6} {'apply s':>8} {'all Sent s':>10} {'per s':>7} {'Sent':>6}")
    print(
        f"{burst.n:>6} {fmt(burst.apply_seconds, 1):>8} {fmt(burst.total_seconds, 1):>10} "
        f"{fmt(burst.rate, 1):>7} {burst.sent:>6}"
    )
    per = {k: round(v / burst.n, 2) for k, v in sorted(burst.kube_writes.items())}
    print(f"  API writes per Invitation: {per}")
    reads = {k: round(v / burst.n, 2) for k, v in sorted(burst.kube_reads.items())}
    print(f"  API reads per Invitation (GET): {reads}")
    mas = {k: round(v / burst.n, 2) for k, v in sorted(burst.mas_requests.items())}
    print(f"  MAS requests per Invitation: {mas}")
    print(f"  CPU seconds meanwhile: {burst.cpu}")


def print_restart(restart: Restart) -> None:
    print(
        f"{'N':>6} {'healthy s':>9} {'idle s':>7} {'CPU s':>6} {'MAS writes':>10} "
        f"{'mails':>5} {'API writes':>10} {'VmHWM MiB':>9}"
    )
    print(
        f"{restart.invitations:>6} {fmt(restart.seconds_to_healthy, 1):>9} "
        f"{fmt(restart.seconds_to_idle, 1):>7} {fmt(restart.cpu_seconds, 1):>6} "
        f"{restart.mas_writes:>10} {restart.mails:>5} {sum(restart.kube_writes.values()):>10} "
        f"{restart.vm_hwm_mib:>9.1f}"
    )
    if restart.unsent:
        print(f"  {restart.unsent} Invitations were not Sent yet when the operator was stopped")
    print(f"  API writes: {restart.kube_writes or '{}'}; MAS requests: {restart.mas_requests}")
    print(f"  CPU seconds until idle: {restart.cpu}")


def print_live_pass(live: LivePass | None) -> None:
    if live is None:
        print("no complete pass observed")
        return
    print(
        f"N={live.invitations}: {live.list_requests} list + {live.token_requests} access-token "
        f"MAS requests per pass (bound {live.bound}); meanwhile {live.other_requests} other MAS "
        "requests from handlers (Invitations not settled yet)"
    )


def print_sync(results: Results) -> None:
    print(f"{'N':>6} {'MAS/pass':>8} {'warm':>5} {'bound':>5} {'kube writes':>11} {'seconds':>8}")
    for row in results.sync:
        print(
            f"{row.n:>6} {row.cold:>8} {row.warm:>5} {row.bound:>5} {row.kube_requests:>11} "
            f"{row.seconds:>8.3f}"
        )


def print_memory(results: Results) -> None:
    print(f"{'N':>6} {'VmHWM MiB (working)':>20} {'VmHWM MiB (fresh, idle)':>24}")
    fresh = {r.invitations: r.vm_hwm_mib for r in results.restarts}
    for n in sorted(set(results.working_hwm_mib) | set(fresh)):
        working = results.working_hwm_mib.get(n)
        print(f"{n:>6} {fmt(working, 1):>20} {fmt(fresh.get(n), 1):>24}")


def print_summary(results: Results) -> bool:
    """Each measurement against issue 8's target and issue 24's (the newer decides `ok`)."""
    section("summary: targets of issue 8 and of issue 24")
    rows: list[tuple[str, str, str, str, bool]] = []
    floor, latency = results.floor, results.latency
    if floor and latency:
        ratio50, ratio95 = latency.p50 / floor.median, latency.p95 / floor.median
        rows.append(("latency p50 / floor", "<= 10", "<= 10", f"{ratio50:.1f}", ratio50 <= 10))
        rows.append(("latency p95 / floor", "<= 30", "<= 30", f"{ratio95:.1f}", ratio95 <= 30))
    for burst in (results.burst, results.fill):
        if burst is None:
            continue
        ok = burst.sent == burst.n and burst.total_seconds <= 120 * max(1, burst.n / 1000)
        rows.append(
            (
                f"{burst.label} all Sent",
                "<= 120 s" if burst.n <= 1000 else "-",
                "-",
                f"{burst.total_seconds:.1f} s",
                ok,
            )
        )
        per = burst.cpu.get("operator", math.nan) / burst.n * 1000
        rows.append(
            (
                f"operator CPU per Invitation, {burst.label}",
                "-",
                "<= 20 ms",
                f"{per:.1f} ms",
                per <= 20,
            )
        )
    if results.acceptance:
        accept = results.acceptance
        recent, old = accept.recent, accept.old
        rows.append(
            (
                f"acceptance seen, {recent.n} recent: p50 / p95",
                "-",
                "p95 <= 15 s",
                f"{fmt(recent.p50, 1)} / {fmt(recent.p95, 1)} s",
                recent.missing == 0 and recent.p95 <= 15,
            )
        )
        rows.append(
            (
                f"acceptance seen, {old.n} old: p50 / p95",
                "-",
                "all seen",
                f"{fmt(old.p50, 1)} / {fmt(old.p95, 1)} s",
                old.missing == 0,
            )
        )
        rows.append(
            (
                "MAS polling requests/s meanwhile (N <= 1,000)",
                "-",
                "<= 0.2",
                f"{accept.polling_rate:.3f}",
                accept.polling_rate <= 0.2,
            )
        )
        rows.append(
            (
                "MAS requests/s with the acceptances' lookups",
                "-",
                "-",
                f"{accept.mas_rate:.3f}",
                True,
            )
        )
    for row in results.sync:
        bound = f"<= {row.bound}"
        rows.append(
            (f"sync MAS requests, N={row.n}", bound, bound, str(row.cold), row.cold <= row.bound)
        )
    if results.live_pass:
        live = results.live_pass
        spent = live.list_requests + live.token_requests
        bound = f"<= {live.bound}"
        rows.append(
            (f"live sync pass, N={live.invitations}", bound, bound, str(spent), spent <= live.bound)
        )
    for n, working in sorted(results.working_hwm_mib.items()):
        rows.append(
            (
                f"RSS at {n} (the working operator)",
                "-",
                "<= 250 MiB" if n >= 20000 else "-",
                f"{working:.1f} MiB",
                working <= 250 or n < 20000,
            )
        )
    for restart in results.restarts:
        n = restart.invitations
        rows.append(
            (
                f"RSS at {n} (fresh, idle)",
                "<= 150 MiB" if n >= 5000 else "-",
                "<= 150 MiB" if n >= 5000 else "-",
                f"{restart.vm_hwm_mib:.1f} MiB",
                restart.vm_hwm_mib <= 150,
            )
        )
        idle = restart.seconds_to_idle
        rows.append(
            (
                f"restart {n}: idle",
                "<= 60 s",
                "<= 60 s",
                fmt(idle, 1) + " s",
                idle is not None and idle <= 60,
            )
        )
        api_writes = sum(restart.kube_writes.values())
        rows.append(
            (
                f"restart {n}: MAS writes, mails, API writes",
                "0, 0, -",
                "0, 0, 0",
                f"{restart.mas_writes}, {restart.mails}, {api_writes}",
                restart.mas_writes == 0 and restart.mails == 0 and api_writes == 0,
            )
        )
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'':<{width}}  {'issue 8':>10}  {'issue 24':>12}  {'result':>14}")
    for what, old_target, new_target, result, ok in rows:
        print(
            f"{what:<{width}}  {old_target:>10}  {new_target:>12}  {result:>14}  "
            f"{'ok' if ok else 'MISSED'}"
        )
    return all(r[4] for r in rows)


def sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--floor", type=int, help="floor rounds (50)")
    parser.add_argument("--latency", type=int, help="Invitations one after another (50)")
    parser.add_argument("--burst", type=int, help="Invitations at once (1000)")
    parser.add_argument("--fill-to", type=int, help="Invitations in place for the restart (5000)")
    parser.add_argument(
        "--fill-burst",
        type=int,
        help="create the fill in bursts of this many, each when the one before is all Sent "
        "(default: all at once)",
    )
    parser.add_argument("--sync-sizes", type=sizes, help="sync-cost sizes (1,100,1000,10000)")
    parser.add_argument(
        "--sync-interval", type=float, help="operator's sync interval (its default if not given)"
    )
    parser.add_argument(
        "--no-live-pass",
        dest="live_pass",
        action="store_false",
        help="skip waiting for the running operator's own full pass (up to two intervals)",
    )
    parser.add_argument("--accept", type=int, help="recent Invitations accepted (20)")
    parser.add_argument(
        "--accept-old", type=int, default=5, help="Invitations accepted among the oldest (5)"
    )
    parser.add_argument(
        "--accept-spread", type=float, default=120, help="seconds the acceptances spread over"
    )
    parser.add_argument("--timeout", type=float, default=600, help="per wait, seconds")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the operator")
    parser.add_argument(
        "--profile-format", choices=["raw", "flamegraph", "speedscope"], default="raw"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number here")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs)")
    parser.add_argument(
        "--operator",
        metavar="PYTHONPATH",
        help="run the operator with this PYTHONPATH (another version of the package, e.g. "
        "from `git archive`), the benchmark itself with this checkout's code",
    )
    parser.add_argument(
        "--restart-with",
        metavar="PYTHONPATH",
        help="restart the operator with this PYTHONPATH (another version of the package, "
        "e.g. from `git archive`): its restart and memory, with Invitations the code under "
        "test settled",
    )
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = (
        {
            "floor": 10,
            "latency": 10,
            "burst": 100,
            "fill_to": 300,
            "sync_sizes": [1, 100, 1000],
            "sync_interval": 15.0,
            "accept": 5,
        }
        if args.quick
        else {
            "floor": 50,
            "latency": 50,
            "burst": 1000,
            "fill_to": 5000,
            "sync_sizes": [1, 100, 1000, 10000],
            "sync_interval": None,
            "accept": 20,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args))
    ok = print_summary(results)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
