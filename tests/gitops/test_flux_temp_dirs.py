"""Each kustomize-controller the tests start keeps its build directories out of every other's way.

kustomize-controller 1.9 deletes every ``kustomization-*`` directory in its temp dir when it starts
(leftovers of an earlier crash, it assumes). With the shared ``/tmp`` those are the live build
directories of every other kustomize-controller on the machine, so a controller starting on one
xdist worker made another worker's Kustomization fail with "kustomize build failed: ... lstat
/tmp/kustomization-...: no such file or directory" (seen in CI on main 84f873e).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.controlplane.cluster import ControlPlane
from tests.controlplane.flux_build import FluxTools
from tests.gitops.flux import FluxControllers

pytestmark = pytest.mark.integration

PURGE_TIMEOUT_SECONDS = 30.0


def test_a_starting_kustomize_controller_leaves_other_controllers_build_dirs_alone(
    control_plane: ControlPlane, flux_tools: FluxTools, tmp_path: Path
) -> None:
    flux = FluxControllers(control_plane, flux_tools, tmp_path / "flux", shard="temp-dirs")
    own = flux.temp_dir("kustomize-controller")
    own.mkdir(parents=True)
    # A leftover in its own temp dir: proof that the purge ran at all.
    stale = own / "kustomization-stale"
    stale.mkdir()
    # What another kustomize-controller is building from right now, where it would be without
    # a temp dir of its own.
    busy = Path(tempfile.gettempdir()) / f"kustomization-busy-{uuid.uuid4().hex}"
    busy.mkdir()
    try:
        with flux:
            deadline = time.monotonic() + PURGE_TIMEOUT_SECONDS
            while stale.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not stale.exists(), (
                f"kustomize-controller did not purge {stale} within {PURGE_TIMEOUT_SECONDS:.0f}s: "
                f"it does not use its own temp dir\n{flux.log_tails()}"
            )
            assert busy.is_dir(), f"kustomize-controller deleted {busy}:\n{flux.log_tails()}"
    finally:
        if busy.exists():
            busy.rmdir()
