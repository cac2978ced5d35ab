"""The chart installed with helm as docs/install-flux.md says, running as Pods of the image built
from the Dockerfile on a real node (kubelet, containerd, kube-proxy), under the restricted Pod
Security level enforced on its namespace.

The values are the guide's HelmRelease values (docs/examples/flux/release.yaml); only what points
at the world changes: the image (the one the suite built), MAS and SMTP (the doubles on the
node's address), and short retry and sync intervals so that the test waits seconds, not minutes.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.cluster import ApiError, ControlPlane
from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.integration.harness import InvitationsApi, condition
from tests.node.cluster_api import (
    events,
    explained,
    install,
    pods,
    probe_counts,
    ready,
    report,
    wait_for,
)
from tests.node.conftest import MAS_CLIENT_SECRET, SMTP_PASSWORD, NodeCluster
from tests.node.netns import KUBERNETES_SERVICE_IP, NODE_IP

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
GUIDE_RELEASE = REPO_ROOT / "docs" / "examples" / "flux" / "release.yaml"
OLD_SECRET = "the-client-secret-before-rotation"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def guide_values() -> dict[str, Any]:
    """The ``values`` of the guide's HelmRelease, as a user copies them."""
    for document in yaml.safe_load_all(GUIDE_RELEASE.read_text(encoding="utf-8")):
        if document and document["kind"] == "HelmRelease":
            values: dict[str, Any] = copy.deepcopy(document["spec"]["values"])
            return values
    raise AssertionError(f"{GUIDE_RELEASE} has no HelmRelease")


def node_values(cluster: NodeCluster, mas: MasDouble, smtp: SmtpDouble, **changes: Any) -> Any:
    values = guide_values()
    repository, tag = cluster.image.name.rsplit(":", 1)
    values["image"] = {"repository": repository, "tag": tag, "pullPolicy": "Never"}
    values["mas"].update(url=mas.url, tokenEndpoint=f"{mas.url}/oauth2/token")
    # The double speaks plain SMTP (its certificate names only 127.0.0.1); AUTH still required.
    values["smtp"].update(host=NODE_IP, port=smtp.port, tls="none", allowInsecureAuth=True)
    node = [{"ipBlock": {"cidr": f"{NODE_IP}/32"}}]
    values["networkPolicy"]["apiServer"]["to"] = node
    values["networkPolicy"]["mas"] = {
        "to": node,
        "ports": [{"port": int(mas.url.rsplit(":", 1)[1]), "protocol": "TCP"}],
    }
    values["networkPolicy"]["smtp"] = {"to": node}
    values["syncIntervalSeconds"] = 5
    values["retry"] = {"baseSeconds": 1, "maxSeconds": 4}
    values.update(changes)
    return values


def make_namespaces(cp: ControlPlane, release_ns: str, watched_ns: str) -> None:
    cp.api("POST", "/api/v1/namespaces", {"metadata": {"name": release_ns, "labels": RESTRICTED}})
    cp.api("POST", "/api/v1/namespaces", {"metadata": {"name": watched_ns}})


def make_secret(cp: ControlPlane, namespace: str, name: str, key: str, value: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: base64.b64encode(value.encode()).decode()},
    }
    cp.api("POST", f"/api/v1/namespaces/{namespace}/secrets", body)


def make_release_secrets(cp: ControlPlane, namespace: str, values: Any, client_secret: str) -> None:
    """The two Secrets the values name: MAS client secret and SMTP password."""
    mas, smtp = values["mas"]["clientSecret"], values["smtp"]["password"]
    make_secret(cp, namespace, mas["existingSecret"], mas["key"], client_secret)
    make_secret(cp, namespace, smtp["existingSecret"], smtp["key"], SMTP_PASSWORD)


def test_helm_install_runs_under_restricted_pod_security_and_serves_an_invitation(
    node_cluster: NodeCluster, node_mas: MasDouble, node_smtp: SmtpDouble
) -> None:
    cp = node_cluster.control_plane
    values = node_values(node_cluster, node_mas, node_smtp)
    release_ns = "ess"
    watched_ns = values["watchNamespaces"][0]
    make_namespaces(cp, release_ns, watched_ns)
    make_release_secrets(cp, release_ns, values, OLD_SECRET)
    client_secret = values["mas"]["clientSecret"]

    # The namespace really enforces "restricted": a root Pod is refused at admission.
    root_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": release_ns},
        "spec": {"containers": [{"name": "c", "image": node_cluster.image.name}]},
    }
    with pytest.raises(ApiError) as refused:
        cp.api("POST", f"/api/v1/namespaces/{release_ns}/pods", root_pod)
    assert refused.value.status == 403
    assert "violates PodSecurity" in refused.value.body

    install(cp, values, release_ns)
    [pod] = pods(cp, release_ns)
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    assert ready(pod), report(cp, release_ns)
    assert pod["spec"]["nodeName"] == "node-1"
    reasons = [e["reason"] for e in events(cp, release_ns, name)]
    assert {"Scheduled", "Pulled", "Created", "Started"} <= set(reasons), reasons

    # The operator reaches the API server as any in-cluster client: the `kubernetes` Service,
    # whose ClusterIP only kube-proxy's rules lead to the API server on the node's address.
    nat = node_cluster.namespace.run("iptables-save", "-t", "nat")
    assert f"-d {KUBERNETES_SERVICE_IP}/32" in nat
    assert "default/kubernetes:https" in nat
    slices = cp.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
    assert slices is not None
    assert [NODE_IP] in [e["addresses"] for s in slices["items"] for e in s["endpoints"]]

    # The MAS double serves the whole session (other tests' tokens are there too).
    tokens_before = {token["id"] for token in node_mas.tokens()}
    mails_before = node_smtp.messages
    invitations = InvitationsApi(cp, watched_ns)
    invitations.apply("ada", email="ada@example.org", usageLimit=1, validFor="168h", locale="en")
    with explained(cp, release_ns):
        failed = invitations.wait_for_phase("ada", "Failed", timeout=60)
    assert condition(failed, "Ready")["reason"] == "MasAuthFailed"  # type: ignore[index]
    assert {token["id"] for token in node_mas.tokens()} == tokens_before

    # The Secret edited in place: the kubelet rewrites the mounted file, the running process
    # reads it on its next attempt. Same Pod, no restart.
    cp.api(
        "PATCH",
        f"/api/v1/namespaces/{release_ns}/secrets/{client_secret['existingSecret']}",
        {"data": {client_secret["key"]: base64.b64encode(MAS_CLIENT_SECRET.encode()).decode()}},
        content_type="application/merge-patch+json",
    )
    with explained(cp, release_ns):
        sent = invitations.wait_for_phase("ada", "Sent", timeout=90)
    assert condition(sent, "Ready")["status"] == "True"  # type: ignore[index]
    [token] = [t for t in node_mas.tokens() if t["id"] not in tokens_before]
    assert sent["status"]["tokenId"] == token["id"]
    secret_name = sent["status"]["secretName"]
    assert invitations.secret_token(secret_name) == token["token"]
    node_smtp.wait_for_sync(len(mails_before) + 1, timeout=20)
    [mail] = [m for m in node_smtp.messages if m.rcpt_tos == ("ada@example.org",)]
    assert token["token"] in (mail.text or "")
    assert node_smtp.auth_attempts[-1][2] is True

    [after] = pods(cp, release_ns)
    assert after["metadata"]["uid"] == uid
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0, report(cp, release_ns)

    # The kubelet's own probe counters: the liveness probe ran and never failed.
    wait_for(
        "a successful liveness probe",
        lambda: probe_counts(cp, name).get("successful", 0) >= 1,
        60,
        lambda: f"{probe_counts(cp, name)}\n{report(cp, release_ns)}",
    )
    counts = probe_counts(cp, name)
    assert counts.get("failed", 0) == 0, counts
    assert counts.get("unknown", 0) == 0, counts
