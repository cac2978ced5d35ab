"""The invite page's Deployment from the chart (values of docs/examples/invite-page/values.yaml)
on the real node, asked through its Service by another Pod, as an ingress controller would.

There is no cluster DNS on the test node: the client Pod uses the Service's ClusterIP, which
kube-proxy's rules lead to the page's Pod.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.doubles.mas import MasDouble
from tests.doubles.smtp import SmtpDouble
from tests.node.cluster_api import install, pods, ready, report, restricted_pod, run_pod
from tests.node.conftest import MAS_CLIENT_SECRET, NodeCluster
from tests.node.test_install import make_namespaces, make_release_secrets, node_values

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE_VALUES = REPO_ROOT / "docs" / "examples" / "invite-page" / "values.yaml"
RELEASE_NS = "ess-page"
WATCHED_NS = "matrix-invite-page"
PAGE_SELECTOR = "app.kubernetes.io/component=invite-page"
FETCH = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    body = answer.read().decode()
    print(json.dumps({"status": answer.status, "headers": dict(answer.headers), "body": body}))
"""


def test_invite_page_answers_through_its_service_with_its_security_headers(
    node_cluster: NodeCluster, node_mas: MasDouble, node_smtp: SmtpDouble
) -> None:
    cp = node_cluster.control_plane
    page = yaml.safe_load(PAGE_VALUES.read_text(encoding="utf-8"))
    values = node_values(node_cluster, node_mas, node_smtp, watchNamespaces=[WATCHED_NS])
    values["invitations"].update(page["invitations"])
    values["invitePage"] = page["invitePage"]
    make_namespaces(cp, RELEASE_NS, WATCHED_NS)
    make_release_secrets(cp, RELEASE_NS, values, MAS_CLIENT_SECRET)
    install(cp, values, RELEASE_NS)
    page_pods = pods(cp, RELEASE_NS, PAGE_SELECTOR)
    assert page_pods, report(cp, RELEASE_NS, "")
    assert all(ready(p) for p in page_pods), report(cp, RELEASE_NS, PAGE_SELECTOR)

    services = cp.get(f"/api/v1/namespaces/{RELEASE_NS}/services?labelSelector={PAGE_SELECTOR}")
    assert services is not None
    [service] = services["items"]
    address = service["spec"]["clusterIP"]
    port = service["spec"]["ports"][0]["port"]
    client = restricted_pod(
        "page-client",
        RELEASE_NS,
        node_cluster.image.name,
        ["python", "-c", FETCH, f"http://{address}:{port}/en/"],
    )
    answer = json.loads(run_pod(cp, client).strip().splitlines()[-1])
    assert answer["status"] == 200
    headers = {k.lower(): v for k, v in answer["headers"].items()}
    assert "connect-src 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "example.org" in answer["body"]
