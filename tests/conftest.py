"""Fixtures shared by all test layers: the control plane (tests.controlplane) and a real Synapse
(tests.servers); the run-wide secret-hygiene line (tests.secret_hygiene) and the fast layer's
crash-point summary (tests.reconcile.summary).

Under pytest-xdist (``make test`` runs ``-n``), session fixtures are per worker: each worker starts
its own control plane, Synapse, Flux controllers and Chromium (temporary directories, free ports on
127.0.0.1), so no state crosses workers. The one thing that adds up over the whole run, the leak
scan's ledger, reaches the controller through xdist's ``workeroutput`` (tests.secret_hygiene).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

pytest_plugins = [
    "tests.controlplane.fixtures",
    "tests.servers.fixtures",
    "tests.secret_hygiene",
    "tests.reconcile.summary",
]


@pytest.fixture(scope="session")
def control_plane_identities() -> Mapping[str, Sequence[str]]:
    """Static identities of the session control plane. `operator` has no rights until a test
    binds it to the chart's RBAC (tests.deploy.rbac.bind_chart_rbac)."""
    return {"operator": ["matrix-invite:operators"]}
