"""The invite page's Pod is admitted where Pod Security "restricted" is enforced, with no Secret
and no service account token: the same admission test as the operator's (test_pod_security)."""

from __future__ import annotations

import json

import pytest

from tests.controlplane.cluster import ControlPlane
from tests.deploy.chart import render
from tests.deploy.test_invite_page_chart import PAGE, page_deployment
from tests.deploy.test_pod_security import create, restricted

pytestmark = pytest.mark.integration


def test_the_invite_page_pod_is_admitted_under_the_restricted_profile(
    control_plane: ControlPlane, namespace: str
) -> None:
    restricted(control_plane, namespace)
    deployment = page_deployment(render(PAGE, namespace=namespace))
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "invite-page", "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }
    code, output = create(control_plane, pod)
    assert code == 0, output
    assert "violate" not in output
    admitted = json.loads(
        control_plane.kubectl("-n", namespace, "get", "pod", "invite-page", "-o", "json").stdout
    )
    assert admitted["status"]["phase"] == "Pending"  # admitted; no kubelet will ever run it
    spec = admitted["spec"]
    assert spec["automountServiceAccountToken"] is False
    # The API server mounts no token volume either, and nothing else is mounted.
    assert spec.get("volumes", []) == []
    assert "secret" not in json.dumps(spec).lower()

    code, output = create(control_plane, deployment)
    assert code == 0, output
    assert "would violate PodSecurity" not in output

    # The same Pod without its security settings is refused: the profile is enforced here.
    del pod["spec"]["securityContext"]
    del pod["spec"]["containers"][0]["securityContext"]
    pod["metadata"]["name"] = "careless-page"
    code, output = create(control_plane, pod)
    assert code != 0
    assert 'violates PodSecurity "restricted:latest"' in output
