"""Builds and caches the GitOps tools: Flux's kustomize-controller and source-controller, sops, age.

Owns the recipe that turns the pinned Go modules into executables plus the controllers' CRDs::

    ${MATRIX_INVITE_CACHE:-~/.cache/matrix-invite-operator}/controlplane/<key>/bin/
        kustomize-controller  source-controller  sops  age  age-keygen  crds/*.yaml

``<key>`` names the pins and hashes the recipe, so a new pin rebuilds and nothing else does. The
build runs under :func:`tests.controlplane.build.build_once` (file lock, atomic rename), from
``python -m tests.controlplane.build``, the step ``make test`` and ``make controlplane`` run.

The controllers cannot be built with ``go install <module>@<version>``: their go.mod replaces the
nested ``api`` module with ``./api``, which the module zip does not contain. The recipe
(flux/FACTS.md): download the module, copy it somewhere writable, require the published ``api``
module instead of the replacement, and for source-controller substitute ``fluxcd/pkg/artifact``
v0.18.0 for v0.18.3, whose zip the module proxy refuses (the two differ only in dependency
versions). sops and age have no such replacements and install directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.controlplane.build import STRIP_LDFLAGS, build_once, cache_root, run_go

FLUX_VERSION = "v1.9.6"
CONTROLLERS = ("kustomize-controller", "source-controller")
SUBSTITUTES = {
    "source-controller": (
        "github.com/fluxcd/pkg/artifact@v0.18.3",
        "github.com/fluxcd/pkg/artifact@v0.18.0",
    ),
}
SOPS_VERSION = "v3.13.3"
AGE_VERSION = "v1.3.2"
INSTALLS = (
    f"github.com/getsops/sops/v3/cmd/sops@{SOPS_VERSION}",
    f"filippo.io/age/cmd/age@{AGE_VERSION}",
    f"filippo.io/age/cmd/age-keygen@{AGE_VERSION}",
)
BINARY_NAMES = (*CONTROLLERS, "sops", "age", "age-keygen")
# Bump when the recipe below changes in a way the pins do not show.
RECIPE_REVISION = 1


@dataclass(frozen=True)
class FluxTools:
    """Absolute paths of the built GitOps tools and the controllers' CRDs."""

    bin_dir: Path

    @property
    def kustomize_controller(self) -> Path:
        return self.bin_dir / "kustomize-controller"

    @property
    def source_controller(self) -> Path:
        return self.bin_dir / "source-controller"

    @property
    def sops(self) -> Path:
        return self.bin_dir / "sops"

    @property
    def age_keygen(self) -> Path:
        return self.bin_dir / "age-keygen"

    @property
    def crd_dir(self) -> Path:
        return self.bin_dir / "crds"


def flux_cache_key() -> str:
    recipe = json.dumps(
        [FLUX_VERSION, SUBSTITUTES, INSTALLS, STRIP_LDFLAGS, RECIPE_REVISION], sort_keys=True
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return f"flux-{FLUX_VERSION}_sops-{SOPS_VERSION}_age-{AGE_VERSION}_{digest}"


def _complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARY_NAMES) and any(
        (bin_dir / "crds").glob("*.yaml")
    )


def _module_dir(module: str, workdir: Path) -> Path:
    """Download ``module`` (``path@version``) into the module cache and return its directory."""
    probe = workdir / "probe"
    if not probe.exists():
        probe.mkdir()
        run_go(["mod", "init", "probe"], probe, goflags="")
    answer = json.loads(run_go(["mod", "download", "-json", module], probe, goflags=""))
    return Path(answer["Dir"])


def _build_controller(name: str, out_dir: Path, workdir: Path) -> None:
    module = f"github.com/fluxcd/{name}"
    source = workdir / name
    # The module cache is read-only; the go.mod edits need a writable copy.
    shutil.copytree(_module_dir(f"{module}@{FLUX_VERSION}", workdir), source)
    for path in source.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    (source / "go.mod").chmod(0o644)
    edit = ["mod", "edit", f"-dropreplace={module}/api", f"-require={module}/api@{FLUX_VERSION}"]
    run_go(edit, source, goflags="")
    # Without the download, the build stops at "missing go.sum entry" for the api module.
    run_go(["mod", "download", f"{module}/api"], source, goflags="")
    if name in SUBSTITUTES:
        refused, served = SUBSTITUTES[name]
        run_go(["mod", "edit", f"-replace={refused}={served}"], source, goflags="")
        run_go(["mod", "download", served.split("@")[0]], source, goflags="")
    started = time.monotonic()
    run_go(
        ["build", "-trimpath", "-ldflags", STRIP_LDFLAGS, "-o", str(out_dir / name), "."],
        source,
        what=f"go build of {name} {FLUX_VERSION}",
    )
    print(f"controlplane: built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    (out_dir / "crds").mkdir(exist_ok=True)
    for crd in sorted((source / "config" / "crd" / "bases").glob("*.yaml")):
        shutil.copyfile(crd, out_dir / "crds" / crd.name)


def _build(staging: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="flux-src-") as tmp:
        workdir = Path(tmp)
        for name in CONTROLLERS:
            _build_controller(name, staging, workdir)
        for package in INSTALLS:
            started = time.monotonic()
            run_go(
                ["install", "-trimpath", "-ldflags", STRIP_LDFLAGS, package],
                workdir,
                goflags="",
                extra_env={"GOBIN": str(staging)},
                what=f"go install {package}",
            )
            print(
                f"controlplane: built {package} in {time.monotonic() - started:.0f}s",
                file=sys.stderr,
            )


def ensure_flux() -> FluxTools:
    """Return the cached GitOps tools for the current pins, building them first if needed
    (first time: about 10 minutes on 2 cores; with the guarantees of ``build_once``)."""
    bin_dir = build_once(
        cache_root() / flux_cache_key(),
        _complete,
        _build,
        f"Flux controllers {FLUX_VERSION}, sops {SOPS_VERSION} and age {AGE_VERSION}",
    )
    return FluxTools(bin_dir)
