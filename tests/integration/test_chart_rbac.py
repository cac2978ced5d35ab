"""The operator needs no more than the chart's RBAC: it runs here as a non-admin identity bound to
exactly the Role the chart renders, through a whole lifecycle, and can touch nothing outside."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from tests.controlplane.cluster import ControlPlane
from tests.deploy.rbac import OPERATOR_USER, bind_chart_rbac
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi
from tests.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

# What a misconfigured Role would show in the operator's log.
FORBIDDEN_SIGNS = ("Forbidden", "forbidden", "RBAC forbids", "Not enough permissions", " 403")


def test_operator_works_with_exactly_the_charts_rbac_and_nothing_more(
    control_plane: ControlPlane,
    namespace: str,
    invitations: InvitationsApi,
    mas: MasDouble,
    smtp: SmtpDouble,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    bind_chart_rbac(control_plane, namespace, OPERATOR_USER)
    kubeconfig = control_plane.kubeconfig_for(OPERATOR_USER)
    process = start_operator(KUBECONFIG=str(kubeconfig))

    # Create: a token, the Secret, a mail, status, Events, Kopf's finalizer and annotations.
    invitations.apply("ada", email="ada@example.org", displayName="Ada Lovelace")
    body = invitations.wait_for_phase("ada", "Sent")
    assert "matrix-invite.dev/revoke-token" in body["metadata"]["finalizers"]
    first_token = invitations.secret_token(body["status"]["secretName"])
    invitations.wait_for_events("ada", "MailSent")
    smtp.wait_for_sync(1, timeout=5)

    # A new address: a new token written into the existing Secret (get + patch).
    invitations.patch_spec("ada", email="ada.lovelace@example.org")
    invitations.wait_for(
        "ada",
        lambda b: (
            (b.get("status") or {}).get("phase") == "Sent"
            and b["status"].get("observedGeneration") == b["metadata"]["generation"]
            and invitations.secret_token(b["status"]["secretName"]) != first_token
        ),
        what="Sent with a new token",
    )

    # Delete: the finalizer revokes the token in MAS, then lets the object go.
    token_id = invitations.status("ada")["tokenId"]
    invitations.kubectl("delete", "invitation", "ada", "--wait=false")
    invitations.wait_gone("ada")
    stored = mas.token(token_id)
    assert stored is not None
    assert stored["revoked_at"] is not None

    assert process.returncode is None, process.log_tail()
    logs = process.logs()
    assert not [sign for sign in FORBIDDEN_SIGNS if sign in logs], process.log_tail(120)

    # Nothing outside the watched namespace, and nothing beyond the verbs the Role names.
    other = f"test-{secrets.token_hex(4)}"
    control_plane.kubectl("create", "namespace", other)
    try:
        control_plane.kubectl(
            "-n", other, "create", "secret", "generic", "unrelated", "--from-literal=k=v"
        )
        denied = control_plane.kubectl(
            "-n", other, "get", "secret", "unrelated", kubeconfig=kubeconfig, check=False
        )
        assert denied.returncode != 0
        assert "forbidden" in denied.stderr.lower()
        for namespace_, verb, resource, allowed in [
            (namespace, "get", "secrets", "yes"),
            (namespace, "create", "secrets", "yes"),
            (namespace, "list", "secrets", "no"),
            (namespace, "watch", "secrets", "no"),
            (namespace, "delete", "secrets", "no"),
            (namespace, "delete", "invitations.matrix-invite.dev", "no"),
            (namespace, "list", "pods", "no"),
            (other, "get", "secrets", "no"),
            (other, "list", "invitations.matrix-invite.dev", "no"),
        ]:
            answer = control_plane.kubectl(
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                namespace_,
                kubeconfig=kubeconfig,
                check=False,
            ).stdout.strip()
            assert answer == allowed, f"can-i {verb} {resource} -n {namespace_}: {answer}"
        for cluster_wide in (("list", "namespaces"), ("list", "customresourcedefinitions")):
            answer = control_plane.kubectl(
                "auth", "can-i", *cluster_wide, kubeconfig=kubeconfig, check=False
            ).stdout.strip()
            assert answer == "no", f"can-i {' '.join(cluster_wide)}: {answer}"
    finally:
        control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)
