"""Fixtures shared by all test layers: the control plane (tests.controlplane) and a real Synapse
(tests.servers); the run-wide secret-hygiene line (tests.secret_hygiene) and the fast layer's
crash-point summary (tests.reconcile.summary).

Under pytest-xdist (``make test`` runs ``-n``), session fixtures are per worker: each worker starts
its own control plane, Synapse, Flux controllers and Chromium (temporary directories, free ports on
127.0.0.1), so no state crosses workers. The one thing that adds up over the whole run, the leak
scan's ledger, reaches the controller through xdist's ``workeroutput`` (tests.secret_hygiene).
"""

from __future__ import annotations

import compileall
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.controlplane.fixtures",
    "tests.servers.fixtures",
    "tests.secret_hygiene",
    "tests.reconcile.summary",
]

OPERATOR_SOURCE = Path(__file__).resolve().parents[1] / "operator"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the operator's modules to bytecode once, before the tests start it.

    The suite starts the operator as a process a few hundred times (tests.operator_process, the
    CLI tests). Under PYTHONDONTWRITEBYTECODE (set where the suite has run) none of those starts
    leaves a .pyc behind, so each one compiled every module of the package from source again
    (0.1-0.2 s of CPU per start); a .pyc written here is still read. Up-to-date files are skipped,
    so this costs nothing after the first run; __pycache__ is ignored by Git and .dockerignore.
    """
    compileall.compile_dir(OPERATOR_SOURCE, quiet=2)


@pytest.fixture(scope="session")
def control_plane_identities() -> Mapping[str, Sequence[str]]:
    """Static identities of the session control plane. `operator` has no rights until a test
    binds it to the chart's RBAC (tests.deploy.rbac.bind_chart_rbac)."""
    return {"operator": ["matrix-invite:operators"]}
