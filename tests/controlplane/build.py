"""Builds and caches the control-plane binaries.

The binaries: etcd, kube-apiserver, kube-controller-manager and kubectl.

Owns the translation from the Go wrapper modules under ``tests/controlplane/go/`` to executables
in a cache directory outside the repository::

    ${MATRIX_INVITE_CACHE:-~/.cache/matrix-invite-operator}/controlplane/<key>/bin/

``<key>`` names the pinned Kubernetes and etcd versions plus a hash of every go.mod, go.sum and Go
source file and of the link flags, so editing any of them triggers a rebuild and nothing else does.
A build goes to a temporary directory that is renamed into place, under a file lock, so concurrent
pytest workers (or a demo and a test run) never see half-written binaries or build twice.

The kstatus checker (``tests/kstatus/``, the real ``sigs.k8s.io/cli-utils`` kstatus library for
the status tests) is cached the same way, under ``kstatus-<cli-utils version>_<hash>/bin/``, with a
key of its own so that neither pin rebuilds the other.

helm (``go/helm/``, for the chart tests in ``tests/deploy``) is cached the same way, under
``helm-<helm version>_<hash>/bin/``; the control plane's key covers only ``go/etcd`` and
``go/kube``.

The Flux controllers, sops and age (for the GitOps tests in ``tests/gitops``) have their own key
and recipe in :mod:`tests.controlplane.flux_build`.

Run ``python -m tests.controlplane.build`` to build all of them (if needed) and print the control
plane's bin directory, then the kstatus binary, then helm, then the GitOps tools' directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"
KUBE_MODULE = GO_DIR / "kube"
ETCD_MODULE = GO_DIR / "etcd"
KSTATUS_MODULE = GO_DIR.parents[1] / "kstatus"
HELM_MODULE = GO_DIR / "helm"

BINARY_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
KSTATUS_NAME = "kstatus"
HELM_NAME = "helm"
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"

# A cold build compiles ~2000 packages on 2 cores; only a hung toolchain should ever hit this.
BUILD_TIMEOUT_SECONDS = 3600
OUTPUT_TAIL_LINES = 60
# No symbol table or DWARF: halves the binaries and the link time.
STRIP_LDFLAGS = "-s -w"


class BuildError(RuntimeError):
    """The Go toolchain is missing or a ``go build`` failed; the message carries its output tail."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the four built executables."""

    bin_dir: Path
    kube_version: str
    etcd_version: str

    @property
    def etcd(self) -> Path:
        return self.bin_dir / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.bin_dir / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.bin_dir / "kube-controller-manager"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"


def _required_version(go_mod: Path, module: str) -> str:
    text = go_mod.read_text(encoding="utf-8")
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise BuildError(f"{go_mod} does not require {module}")
    return match.group(1)


def kube_version() -> str:
    """The pinned ``k8s.io/kubernetes`` version, e.g. ``v1.34.12``."""
    return _required_version(KUBE_MODULE / "go.mod", "k8s.io/kubernetes")


def etcd_version() -> str:
    """The pinned ``go.etcd.io/etcd/server/v3`` version, e.g. ``v3.6.16``."""
    return _required_version(ETCD_MODULE / "go.mod", "go.etcd.io/etcd/server/v3")


def kstatus_version() -> str:
    """The pinned ``sigs.k8s.io/cli-utils`` version of the kstatus checker, e.g. ``v0.37.2``."""
    return _required_version(KSTATUS_MODULE / "go.mod", "sigs.k8s.io/cli-utils")


def kube_ldflags(version: str) -> str:
    """Link flags that stamp the real version; without them the server reports v0.0.0."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+.*", version)
    if match is None:
        raise BuildError(f"unexpected Kubernetes version {version!r}")
    major, minor = match.groups()
    flags = [STRIP_LDFLAGS]
    # kubectl reports its client version from client-go's copy of these variables.
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _source_files(root: Path = GO_DIR) -> list[Path]:
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and (p.suffix == ".go" or p.name in {"go.mod", "go.sum"})
    ]
    return sorted(files)


def cache_key() -> str:
    """Directory name for the current pins: versions for humans, a content hash for correctness."""
    kube, etcd = kube_version(), etcd_version()
    digest = hashlib.sha256()
    digest.update(f"{STRIP_LDFLAGS}\0{kube_ldflags(kube)}\0".encode())
    for path in [*_source_files(ETCD_MODULE), *_source_files(KUBE_MODULE)]:
        digest.update(path.relative_to(GO_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"kube-{kube}_etcd-{etcd}_{digest.hexdigest()[:16]}"


def kstatus_cache_key() -> str:
    """Directory name for the kstatus checker: its cli-utils pin plus a hash of its module."""
    digest = hashlib.sha256()
    digest.update(f"{STRIP_LDFLAGS}\0".encode())
    for path in _source_files(KSTATUS_MODULE):
        digest.update(path.relative_to(KSTATUS_MODULE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"kstatus-{kstatus_version()}_{digest.hexdigest()[:16]}"


def cache_root() -> Path:
    """``$MATRIX_INVITE_CACHE`` or ``~/.cache/matrix-invite-operator``."""
    configured = os.environ.get("MATRIX_INVITE_CACHE")
    base = Path(configured) if configured else Path.home() / ".cache" / "matrix-invite-operator"
    return base.expanduser() / "controlplane"


def _complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARY_NAMES)


def run_go(
    args: list[str],
    cwd: Path,
    *,
    goflags: str = "-mod=mod -buildvcs=false",
    extra_env: Mapping[str, str] | None = None,
    what: str = "",
) -> str:
    """Run ``go <args>`` in ``cwd`` for a build; return its output, raise :class:`BuildError`."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the Go toolchain ('go') is not on PATH; it is needed to build the test control plane"
        )
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    # Never fetch another toolchain: the pins were chosen to build with the installed one.
    env["GOTOOLCHAIN"] = "local"
    # -buildvcs=false: the wrapper modules live inside this git repository, whose state is
    # irrelevant to the binaries and may not even have a commit yet.
    env["GOFLAGS"] = goflags
    env.update(extra_env or {})
    cmd = [go, *args]
    what = what or f"go {args[0]} in {cwd}"
    try:
        result = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (
            exc.stderr
            if isinstance(exc.stderr, str)
            else (exc.stderr or b"").decode(errors="replace")
        )
        raise BuildError(
            f"{what} timed out after {BUILD_TIMEOUT_SECONDS}s\n{_tail(output)}"
        ) from exc
    if result.returncode != 0:
        raise BuildError(
            f"{what} failed with exit code {result.returncode}: {' '.join(cmd)}\n"
            f"{_tail(result.stdout + result.stderr)}"
        )
    return result.stdout


def _go_build(module: Path, out_dir: Path, ldflags: str, packages: str = "./cmd/...") -> None:
    started = time.monotonic()
    # With a trailing slash, -o means a directory and Go names each binary after its package.
    run_go(
        ["build", "-trimpath", "-ldflags", ldflags, "-o", f"{out_dir}{os.sep}", packages],
        module,
        what=f"go build in {module}",
    )
    print(
        f"controlplane: built {module.name} in {time.monotonic() - started:.0f}s", file=sys.stderr
    )


def _tail(output: str) -> str:
    return "\n".join(output.splitlines()[-OUTPUT_TAIL_LINES:])


def build_once(
    key_dir: Path, complete: Callable[[Path], bool], build: Callable[[Path], None], what: str
) -> Path:
    """Return ``key_dir/bin`` once ``complete`` holds for it, running ``build(staging)`` if needed.

    One builder under a file lock (the others wait on it), into a temporary directory renamed
    into place, so nobody ever sees half-written files; :class:`BuildError` on any failure.
    """
    bin_dir = key_dir / "bin"
    if complete(bin_dir):
        return bin_dir
    key_dir.mkdir(parents=True, exist_ok=True)
    with open(key_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete(bin_dir):
            return bin_dir
        if bin_dir.exists():
            # Only reachable if someone deleted a file by hand: start over.
            shutil.rmtree(bin_dir)
        print(f"controlplane: building {what} into {bin_dir}", file=sys.stderr)
        staging = Path(tempfile.mkdtemp(prefix="bin.tmp-", dir=key_dir))
        try:
            build(staging)
            if not complete(staging):
                raise BuildError(f"the build of {what} left {staging} incomplete")
            # mkdtemp creates 0700; the binaries' directory should be like any other.
            staging.chmod(0o755)
            os.rename(staging, bin_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return bin_dir


def ensure_binaries() -> Binaries:
    """Return the cached binaries for the current pins, building them first if needed.

    Safe to call from several processes at once (see :func:`build_once`): one builds, the others
    wait on the lock. Raises :class:`BuildError` on any failure.
    """
    kube, etcd = kube_version(), etcd_version()

    def build(staging: Path) -> None:
        _go_build(ETCD_MODULE, staging, STRIP_LDFLAGS)
        _go_build(KUBE_MODULE, staging, kube_ldflags(kube))

    bin_dir = build_once(
        cache_root() / cache_key(),
        _complete,
        build,
        f"Kubernetes {kube} and etcd {etcd} (the first build downloads modules and takes many "
        "minutes)",
    )
    return Binaries(bin_dir=bin_dir, kube_version=kube, etcd_version=etcd)


def ensure_kstatus() -> Path:
    """Return the cached kstatus checker for the current pin, building it first if needed
    (with the guarantees of :func:`build_once`)."""

    def build(staging: Path) -> None:
        # The main package is the module root, so the binary is named after the module path.
        _go_build(KSTATUS_MODULE, staging, STRIP_LDFLAGS, packages=".")

    bin_dir = build_once(
        cache_root() / kstatus_cache_key(),
        lambda d: os.access(d / KSTATUS_NAME, os.X_OK),
        build,
        f"the kstatus checker (cli-utils {kstatus_version()})",
    )
    return bin_dir / KSTATUS_NAME


def helm_version() -> str:
    """The pinned ``helm.sh/helm/v3`` version, e.g. ``v3.22.0``."""
    return _required_version(HELM_MODULE / "go.mod", "helm.sh/helm/v3")


def helm_ldflags() -> str:
    """Link flags as helm's Makefile sets them: its version, and the Kubernetes version that
    `helm template` and `helm lint` assume (1.<client-go minor>); without them v1.20.0."""
    client_go = _required_version(HELM_MODULE / "go.mod", "k8s.io/client-go")
    match = re.fullmatch(r"v0\.(\d+)\.\d+.*", client_go)
    if match is None:
        raise BuildError(f"unexpected k8s.io/client-go version {client_go!r} in helm's go.mod")
    flags = [STRIP_LDFLAGS, f"-X helm.sh/helm/v3/internal/version.version={helm_version()}"]
    for package in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {package}.k8sVersionMajor=1", f"-X {package}.k8sVersionMinor={match[1]}"]
    return " ".join(flags)


def helm_cache_key() -> str:
    """Directory name for helm: its pin plus a hash of its wrapper module and link flags."""
    digest = hashlib.sha256()
    digest.update(f"{helm_ldflags()}\0".encode())
    for path in _source_files(HELM_MODULE):
        digest.update(path.relative_to(HELM_MODULE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"helm-{helm_version()}_{digest.hexdigest()[:16]}"


def ensure_helm() -> Path:
    """Return the cached helm for the current pin, building it first if needed (with the
    guarantees of :func:`build_once`)."""

    def build(staging: Path) -> None:
        # helm's command is a main package of the required module (a `tool` in go.mod).
        _go_build(HELM_MODULE, staging, helm_ldflags(), packages=HELM_PACKAGE)

    bin_dir = build_once(
        cache_root() / helm_cache_key(),
        lambda d: os.access(d / HELM_NAME, os.X_OK),
        build,
        f"helm {helm_version()}",
    )
    return bin_dir / HELM_NAME


def main() -> int:
    # Imported here: the Flux recipe builds on this module's helpers.
    from tests.controlplane.flux_build import ensure_flux

    try:
        binaries = ensure_binaries()
        kstatus = ensure_kstatus()
        helm = ensure_helm()
        flux = ensure_flux()
    except BuildError as exc:
        print(f"controlplane: BUILD FAILED: {exc}", file=sys.stderr)
        return 1
    print(binaries.bin_dir)
    print(kstatus)
    print(helm)
    print(flux.bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
