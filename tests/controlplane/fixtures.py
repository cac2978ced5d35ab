"""Pytest fixtures for tests that need a real Kubernetes API (register with
``pytest_plugins = ["tests.controlplane.fixtures"]``).

- ``control_plane_identities`` (session): extra static identities ``{user: [groups]}``; ``{}`` by
  default. Override it in a conftest to add e.g. ``{"operator": ["matrix-invite:operators"]}``.
- ``control_plane`` (session): a started :class:`~tests.controlplane.cluster.ControlPlane`, with
  ``<repo>/crds`` applied and Established when it holds YAML files. Besides the requested
  identities it always has ``unprivileged`` (no groups, no RBAC grants) for negative tests.
- ``namespace`` (function): a fresh namespace with a random name, deleted afterwards without
  waiting for finalisation.

Building the binaries (first run: many minutes) happens inside ``control_plane``; a failed build
is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.controlplane.build import ensure_binaries
from tests.controlplane.cluster import ApiError, ControlPlane

REPO_ROOT = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO_ROOT / "crds"
UNPRIVILEGED_USER = "unprivileged"


def _has_manifests(directory: Path) -> bool:
    return directory.is_dir() and any(
        p.is_file() for pattern in ("*.yaml", "*.yml") for p in directory.glob(pattern)
    )


@pytest.fixture(scope="session")
def control_plane_identities() -> Mapping[str, Sequence[str]]:
    """Extra static identities for the session control plane; override to add some."""
    return {}


@pytest.fixture(scope="session")
def control_plane(control_plane_identities: Mapping[str, Sequence[str]]) -> Iterator[ControlPlane]:
    identities = {UNPRIVILEGED_USER: (), **control_plane_identities}
    with ControlPlane(identities, binaries=ensure_binaries()) as cp:
        if _has_manifests(CRDS_DIR):
            cp.apply_crds(CRDS_DIR)
        yield cp


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"test-{secrets.token_hex(4)}"
    # Straight to the API: two kubectl processes per test add up over hundreds of tests.
    control_plane.api("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiError):  # not waiting for finalisation, as before
        control_plane.api("DELETE", f"/api/v1/namespaces/{name}")
