"""Fixtures shared by all test layers: the control plane (tests.controlplane) and a real Synapse
(tests.servers); the fast layer's crash-point summary (tests.reconcile.summary)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

pytest_plugins = [
    "tests.controlplane.fixtures",
    "tests.servers.fixtures",
    "tests.reconcile.summary",
]


@pytest.fixture(scope="session")
def control_plane_identities() -> Mapping[str, Sequence[str]]:
    """Static identities of the session control plane. `operator` has no rights until a test
    binds it to the chart's RBAC (tests.deploy.rbac.bind_chart_rbac)."""
    return {"operator": ["matrix-invite:operators"]}
