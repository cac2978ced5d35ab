"""Integration fixtures: the real control plane, the MAS double, the SMTP double, the operator.

The operator uses MAS unless a test asks for Synapse (a real one from tests.servers) by
overriding or parametrizing the `backend` fixture.

Each test gets its own namespace and its own operator process watching only that namespace,
so tests cannot see each other's Invitations and a killed operator takes nothing else down.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.controlplane.cluster import ControlPlane
from tests.deploy.rbac import OPERATOR_USER, bind_chart_rbac, chart_lease_name, chart_rbac
from tests.doubles.authentik import AuthentikDouble, every_pk_form
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi
from tests.operator_process import OperatorProcess
from tests.secret_hygiene import LEAK_LEDGER
from tests.servers.synapse import SynapseServer

SMTP_USER = "operator@example.org"
SMTP_PASSWORD = "smtp-password-for-tests-only"
MAS_CLIENT_ID = "01J44RKQYM4G3TNVANTMTDYTX6"
MAS_CLIENT_SECRET = "mas-client-secret-for-tests-only"


@pytest.fixture
def mas() -> Iterator[MasDouble]:
    with MasDouble(client_id=MAS_CLIENT_ID, client_secret=MAS_CLIENT_SECRET) as double:
        yield double
    assert double.spec_violations == [], "the MAS double answered outside the spec"
    assert double.request_violations == [], "the operator sent MAS a body outside the spec"


@pytest.fixture
def smtp() -> Iterator[SmtpDouble]:
    with SmtpDouble(mode="starttls", username=SMTP_USER, password=SMTP_PASSWORD) as double:
        yield double


@pytest.fixture
def backend() -> str:
    """The token backend the operator is configured with: "mas" (default) or "synapse"."""
    return "mas"


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "mas-client-secret").write_text(MAS_CLIENT_SECRET)
    (directory / "smtp-password").write_text(SMTP_PASSWORD)
    return directory


@pytest.fixture
def operator_env(
    control_plane: ControlPlane,
    namespace: str,
    mas: MasDouble,
    smtp: SmtpDouble,
    secrets_dir: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> dict[str, str]:
    host, port = smtp.address
    # Least privilege, proven by every test: the operator runs as a non-admin identity bound
    # to exactly the RBAC the chart renders for its namespace, never as cluster admin.
    bind_chart_rbac(control_plane, namespace, OPERATOR_USER)
    env = {
        "KUBECONFIG": str(control_plane.kubeconfig_for(OPERATOR_USER)),
        "MATRIX_INVITE_NAMESPACES": namespace,
        "MATRIX_INVITE_MAS_URL": mas.url,
        "MATRIX_INVITE_MAS_CLIENT_ID": MAS_CLIENT_ID,
        "MATRIX_INVITE_MAS_CLIENT_SECRET_FILE": str(secrets_dir / "mas-client-secret"),
        "MATRIX_INVITE_SMTP_HOST": host,
        "MATRIX_INVITE_SMTP_PORT": str(port),
        "MATRIX_INVITE_SMTP_TLS": "starttls",
        "MATRIX_INVITE_SMTP_USERNAME": SMTP_USER,
        "MATRIX_INVITE_SMTP_PASSWORD_FILE": str(secrets_dir / "smtp-password"),
        "MATRIX_INVITE_SMTP_CA_BUNDLE": str(smtp.ca_path),
        "MATRIX_INVITE_MAIL_FROM": "invitations@example.org",
        "MATRIX_INVITE_MAIL_FROM_NAME": "Example Matrix",
        "MATRIX_INVITE_SERVER_NAME": "example.org",
        "MATRIX_INVITE_REGISTRATION_URL": "https://auth.example.org/register",
        # Short intervals, since tests wait for them (each test that is about an interval sets
        # its own): a sync pass every second, retries from 0.5 s doubling to 2 s.
        "MATRIX_INVITE_SYNC_INTERVAL_SECONDS": "1",
        "MATRIX_INVITE_RETRY_BASE_SECONDS": "0.5",
        "MATRIX_INVITE_RETRY_MAX_SECONDS": "2",
        # No send-rate limit: only test_mail_delivery's rate-limit test is about it, and sets it.
        "MATRIX_INVITE_MAIL_RATE_PER_MINUTE": "0",
    }
    if backend == "synapse":
        synapse: SynapseServer = request.getfixturevalue("synapse")
        (secrets_dir / "synapse-admin-token").write_text(synapse.admin_token)
        for name in [k for k in env if k.startswith("MATRIX_INVITE_MAS_")]:
            del env[name]
        env.update(
            {
                "MATRIX_INVITE_BACKEND": "synapse",
                "MATRIX_INVITE_SYNAPSE_URL": synapse.url,
                "MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE": str(secrets_dir / "synapse-admin-token"),
                "MATRIX_INVITE_SERVER_NAME": synapse.server_name,
                "MATRIX_INVITE_REGISTRATION_URL": "https://app.element.io/#/register",
            }
        )
    return env


@pytest.fixture
def lease_env(namespace: str) -> dict[str, str]:
    """Leader election on, with the Lease the chart's RBAC (bound by `operator_env`) grants."""
    objects = chart_rbac([namespace], release=f"rbac-{OPERATOR_USER}")
    return {"MATRIX_INVITE_LEASE_NAME": chart_lease_name(objects)}


@pytest.fixture
def start_operator(
    operator_env: dict[str, str],
    tmp_path: Path,
    control_plane: ControlPlane,
    namespace: str,
    mas: MasDouble,
    backend: str,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start the operator (again); every process started here is stopped at teardown."""
    started: list[OperatorProcess] = []
    invitations_of_test = InvitationsApi(control_plane, namespace)
    mas_of_test = mas
    synapse: SynapseServer | None = (
        request.getfixturevalue("synapse") if backend == "synapse" else None
    )
    # Set up before the operator, so torn down after it: the leak scan below needs its keys.
    authentik: AuthentikDouble | None = (
        request.getfixturevalue("authentik") if "authentik" in request.fixturenames else None
    )

    def start(*args: str, **overrides: str) -> OperatorProcess:
        process = OperatorProcess(
            {**operator_env, **overrides}, tmp_path / f"operator-{len(started)}.log", args
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop_after_cleanup()
    synapse_secrets = (
        {t["token"] for t in synapse.tokens()} | {synapse.admin_token} if synapse else set()
    )
    if "synapse" in request.fixturenames:  # a MAS test that joins rooms on a real Synapse
        synapse_secrets.add(request.getfixturevalue("synapse").admin_token)
    # Every personal session MAS minted for the onboarding user (real Synapse tokens, too).
    synapse_secrets |= {s["access_token"] for s in mas_of_test.accounts.sessions()}
    if authentik is not None:  # its API token and every enrollment link's key
        synapse_secrets |= {authentik.api_token, *every_pk_form(authentik.link_pks())}
    assert_no_secret_leaks(started, invitations_of_test, mas_of_test, synapse_secrets)


def assert_no_secret_leaks(
    processes: list[OperatorProcess],
    invitations: InvitationsApi,
    mas: MasDouble,
    extra: set[str] | frozenset[str] = frozenset(),
) -> None:
    """No token value, client secret or SMTP password in logs, Events or Invitations.

    Runs after every integration test that started an operator, so the whole suite's logs,
    Events, Invitations (annotations included) and exception texts are searched.
    """
    secrets_known = {t["token"] for t in mas.tokens()} | {MAS_CLIENT_SECRET, SMTP_PASSWORD}
    secrets_known |= extra
    haystacks = {f"operator log {p.log_path.name}": p.logs() for p in processes}
    haystacks["events"] = json.dumps(invitations.listed("events", core=True))
    haystacks["invitations"] = json.dumps(invitations.listed())
    LEAK_LEDGER.searched += len(haystacks)
    LEAK_LEDGER.secrets += len(secrets_known)
    leaks = [where for where, text in haystacks.items() for value in secrets_known if value in text]
    LEAK_LEDGER.leaks += len(leaks)
    assert leaks == [], f"secret values leaked into: {sorted(set(leaks))}"


@pytest.fixture
def invitations(control_plane: ControlPlane, namespace: str) -> InvitationsApi:
    return InvitationsApi(control_plane, namespace)
