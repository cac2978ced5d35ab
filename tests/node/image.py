"""The operator's image, built from the project's Dockerfile with podman (runc) for the node tests.

Owns three steps, each cached:

- the base image: registries for base images (Docker Hub, ghcr) are not reachable here, so a
  stand-in for ``python:3.11-slim-bookworm`` is made from Debian's own packages with
  ``mmdebstrap`` (Python 3.11 from bookworm and its security updates) into
  ``<cache>/controlplane/debian-base-<key>/bin/base.tar``, then ``podman import``-ed as
  ``localhost/matrix-invite-base:<key>``. ``<key>`` hashes the mmdebstrap command.
- the image: ``podman build`` of the repository's Dockerfile with that base passed through the
  Dockerfile's ``PYTHON_IMAGE`` build argument (the real base stays the default for releases).
  podman's layer cache makes a rebuild with unchanged sources take seconds.
- a ``podman save`` archive that a node's containerd imports.

podman runs with runc and a containers.conf of our own (:func:`podman_command`): crun refuses this
machine's hybrid cgroups, and podman's default ulimits make the runtime call setrlimit, which the
sandbox refuses (NODE-FACTS). The build's RUN steps use the host's network (``--network host``):
pip needs PyPI, and nothing is started that listens.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.controlplane.build import BuildError, build_once, cache_root

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNC = "/usr/sbin/runc"
BASE_SUITE = "bookworm"
# python3-venv because the Dockerfile's build stage makes a virtualenv; python-is-python3 because
# it calls `python` like the official image has it. Documentation and translations are left out.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_MIRRORS = (
    f"deb http://deb.debian.org/debian {BASE_SUITE} main",
    f"deb http://deb.debian.org/debian {BASE_SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {BASE_SUITE}-security main",
)
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
IMAGE_NAME = "localhost/matrix-invite-operator"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_TIMEOUT_SECONDS = 1800
CONTAINERS_CONF = """\
# Written by tests/node/image.py for podman on this machine kind (tests/node/README in the module
# docstring): runc, no default ulimits, cgroupfs.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


@dataclass(frozen=True)
class OperatorImage:
    """The built image: its name (``localhost/...:tag``), id, size and a saved archive."""

    name: str
    image_id: str
    size_bytes: int
    archive: Path


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(
            f"{name!r} is not installed; `make node-packages` (part of `make test`) installs "
            "Debian's podman, runc, containerd, containernetworking-plugins, iptables and "
            "mmdebstrap"
        )
    return path


def podman_command(*args: str) -> list[str]:
    """``podman --runtime runc ARGS`` (the containers.conf comes from :func:`podman_env`)."""
    if not os.access(RUNC, os.X_OK):
        _tool("runc")
    return [_tool("podman"), "--runtime", RUNC, *args]


def podman_env() -> dict[str, str]:
    conf = cache_root() / "podman-containers.conf"
    if not conf.exists() or conf.read_text(encoding="utf-8") != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        tmp = conf.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(CONTAINERS_CONF, encoding="utf-8")
        os.replace(tmp, conf)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, timeout: float = 300, what: str = "") -> str:
    """Run podman; its stdout, or :class:`BuildError` with its output."""
    cmd = podman_command(*args)
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=podman_env(),
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BuildError(
            f"{what or 'podman'} failed ({result.returncode}): {' '.join(cmd)}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def _base_command(target: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=apt",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
        BASE_SUITE,
        str(target),
        *BASE_MIRRORS,
    ]


def base_key() -> str:
    digest = hashlib.sha256(" ".join(_base_command(Path("base.tar"))).encode()).hexdigest()
    return digest[:16]


def ensure_base_image() -> str:
    """The Debian stand-in base image's name, made with mmdebstrap and imported on first use."""
    _tool("mmdebstrap")
    key = base_key()

    def build(staging: Path) -> None:
        started = time.monotonic()
        tar = staging / "base.tar"
        result = subprocess.run(
            _base_command(tar),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise BuildError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-4000:]}")
        print(f"node: made the base image in {time.monotonic() - started:.0f}s", file=sys.stderr)

    bin_dir = build_once(
        cache_root() / f"debian-base-{key}",
        lambda d: (d / "base.tar").is_file(),
        build,
        f"a Debian {BASE_SUITE} base image with mmdebstrap",
    )
    name = f"localhost/matrix-invite-base:{key}"
    exists = subprocess.run(
        podman_command("image", "exists", name), env=podman_env(), check=False
    ).returncode
    if exists != 0:
        podman("import", str(bin_dir / "base.tar"), name, what="podman import of the base")
    return name


def build_operator_image(tag: str = "test") -> OperatorImage:
    """``podman build`` of the Dockerfile on the Debian base; the image and a saved archive."""
    base = ensure_base_image()
    name = f"{IMAGE_NAME}:{tag}"
    lock_path = cache_root() / "images" / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time (pytest workers): the second one then finds every layer cached.
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(base, name)


def _build_locked(base: str, name: str) -> OperatorImage:
    started = time.monotonic()
    podman(
        "build",
        "--network",
        "host",
        # The host's trust store for pip's HTTPS (Debian's pip reads the system bundle): this
        # machine reaches PyPI through a proxy whose CA only the host trusts. A build volume is
        # not part of any layer.
        "--volume",
        f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--tag",
        name,
        "--file",
        str(REPO_ROOT / "Dockerfile"),
        str(REPO_ROOT),
        timeout=BUILD_TIMEOUT_SECONDS,
        what="podman build of the Dockerfile",
    )
    print(f"node: podman build took {time.monotonic() - started:.0f}s", file=sys.stderr)
    inspected = json.loads(podman("image", "inspect", name))[0]
    archive = cache_root() / "images" / f"{inspected['Id'][:16]}.tar"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(f".tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        podman("save", "-o", str(tmp), name, what="podman save")
        os.replace(tmp, archive)
    return OperatorImage(
        name=name, image_id=inspected["Id"], size_bytes=int(inspected["Size"]), archive=archive
    )


def run_in_image(
    image: str, *args: str, entrypoint: str | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman run --rm --read-only --network none`` of the image; never raises on exit codes."""
    options = ["run", "--rm", "--read-only", "--network", "none"]
    if entrypoint is not None:
        options += ["--entrypoint", entrypoint]
    if user is not None:
        options += ["--user", user]
    return subprocess.run(
        podman_command(*options, image, *args),
        capture_output=True,
        text=True,
        timeout=120,
        env=podman_env(),
        check=False,
        stdin=subprocess.DEVNULL,
    )
