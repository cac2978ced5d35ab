"""The chart's Pod is admitted where Pod Security "restricted" is enforced.

There is no kubelet, so the Pod stays Pending: admission is the point. A Pod without the chart's
security settings is refused in the same namespace, which shows the profile is enforced.
"""

from __future__ import annotations

import json

import pytest

from tests.controlplane.cluster import ControlPlane
from tests.deploy.chart import Manifest, one, pod_template, render
from tests.deploy.test_chart import CONFIGURED, NETWORK_POLICY_VALUES

pytestmark = pytest.mark.integration

ENFORCE = "pod-security.kubernetes.io/enforce"


def restricted(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        f"{ENFORCE}=restricted",
        f"{ENFORCE}-version=latest",
        "--overwrite",
    )


def pod_from(objects: list[Manifest], namespace: str, name: str) -> Manifest:
    template = pod_template(objects)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }


def create(control_plane: ControlPlane, manifest: Manifest) -> tuple[int, str]:
    result = control_plane.kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    "values",
    [{}, CONFIGURED, NETWORK_POLICY_VALUES],
    ids=["default", "configured", "network-policy"],
)
def test_chart_pod_is_admitted_under_the_restricted_profile(
    control_plane: ControlPlane, namespace: str, values: dict[str, object]
) -> None:
    restricted(control_plane, namespace)
    objects = render(values, namespace=namespace)
    service_account = one(objects, "ServiceAccount")
    assert create(control_plane, service_account)[0] == 0

    code, output = create(control_plane, pod_from(objects, namespace, "operator"))
    assert code == 0, output
    assert "violate" not in output
    pod = json.loads(
        control_plane.kubectl("-n", namespace, "get", "pod", "operator", "-o", "json").stdout
    )
    assert pod["status"]["phase"] == "Pending"  # admitted; no kubelet will ever run it

    # The Deployment itself draws no PodSecurity warning either.
    code, output = create(control_plane, one(objects, "Deployment"))
    assert code == 0, output
    assert "would violate PodSecurity" not in output


def test_a_pod_without_the_charts_security_settings_is_refused(
    control_plane: ControlPlane, namespace: str
) -> None:
    restricted(control_plane, namespace)
    pod = pod_from(render(namespace=namespace), namespace, "careless")
    del pod["spec"]["securityContext"]
    del pod["spec"]["containers"][0]["securityContext"]
    code, output = create(control_plane, pod)
    assert code != 0
    assert 'violates PodSecurity "restricted:latest"' in output
