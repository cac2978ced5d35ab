"""`helm install` into a fresh API server, then the operator with exactly the installed
configuration and the credentials of the chart's ServiceAccount reconciles an Invitation there.

A control plane of its own: the session one has the CRD applied without Helm's ownership
labels, and the point here is a cluster that gets its CRD from the chart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane.build import ensure_binaries
from tests.controlplane.cluster import ControlPlane
from tests.deploy.chart import CHART_DIR, helm, values_file
from tests.deploy.pod import container_env
from tests.deploy.rbac import service_account_kubeconfig
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.conftest import (
    MAS_CLIENT_ID,
    MAS_CLIENT_SECRET,
    SMTP_PASSWORD,
    SMTP_USER,
)
from tests.integration.harness import InvitationsApi
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

NAMESPACE = "invites"
RELEASE = "mio"
FULLNAME = "mio-matrix-invite-operator"
CRD = "customresourcedefinition.apiextensions.k8s.io/invitations.matrix-invite.dev"


@pytest.fixture(scope="module")
def fresh_cluster() -> Iterator[ControlPlane]:
    # No kube-controller-manager: nothing here needs garbage collection, namespace deletion or
    # default ServiceAccounts (the chart brings its own, and TokenRequest is the API server's).
    with ControlPlane(binaries=ensure_binaries(), controller_manager=False) as control_plane:
        yield control_plane


def test_helm_install_then_the_operator_as_its_service_account_reconciles(
    fresh_cluster: ControlPlane, mas: MasDouble, smtp: SmtpDouble, tmp_path: Path
) -> None:
    cp = fresh_cluster
    kubeconfig = cp.kubeconfig_path
    cp.kubectl("create", "namespace", NAMESPACE)
    # What the admin creates beside the release (from SOPS-encrypted files, in real life).
    cp.kubectl(
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "invite-mas",
        f"--from-literal=client-secret={MAS_CLIENT_SECRET}",
    )
    cp.kubectl(
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "invite-smtp",
        f"--from-literal=password={SMTP_PASSWORD}",
    )
    cp.kubectl(
        "-n", NAMESPACE, "create", "configmap", "smtp-ca", f"--from-file=ca.crt={smtp.ca_path}"
    )
    host, port = smtp.address
    values = {
        "mas": {
            "url": mas.url,
            "clientId": MAS_CLIENT_ID,
            "clientSecret": {"existingSecret": "invite-mas", "key": "client-secret"},
        },
        "smtp": {
            "host": host,
            "port": port,
            "username": SMTP_USER,
            "password": {"existingSecret": "invite-smtp", "key": "password"},
            "caBundle": {"configMap": "smtp-ca", "key": "ca.crt"},
        },
        "mail": {"from": "invitations@example.org", "fromName": "Example Matrix"},
        "syncIntervalSeconds": 2,
        "retry": {"baseSeconds": 1, "maxSeconds": 5},
    }

    installed = helm(
        "install",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--values",
        str(values_file(values, tmp_path)),
        kubeconfig=kubeconfig,
    )
    assert "STATUS: deployed" in installed.stdout
    assert "WARNING" not in installed.stdout  # NOTES complain only about missing MAS settings
    assert f"It handles Invitations in: {NAMESPACE}." in installed.stdout
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", CRD)
    releases = json.loads(helm("list", "-n", NAMESPACE, "-o", "json", kubeconfig=kubeconfig).stdout)
    assert [(r["name"], r["status"]) for r in releases] == [(RELEASE, "deployed")]

    # The operator as the Pod would run it: the Deployment's env and mounts, the SA's token.
    env = container_env(cp, NAMESPACE, FULLNAME, tmp_path / "mounts")
    assert env["MATRIX_INVITE_NAMESPACES"] == NAMESPACE
    env["KUBECONFIG"] = str(
        service_account_kubeconfig(cp, NAMESPACE, FULLNAME, tmp_path / "sa-kubeconfig")
    )
    whoami = cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=env["KUBECONFIG"]).stdout
    assert json.loads(whoami)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
    )
    invitations = InvitationsApi(cp, NAMESPACE)
    operator = OperatorProcess(env, tmp_path / "operator.log").start()
    try:
        invitations.apply("ada", email="ada@example.org", displayName="Ada Lovelace")
        body = invitations.wait_for_phase("ada", "Sent", timeout=30)
        assert invitations.secret_token(body["status"]["secretName"])
        (mail,) = smtp.wait_for_sync(1, timeout=5)
        assert mail.rcpt_tos == ("ada@example.org",)
        assert operator.returncode is None, operator.log_tail()
        assert "Forbidden" not in operator.logs()
    finally:
        operator.stop_after_cleanup()  # not about an orderly stop: no 5 s for idle workers

    # Uninstalling keeps the CRD (crds.keep), so the Invitation and its token stay too.
    helm("uninstall", RELEASE, "--namespace", NAMESPACE, kubeconfig=kubeconfig)
    assert cp.kubectl("get", CRD, check=False).returncode == 0
    status = invitations.status("ada")
    assert status["phase"] == "Sent"
    stored = mas.token(status["tokenId"])
    assert stored is not None
    assert stored["revoked_at"] is None
    assert cp.kubectl("-n", NAMESPACE, "get", "deployment", FULLNAME, check=False).returncode
