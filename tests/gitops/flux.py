"""Flux's source-controller and kustomize-controller, running against the test control plane.

Owns their lifecycle (started by PID with the flags flux/FACTS.md found for running outside a
cluster, logs in ``<workdir>/<name>.log``, stopped by PID like the control plane's processes),
the CRDs they ship, and what tests ask of Flux objects: read a Kustomization, ask for a
reconciliation now, wait until a commit is applied.

Both controllers watch all namespaces and act as the control plane's admin (``system:masters``),
as flux/FACTS.md observed is enough: no ServiceAccount, no leader election.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.controlplane.cluster import ControlPlane, _free_port, _http_status, _Process
from tests.controlplane.flux_build import FluxTools

Body = dict[str, Any]
HOST = "127.0.0.1"
BRANCH = "main"
STARTUP_TIMEOUT_SECONDS = 60.0
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


class FluxControllers:
    """source-controller and kustomize-controller on 127.0.0.1, as a context manager."""

    def __init__(self, cp: ControlPlane, tools: FluxTools, workdir: Path) -> None:
        self.cp = cp
        self.tools = tools
        self.workdir = workdir
        self._processes: list[_Process] = []

    def start(self) -> FluxControllers:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Server-side: the Kustomization CRD is too large for client-side apply's annotation.
        applied = self.cp.kubectl(
            "apply", "--server-side", "-f", str(self.tools.crd_dir), "-o", "name"
        ).stdout.split()
        self.cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *applied)
        env = {"KUBECONFIG": str(self.cp.kubeconfig_path)}
        storage_port = _free_port()
        # source-controller refuses a storage path that does not exist yet.
        (self.workdir / "artifacts").mkdir(exist_ok=True)
        source = [
            str(self.tools.source_controller),
            "--watch-all-namespaces",
            f"--storage-path={self.workdir / 'artifacts'}",
            f"--storage-addr={HOST}:{storage_port}",
            f"--storage-adv-addr={HOST}:{storage_port}",
        ]
        kustomize = [
            str(self.tools.kustomize_controller),
            "--watch-all-namespaces",
            f"--requeue-dependency={REQUEUE_DEPENDENCY}",
        ]
        try:
            for name, args in (("source-controller", source), ("kustomize-controller", kustomize)):
                health_port = _free_port()
                args += [
                    f"--metrics-addr={HOST}:{_free_port()}",
                    f"--health-addr={HOST}:{health_port}",
                ]
                process = _Process(name, args, self.workdir / f"{name}.log", env=env)
                self._processes.append(process)
                process.start()
                self._wait_healthy(process, health_port)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, process: _Process, port: int) -> None:
        # /readyz answers before the workers run (flux/FACTS.md): tests wait on objects' status.
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while _http_status(HOST, port, "/readyz", tls=False) != 200:
            if not process.running():
                raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} not ready:\n{process.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self._processes if p.pid is not None and p.running()}

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self._processes)

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
