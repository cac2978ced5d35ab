"""Plays the kubelet's part for a Secret volume: keys of a Secret become files the operator reads.

In a cluster the operator's Pod mounts its credentials Secrets and the kubelet rewrites the files
when the Secret changes. The test control plane has no kubelet and runs no Pods, so this
projector does that one job for the GitOps tests: it polls the Secrets Flux decrypted and applied,
and writes each watched key to its file with an atomic rename (the kubelet swaps a symlink, the
same all-or-nothing change). Only the path from Secret to file is simulated; what lands in the
Secret is real Flux (kustomize-controller's SOPS decryption of what was committed).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tests.controlplane.cluster import ControlPlane

POLL_SECONDS = 0.25  # one HTTPS GET per Secret, no process


class SecretProjector:
    """``{(secret name, key): file}``; a thread rewrites each file when its key's value changes."""

    def __init__(
        self, cp: ControlPlane, namespace: str, files: Mapping[tuple[str, str], Path]
    ) -> None:
        self.cp = cp
        self.namespace = namespace
        self.files = dict(files)
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="secret-projector", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.project_once()

    def project_once(self) -> None:
        for secret in {name for name, _ in self.files}:
            body = self.cp.get(f"/api/v1/namespaces/{self.namespace}/secrets/{secret}")
            if body is None:
                continue
            data = body.get("data") or {}
            for (name, key), path in self.files.items():
                if name != secret or key not in data:
                    continue
                value = base64.b64decode(data[key])
                if path.exists() and path.read_bytes() == value:
                    continue
                staged = path.with_name(f".{path.name}.projected")
                staged.write_bytes(value)
                os.replace(staged, path)
                self.writes += 1

    def __enter__(self) -> SecretProjector:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
