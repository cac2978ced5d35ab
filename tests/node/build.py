"""Builds and caches the node binaries: kubelet, kube-proxy, kube-scheduler and a pause process.

Owns the recipe for the parts of a real node that come from Go, next to the control plane's::

    ${MATRIX_INVITE_CACHE:-~/.cache/matrix-invite-operator}/controlplane/<key>/bin/
        kubelet  kube-proxy  kube-scheduler  pause

kubelet, kube-proxy and kube-scheduler are main packages of the very ``k8s.io/kubernetes`` module
the API server is built from: they are built in a copy of the control plane's wrapper module
(``tests/controlplane/go/kube``: its go.mod and go.sum, so the same pin and the same 31 staging
``replace``s), never in the wrapper itself, whose files key the control plane's cache. ``pause``
(``go/pause``) is the Pod sandbox's process: registry.k8s.io is not reachable here.

``<key>`` names the Kubernetes pin and hashes the wrapper's go.mod and go.sum, the pause source
and the link flags, so a new pin rebuilds and nothing else does; the build runs under
:func:`tests.controlplane.build.build_once` (file lock, atomic rename). ``make node`` (part of
``make test``) runs ``python -m tests.node.build``, which also builds the operator's image
(tests/node/image.py) before the suite starts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.controlplane.build import (
    KUBE_MODULE,
    STRIP_LDFLAGS,
    BuildError,
    build_once,
    cache_root,
    kube_ldflags,
    kube_version,
    run_go,
)
from tests.node.image import build_operator_image

PAUSE_MODULE = Path(__file__).resolve().parent / "go" / "pause"
KUBE_COMMANDS = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
}
BINARY_NAMES = (*KUBE_COMMANDS, "pause")
# Bump when the recipe below changes in a way the hashed files do not show.
RECIPE_REVISION = 1


@dataclass(frozen=True)
class NodeBinaries:
    """Absolute paths of the built node executables."""

    bin_dir: Path

    @property
    def kubelet(self) -> Path:
        return self.bin_dir / "kubelet"

    @property
    def kube_proxy(self) -> Path:
        return self.bin_dir / "kube-proxy"

    @property
    def kube_scheduler(self) -> Path:
        return self.bin_dir / "kube-scheduler"

    @property
    def pause(self) -> Path:
        return self.bin_dir / "pause"


def node_cache_key() -> str:
    digest = hashlib.sha256()
    digest.update(f"{RECIPE_REVISION}\0{kube_ldflags(kube_version())}\0".encode())
    digest.update(" ".join(sorted(KUBE_COMMANDS.values())).encode() + b"\0")
    for path in (KUBE_MODULE / "go.mod", KUBE_MODULE / "go.sum"):
        digest.update(path.read_bytes() + b"\0")
    for path in sorted(PAUSE_MODULE.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"node-{kube_version()}_{digest.hexdigest()[:16]}"


def _complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARY_NAMES)


def _build(staging: Path) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="node-module-") as module:
        # A module root with no packages of its own: only the wrapper's requirements.
        for name in ("go.mod", "go.sum"):
            shutil.copy(KUBE_MODULE / name, Path(module) / name)
        run_go(
            [
                "build",
                "-trimpath",
                "-ldflags",
                kube_ldflags(kube_version()),
                "-o",
                f"{staging}{os.sep}",
                *KUBE_COMMANDS.values(),
            ],
            Path(module),
            what="go build of kubelet, kube-proxy and kube-scheduler",
        )
    run_go(
        ["build", "-trimpath", "-ldflags", STRIP_LDFLAGS, "-o", str(staging / "pause"), "."],
        PAUSE_MODULE,
        what="go build of pause",
    )
    print(f"node: built in {time.monotonic() - started:.0f}s", file=sys.stderr)


def ensure_node_binaries() -> NodeBinaries:
    """Return the cached node binaries for the current pin, building them first if needed;
    :class:`~tests.controlplane.build.BuildError` on any failure."""
    bin_dir = build_once(
        cache_root() / node_cache_key(),
        _complete,
        _build,
        f"kubelet, kube-proxy and kube-scheduler {kube_version()} (first build: minutes)",
    )
    return NodeBinaries(bin_dir)


def main() -> int:
    # The operator's image too (base, layers, saved archive): built here, before the suite, its
    # first build (minutes of mmdebstrap, pip and compression on a new machine) does not run
    # beside the timing-sensitive tests of the other workers. The session fixture then finds
    # every layer cached and takes seconds.
    try:
        binaries = ensure_node_binaries()
        image = build_operator_image()
    except BuildError as exc:
        print(f"node: BUILD FAILED: {exc}", file=sys.stderr)
        return 1
    print(binaries.bin_dir)
    print(f"{image.name} ({image.size_bytes / 1e6:.1f} MB), archive {image.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
