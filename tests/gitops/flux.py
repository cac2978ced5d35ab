"""Flux's source-controller and kustomize-controller, running against the test control plane.

Owns their lifecycle (started by PID with the flags flux/FACTS.md found for running outside a
cluster, logs in ``<workdir>/<name>.log``, stopped by PID like the control plane's processes),
the CRDs they ship, and what tests ask of Flux objects: read a Kustomization, ask for a
reconciliation now, wait until a commit is applied.

Both controllers watch all namespaces and act as the control plane's admin (``system:masters``),
as flux/FACTS.md observed is enough: no ServiceAccount, no leader election. A test that runs
controllers of its own beside the session's gives them a shard (Flux's ``sharding.fluxcd.io/key``
label and ``--watch-label-selector``); the session's controllers leave labelled objects alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.controlplane.cluster import (
    START_ATTEMPTS,
    ControlPlane,
    _free_port,
    _http_status,
    _Process,
)
from tests.controlplane.flux_build import FluxTools
from tests.controlplane.listeners import port_holders

Body = dict[str, Any]
HOST = "127.0.0.1"
BRANCH = "main"
STARTUP_TIMEOUT_SECONDS = 60.0
# How Go's net package words a failed bind, in the log of a controller that lost a port.
ADDRESS_IN_USE = "address already in use"
# kustomize-controller re-checks a Kustomization whose dependsOn is not Ready (or not yet at the
# source's revision) after this long; every commit waits for it once or twice down the guide's
# dependsOn chain (ess -> operator -> invitations), so its default (30 s) would dominate every test.
REQUEUE_DEPENDENCY = "1s"
# The version of both Flux APIs the tests use (kustomize.toolkit.fluxcd.io, source.toolkit...).
FLUX_API_VERSION = "v1"
KUSTOMIZATIONS = "kustomizations.kustomize.toolkit.fluxcd.io"
GIT_REPOSITORIES = "gitrepositories.source.toolkit.fluxcd.io"
# The annotation `flux reconcile` sets; a new value asks the controller to reconcile now.
RECONCILE_REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
# How often the waits read a Kustomization: one HTTPS GET each, no process.
POLL_SECONDS = 0.25
# Flux's sharding label: controllers started with a shard reconcile only objects labelled with it.
SHARD_LABEL = "sharding.fluxcd.io/key"


def revision(commit: str) -> str:
    """How Flux names a commit of the branch in ``lastAppliedRevision``."""
    return f"{BRANCH}@sha1:{commit}"


def ready_condition(body: Body) -> Body:
    """The Ready condition of a Flux object, ``{}`` while it has none."""
    for item in (body.get("status") or {}).get("conditions", []):
        if item["type"] == "Ready":
            found: Body = item
            return found
    return {}


class _PortTaken(RuntimeError):
    """Another process bound a port handed to a controller before the controller did."""


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


def _state(process: _Process) -> str:
    if process.popen is None:
        return "stopped"
    code = process.popen.poll()
    return f"running, pid {process.pid}" if code is None else f"EXITED with code {code}"


def _line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)[-300:]


class FluxControllers:
    """source-controller and kustomize-controller on 127.0.0.1, as a context manager."""

    def __init__(
        self,
        cp: ControlPlane,
        tools: FluxTools,
        workdir: Path,
        *,
        free_port: Callable[[], int] = _free_port,
        shard: str | None = None,
    ) -> None:
        self.cp = cp
        self.tools = tools
        self.workdir = workdir
        # Where the controllers' ports come from; a test hands out one another process holds.
        self._free_port = free_port
        self._selector = f"{SHARD_LABEL}={shard}" if shard else f"!{SHARD_LABEL}"
        self._processes: list[_Process] = []
        self._before_stop: dict[str, str] = {}

    def start(self) -> FluxControllers:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Server-side: the Kustomization CRD is too large for client-side apply's annotation.
        applied = self.cp.kubectl(
            "apply", "--server-side", "-f", str(self.tools.crd_dir), "-o", "name"
        ).stdout.split()
        self.cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *applied)
        # source-controller refuses a storage path that does not exist yet.
        (self.workdir / "artifacts").mkdir(exist_ok=True)
        self._processes, self._before_stop = [], {}
        try:
            self._start_serving("source-controller", self._source_args, ("storage",))
            self._start_serving("kustomize-controller", self._kustomize_args, ())
        except BaseException:
            self.stop()
            raise
        return self

    def _source_args(self, ports: Mapping[str, int]) -> list[str]:
        return [
            str(self.tools.source_controller),
            "--watch-all-namespaces",
            f"--watch-label-selector={self._selector}",
            f"--storage-path={self.workdir / 'artifacts'}",
            f"--storage-addr={HOST}:{ports['storage']}",
            f"--storage-adv-addr={HOST}:{ports['storage']}",
        ]

    def _kustomize_args(self, ports: Mapping[str, int]) -> list[str]:
        return [
            str(self.tools.kustomize_controller),
            "--watch-all-namespaces",
            f"--watch-label-selector={self._selector}",
            f"--requeue-dependency={REQUEUE_DEPENDENCY}",
        ]

    def _start_serving(
        self,
        name: str,
        command: Callable[[Mapping[str, int]], list[str]],
        servers: tuple[str, ...],
    ) -> None:
        """Start ``name`` on fresh ports until it listens on every one of them itself: a port
        another process bound first (:mod:`tests.controlplane.listeners`) means a restart on new
        ones, not a controller that runs without its artifact server or metrics."""
        # A temp dir of its own: kustomize-controller (since Flux 1.9) deletes every
        # "kustomization-*" directory in its temp dir when it starts, taking them for leftovers of
        # an earlier crash of its own, and in a shared /tmp those are the live build directories of
        # every other kustomize-controller on the machine (another xdist worker's, a test's shard).
        temp_dir = self.temp_dir(name)
        temp_dir.mkdir(exist_ok=True)
        env = {"KUBECONFIG": str(self.cp.kubeconfig_path), "TMPDIR": str(temp_dir)}
        for attempt in range(1, START_ATTEMPTS + 1):
            ports = {what: self._free_port() for what in (*servers, "health", "metrics")}
            args = [
                *command(ports),
                f"--metrics-addr={HOST}:{ports['metrics']}",
                f"--health-addr={HOST}:{ports['health']}",
            ]
            process = _Process(name, args, self.workdir / f"{name}.log", env=env)
            # What this attempt logs, not an earlier attempt's bind error.
            offset = process.log_path.stat().st_size if process.log_path.exists() else 0
            self._processes.append(process)
            process.start()
            try:
                self._wait_serving(process, ports, offset)
                return
            except _PortTaken as taken:
                process.stop()
                self._processes.remove(process)
                with process.log_path.open("a", encoding="utf-8") as log:
                    log.write(f"=== attempt {attempt} of {START_ATTEMPTS} given up: {taken}\n")
                if attempt == START_ATTEMPTS:
                    raise RuntimeError(f"{name}: {taken}\n{process.log_tail()}") from taken

    def temp_dir(self, name: str) -> Path:
        """The ``TMPDIR`` of the controller ``name``: its own, under the workdir."""
        return self.workdir / f"{name}-tmp"

    def _wait_serving(self, process: _Process, ports: Mapping[str, int], offset: int) -> None:
        # Every port of ours must be a listening socket of this process. /readyz answers as soon
        # as the manager's HTTP servers start (before the workers run, flux/FACTS.md), but a
        # taken metrics port stops the manager only after its caches synced, and the artifact
        # server binds only then: a controller that loses either exits seconds after /readyz
        # said 200, and every GitRepository then waits forever for an artifact.
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        by_port = {port: what for what, port in ports.items()}
        while True:
            log = _read_from(process.log_path, offset)
            if process.pid is None or not process.running():
                if ADDRESS_IN_USE in log:
                    raise _PortTaken(f"{process.name} exited: {_line_with(log, ADDRESS_IN_USE)}")
                raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
            holders = port_holders(process.pid, set(by_port))
            if holders.others:
                taken = ", ".join(f"{by_port[p]} port {p}" for p in sorted(holders.others))
                raise _PortTaken(f"{process.name}: another process listens on its {taken}")
            if ADDRESS_IN_USE in log:
                raise _PortTaken(f"{process.name}: {_line_with(log, ADDRESS_IN_USE)}")
            missing = holders.missing(set(by_port))
            if not missing and _http_status(HOST, ports["health"], "/readyz", tls=False) == 200:
                return
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{by_port[p]} port {p}" for p in sorted(missing))
                raise RuntimeError(
                    f"{process.name} not serving ({waiting or '/readyz'}) within "
                    f"{STARTUP_TIMEOUT_SECONDS:.0f}s:\n{process.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        # Kept, with how each was doing, for a failure report written after the teardown.
        self._before_stop = {p.name: _state(p) for p in self._processes if p.popen is not None}
        for process in reversed(self._processes):
            process.stop()

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self._processes if p.pid is not None and p.running()}

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self._processes)

    def states(self, lines: int) -> list[tuple[str, str, str]]:
        """Per controller: (name, "running, pid N" or how it ended, its last ``lines`` of log)."""
        found = []
        for process in self._processes:
            state = _state(process)
            if process.popen is None:
                state = f"stopped at teardown (before that: {self._before_stop.get(process.name)})"
            found.append((process.name, state, process.log_tail(lines)))
        return found

    def check_running(self) -> None:
        """Raise with the log of a controller that has exited since it started: every Flux
        object would otherwise wait for it until its test's timeout."""
        for name, state, tail in self.states(40):
            if not state.startswith("running"):
                raise RuntimeError(f"{name} is not running ({state}); its log ends:\n{tail}")

    def __enter__(self) -> FluxControllers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class FluxApi:
    """Flux objects of one namespace on the test control plane: read, nudge, wait.

    Straight to the API (:meth:`ControlPlane.api`), no ``kubectl`` fork: the waits poll often."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.namespace = namespace

    def path(self, kind: str, name: str = "") -> str:
        """The API path of a Flux object (``kind`` as ``<plural>.<group>``) or, without a name,
        of its collection in this namespace."""
        plural, group = kind.split(".", 1)
        collection = f"/apis/{group}/{FLUX_API_VERSION}/namespaces/{self.namespace}/{plural}"
        return f"{collection}/{name}" if name else collection

    def get(self, kind: str, name: str) -> Body:
        body = self.cp.get(self.path(kind, name))
        if body is None:
            raise AssertionError(f"{kind} {self.namespace}/{name} does not exist")
        return body

    def kustomization(self, name: str) -> Body:
        return self.get(KUSTOMIZATIONS, name)

    def statuses(self) -> dict[str, Body]:
        """``{"<kind> <name>": status}`` of every GitRepository and Kustomization here, without
        the inventory and history lists (long, and never the cause of a stuck object)."""
        found: dict[str, Body] = {}
        for kind in (GIT_REPOSITORIES, KUSTOMIZATIONS):
            for item in (self.cp.get(self.path(kind)) or {"items": []})["items"]:
                status = {
                    key: value
                    for key, value in (item.get("status") or {}).items()
                    if key not in {"inventory", "history"}
                }
                found[f"{item['kind']} {item['metadata']['name']}"] = status
        return found

    def patch(self, kind: str, name: str, patch: Body) -> None:
        self.cp.api(
            "PATCH", self.path(kind, name), patch, content_type="application/merge-patch+json"
        )

    def reconcile_now(self, *kustomizations: str) -> None:
        """What ``flux reconcile kustomization --with-source`` does: annotate with a new value."""
        nudge = {"metadata": {"annotations": {RECONCILE_REQUESTED_AT: str(time.time_ns())}}}
        sources = self.cp.get(self.path(GIT_REPOSITORIES)) or {"items": []}
        for source in sources["items"]:
            self.patch(GIT_REPOSITORIES, source["metadata"]["name"], nudge)
        for name in kustomizations:
            self.patch(KUSTOMIZATIONS, name, nudge)

    def wait_kustomization(
        self, name: str, *, commit: str | None = None, ready: str = "True", timeout: float = 60.0
    ) -> Body:
        """Wait until the Kustomization's Ready is ``ready`` for ``commit`` (attempted, and for
        ``True`` also applied); return the Kustomization."""
        deadline = time.monotonic() + timeout
        last: Body = {}
        while time.monotonic() < deadline:
            last = self.kustomization(name)
            status = last.get("status") or {}
            condition = ready_condition(last)
            at_commit = commit is None or status.get("lastAttemptedRevision") == revision(commit)
            if ready == "True" and commit is not None:
                at_commit = at_commit and status.get("lastAppliedRevision") == revision(commit)
            if (
                condition.get("status") == ready
                and at_commit
                and condition.get("observedGeneration", 0) >= last["metadata"]["generation"]
            ):
                return last
            time.sleep(POLL_SECONDS)
        raise AssertionError(
            f"Kustomization {name} not Ready={ready} at {commit} within {timeout}s; "
            f"status: {json.dumps(last.get('status'), indent=1)}"
        )
