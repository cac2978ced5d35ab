"""One Kubernetes identity, through the wire: exec-plugin kubeconfigs (for our calls and for
Kopf, sharing one login), expiring and refused exec tokens renewed, client certificate data that
never lands in the temp dir, and a rotated service-account token picked up after a 401."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from matrix_invite_operator.errors import KubeRejected
from matrix_invite_operator.handlers import connection_info
from matrix_invite_operator.kube import KubeApi, kube_http_client
from matrix_invite_operator.kube_identity import KubeLogin

from tests.controlplane.cluster import ControlPlane
from tests.controlplane.exec_plugin import calls, exec_kubeconfig
from tests.deploy.rbac import OPERATOR_USER
from tests.integration.harness import InvitationsApi
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

PAST = "2000-01-01T00:00:00Z"
FAR = "2100-01-01T00:00:00Z"


@contextlib.asynccontextmanager
async def _api(login: KubeLogin) -> AsyncIterator[KubeApi]:
    client = await kube_http_client(login)
    try:
        yield KubeApi(client)
    finally:
        await client.aclose()


@pytest.fixture
def temp_dir_watch(tmp_path: Path) -> Iterator[Path]:
    """Everything that asks `tempfile` for a directory gets one that does not exist: writing a
    temp file fails instead of going unnoticed (Kopf's own loader writes and deletes at once)."""
    missing = tmp_path / "no-tmp"
    saved = tempfile.tempdir
    tempfile.tempdir = str(missing)
    try:
        yield missing
    finally:
        tempfile.tempdir = saved


async def test_an_exec_plugin_kubeconfig_serves_our_calls_with_one_run(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    config, calls_path = exec_kubeconfig(
        control_plane, "exec-admin", [{"token": control_plane.admin_token}], tmp_path
    )
    login = KubeLogin(kubeconfig=config)
    async with _api(login) as api:
        assert await api.get_invitation(namespace, "absent") is None
        assert await api.read_token_secret(namespace, "absent", "uid") is None
    (call,) = calls(calls_path)
    info = call["execInfo"]
    assert info["apiVersion"] == "client.authentication.k8s.io/v1"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == control_plane.server_url


async def test_an_expired_exec_token_is_renewed_before_the_next_call(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    admin = control_plane.admin_token
    config, calls_path = exec_kubeconfig(
        control_plane,
        "exec-expiring",
        [
            {"token": admin, "expirationTimestamp": PAST},
            {"token": admin, "expirationTimestamp": FAR},
        ],
        tmp_path,
    )
    async with _api(KubeLogin(kubeconfig=config)) as api:
        for _ in range(3):
            assert await api.get_invitation(namespace, "absent") is None
    assert len(calls(calls_path)) == 2


async def test_a_refused_exec_token_is_renewed_once_and_the_call_sent_again(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    config, calls_path = exec_kubeconfig(
        control_plane,
        "exec-refused",
        [{"token": "not-a-token-the-apiserver-knows"}, {"token": control_plane.admin_token}],
        tmp_path,
    )
    async with _api(KubeLogin(kubeconfig=config)) as api:
        assert await api.get_invitation(namespace, "absent") is None
    assert len(calls(calls_path)) == 2

    config, calls_path = exec_kubeconfig(
        control_plane, "exec-always-refused", [{"token": "never-valid"}], tmp_path
    )
    async with _api(KubeLogin(kubeconfig=config)) as api:
        with pytest.raises(KubeRejected, match="401"):
            await api.get_invitation(namespace, "absent")
    assert len(calls(calls_path)) == 2  # the first login and one renewal, no loop


async def test_client_certificate_data_works_for_us_and_for_kopf_without_a_temp_file(
    control_plane: ControlPlane, namespace: str, temp_dir_watch: Path
) -> None:
    cert, key = control_plane.client_certificate("cert-admin", ["system:masters"])
    config = control_plane.kubeconfig_with_user(
        "cert-admin",
        {
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        },
    )
    login = KubeLogin(kubeconfig=config)
    async with _api(login) as api:
        assert await api.get_invitation(namespace, "absent") is None
    # Kopf's session, built from the same identity as Kopf builds it (kopf's APIContext).
    info = connection_info(await login.identity())
    connector = aiohttp.TCPConnector(ssl=info.as_ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector, headers=info.as_http_headers()) as session,
        session.get(f"{control_plane.server_url}/api/v1/namespaces/{namespace}") as response,
    ):
        assert response.status == 200


def test_the_operator_as_a_client_certificate_leaves_the_temp_dir_empty(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    # The same user and group as the operator's static token: the chart's RBAC applies.
    cert, key = control_plane.client_certificate(OPERATOR_USER, ["matrix-invite:operators"])
    config = control_plane.kubeconfig_with_user(
        "cert-operator",
        {
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode(),
        },
    )
    temp = tmp_path / "operator-tmp"
    temp.mkdir()
    start_operator(KUBECONFIG=str(config), TMPDIR=str(temp))
    invitations.apply("cert", email="cert@example.org")
    invitations.wait_for_phase("cert", "Sent", timeout=30)
    assert sorted(temp.iterdir()) == []


def _connections_to(port: int) -> int:
    """This process's established TCP connections to `port`, as the kernel lists them."""
    ours = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                ours.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, state, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if remote_port == port and state == "01" and inode in ours:  # 01: ESTABLISHED
                count += 1
    return count


async def test_a_pool_retired_by_a_new_certificate_is_closed_at_once(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """An exec plugin that hands out a new client certificate at each login (as short-lived
    certificates do): each one needs a new TLS pool, and the old pool's connections must go
    then, not at shutdown (hourly rotation would leave a connection per hour open)."""
    plan = []
    for user, expiry in (("rotating-a", PAST), ("rotating-b", PAST), ("rotating-c", FAR)):
        cert, key = control_plane.client_certificate(user, ["system:masters"])
        plan.append(
            {
                "clientCertificateData": cert.decode(),
                "clientKeyData": key.decode(),
                "expirationTimestamp": expiry,
            }
        )
    config, calls_path = exec_kubeconfig(control_plane, "exec-rotating", plan, tmp_path)
    port = int(control_plane.server_url.rsplit(":", 1)[1])
    before = _connections_to(port)
    login = KubeLogin(kubeconfig=config)
    client = await kube_http_client(login)
    try:
        api = KubeApi(client)
        for _ in range(4):  # three certificates, the last one kept
            assert await api.get_invitation(namespace, "absent") is None
            assert _connections_to(port) - before == 1, "a retired pool kept its connection"
        assert len(calls(calls_path)) == 3
    finally:
        await client.aclose()
    assert _connections_to(port) == before


async def test_a_rotated_service_account_token_is_read_after_a_401(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl("create", "serviceaccount", "op", "-n", namespace)
    control_plane.kubectl(
        "create", "role", "secret-reader", "--verb=get", "--resource=secrets", "-n", namespace
    )
    control_plane.kubectl(
        "create", "rolebinding", "op-reads-secrets", "--role=secret-reader",
        f"--serviceaccount={namespace}:op", "-n", namespace,
    )  # fmt: skip
    mount = tmp_path / "serviceaccount"
    mount.mkdir()
    # What the process read at its start has run out since (the API server refuses it) ...
    (mount / "token").write_text("a-token-that-ran-out")
    (mount / "namespace").write_text(namespace)
    (mount / "ca.crt").write_bytes(
        (control_plane.workdir / "apiserver-certs" / "apiserver.crt").read_bytes()
    )
    host, port = control_plane.server_url.removeprefix("https://").rsplit(":", 1)
    login = KubeLogin(
        service_account_dir=mount,
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    )
    async with _api(login) as api:
        assert login.logins == 1
        # ... and the kubelet has rotated the file meanwhile (one atomic rename, as it does).
        fresh = control_plane.kubectl("create", "token", "op", "-n", namespace).stdout.strip()
        (mount / "token.new").write_text(fresh)
        os.replace(mount / "token.new", mount / "token")
        assert await api.read_token_secret(namespace, "absent", "uid") is None
        assert await api.read_token_secret(namespace, "absent", "uid") is None
    assert login.logins == 2
    identity = login.current
    assert identity is not None
    assert identity.token is not None
    assert identity.token.get_secret_value() == fresh
    assert identity.default_namespace == namespace


def test_the_operator_and_kopf_share_one_exec_plugin_login(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    config, calls_path = exec_kubeconfig(
        control_plane,
        "exec-operator",
        [{"token": control_plane.token_for(OPERATOR_USER), "expirationTimestamp": FAR}],
        tmp_path,
    )
    start_operator(KUBECONFIG=str(config))
    invitations.apply("exec", email="exec@example.org")
    invitations.wait_for_phase("exec", "Sent", timeout=30)
    # Kopf watched and patched, we wrote the Secret, status and Events: all as one login.
    assert len(calls(calls_path)) == 1


def test_the_operator_renews_an_expiring_exec_token_for_kopf_too(
    control_plane: ControlPlane,
    invitations: InvitationsApi,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    token = control_plane.token_for(OPERATOR_USER)
    lifetime = 4.0
    config, calls_path = exec_kubeconfig(
        control_plane,
        "exec-operator-expiring",
        [
            {"token": token, "expiresInSeconds": lifetime},
            {"token": token, "expirationTimestamp": FAR},
        ],
        tmp_path,
    )
    operator = start_operator(KUBECONFIG=str(config))
    invitations.apply("before", email="before@example.org")
    invitations.wait_for_phase("before", "Sent", timeout=30)
    # The barrier is the first credential's own expiry: after it, every call needs a new one.
    first = dt.datetime.fromisoformat(calls(calls_path)[0]["calledAt"])
    expiry = first + dt.timedelta(seconds=lifetime)
    time.sleep(max(0.0, (expiry - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)
    invitations.apply("after", email="after@example.org")
    invitations.wait_for_phase("after", "Sent", timeout=30)
    # One renewal, shared: Kopf logged in again (its vault saw the expiry) with our login.
    assert len(calls(calls_path)) == 2, operator.log_tail()
    assert "Re-authentication has finished" in operator.logs()
