"""GitOps fixtures: real Flux controllers, a Git server, the guide's repository layout.

Session: the Flux tools (built by ``python -m tests.controlplane.build`` like the control plane,
or here on first use: a missing binary is built, never skipped), source-controller and
kustomize-controller running against the session control plane, one age key.

Per test (``gitops``): a fresh namespace holding the ``sops-age`` Secret, a Git server with the
guide's ``.sops.yaml`` and the operator's SOPS-encrypted Secrets committed, the guide's
GitRepository and both Kustomizations applied (see :mod:`tests.gitops.repository` for the few
test overrides), and the operator's Kustomization Ready. The operator, MAS double and mail sink
are the integration suite's fixtures, so the same secret-leak check runs after every test.

A failed setup, test or teardown carries the controllers' and the Git server's logs and the Flux
objects' status in its report (:mod:`tests.gitops.failure_report`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane.cluster import ControlPlane
from tests.controlplane.flux_build import FluxTools, ensure_flux
from tests.gitops.failure_report import (  # noqa: F401 - the hook, registered by import
    pytest_runtest_makereport,
    watch,
)
from tests.gitops.flux import FluxApi, FluxControllers
from tests.gitops.git_server import GitServer
from tests.gitops.loop import GitOps, close_loop, open_loop
from tests.gitops.repository import AgeKey
from tests.integration.conftest import (  # noqa: F401 - fixtures, registered by import
    MAS_CLIENT_SECRET,
    SMTP_PASSWORD,
    backend,
    invitations,
    mas,
    operator_env,
    secrets_dir,
    smtp,
    start_operator,
)


@pytest.fixture(scope="session")
def flux_tools() -> FluxTools:
    return ensure_flux()


@pytest.fixture(scope="session")
def flux(
    control_plane: ControlPlane, flux_tools: FluxTools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FluxControllers]:
    with FluxControllers(control_plane, flux_tools, tmp_path_factory.mktemp("flux")) as running:
        yield running


@pytest.fixture(scope="session")
def age_key(flux_tools: FluxTools, tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return AgeKey(flux_tools.age_keygen, tmp_path_factory.mktemp("age") / "age.agekey")


@pytest.fixture
def gitops(
    control_plane: ControlPlane,
    flux: FluxControllers,
    flux_tools: FluxTools,
    age_key: AgeKey,
    namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[GitOps]:
    watched = watch(request.node)
    watched.flux, watched.api = flux, FluxApi(control_plane, namespace)
    flux.check_running()
    with GitServer(tmp_path / "git") as git:
        watched.git = git
        loop = open_loop(
            control_plane,
            namespace,
            git,
            flux_tools.sops,
            age_key,
            (MAS_CLIENT_SECRET, SMTP_PASSWORD),
        )
        yield loop
        close_loop(loop)
