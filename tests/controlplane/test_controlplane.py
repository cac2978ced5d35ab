"""Proves the test control plane is the real thing: pinned version, working garbage collector and
namespace controller, enforced RBAC, and restartable etcd/apiserver for fault tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.controlplane.build import kube_version
from tests.controlplane.cluster import ApiError, ControlPlane
from tests.controlplane.fixtures import UNPRIVILEGED_USER

pytestmark = pytest.mark.integration

WAIT_SECONDS = 60.0


def _eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"not within {timeout:.0f}s: {what}")


def test_server_reports_pinned_version(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)

    assert version["serverVersion"]["gitVersion"] == kube_version()
    assert version["serverVersion"]["minor"] == "34"
    assert version["clientVersion"]["gitVersion"] == kube_version()


def test_garbage_collector_deletes_dependents(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "configmap", "owner", "-n", namespace)
    owner_uid = control_plane.kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
    }
    control_plane.kubectl("create", "-f", "-", input=json.dumps(dependent))

    control_plane.kubectl("delete", "configmap", "owner", "-n", namespace)

    def dependent_gone() -> bool:
        return control_plane.get(f"/api/v1/namespaces/{namespace}/configmaps/dependent") is None

    _eventually(dependent_gone, "garbage collector deletes the dependent ConfigMap")


def test_namespace_deletion_completes(control_plane: ControlPlane) -> None:
    control_plane.kubectl("create", "namespace", "doomed")
    control_plane.kubectl("create", "configmap", "content", "-n", "doomed")

    # --wait blocks until the namespace controller has emptied and finalised it.
    control_plane.kubectl(
        "delete", "namespace", "doomed", "--wait=true", "--timeout=60s", timeout=70
    )

    assert control_plane.kubectl("get", "namespace", "doomed", "--ignore-not-found").stdout == ""


def test_static_identity_without_rbac_is_forbidden(
    control_plane: ControlPlane, namespace: str
) -> None:
    kubeconfig = control_plane.kubeconfig_for(UNPRIVILEGED_USER)

    result = control_plane.kubectl(
        "get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False
    )

    assert result.returncode != 0
    assert "Forbidden" in result.stderr
    assert f'User "{UNPRIVILEGED_USER}" cannot list resource "secrets"' in result.stderr
    # The same request as admin succeeds, so it is RBAC and not a broken server that refused.
    control_plane.kubectl("get", "secrets", "-n", namespace)


def test_direct_api_requests_read_write_and_are_authorised(
    control_plane: ControlPlane, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    assert control_plane.get(f"{path}/direct") is None  # 404 is "absent", not an error

    created = control_plane.api("POST", path, {"metadata": {"name": "direct"}, "data": {"a": "1"}})
    assert created is not None
    assert created["metadata"]["namespace"] == namespace
    control_plane.api(
        "PATCH",
        f"{path}/direct",
        {"data": {"b": "2"}},
        content_type="application/merge-patch+json",
    )
    # kubectl, a separate client, sees what the direct requests wrote.
    seen = json.loads(
        control_plane.kubectl("-n", namespace, "get", "configmap", "direct", "-o", "json").stdout
    )
    assert seen["data"] == {"a": "1", "b": "2"}

    with pytest.raises(ApiError) as refused:
        control_plane.api("GET", f"{path}/direct", user=UNPRIVILEGED_USER)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert f'User "{UNPRIVILEGED_USER}" cannot get resource "configmaps"' in message


def test_server_side_apply_creates_and_updates_namespaced_and_cluster_objects(
    control_plane: ControlPlane, namespace: str
) -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "applied", "namespace": namespace},
        "data": {"a": "1"},
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": f"applied-{namespace}"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }
    control_plane.server_side_apply([config_map, role])
    control_plane.server_side_apply([{**config_map, "data": {"a": "2"}}])

    applied = control_plane.get(f"/api/v1/namespaces/{namespace}/configmaps/applied")
    assert applied is not None
    assert applied["data"] == {"a": "2"}
    assert [m["manager"] for m in applied["metadata"]["managedFields"]] == ["tests"]
    cluster_role = json.loads(
        control_plane.kubectl("get", "clusterrole", f"applied-{namespace}", "-o", "json").stdout
    )
    assert cluster_role["rules"] == role["rules"]
    control_plane.kubectl("delete", "clusterrole", f"applied-{namespace}")


def test_restart_etcd_and_apiserver_keep_data() -> None:
    # A private control plane: restarting the session one would disturb other tests.
    with ControlPlane(controller_manager=False) as cp:
        cp.kubectl("create", "configmap", "survivor", "-n", "default")
        pids_before = cp.pids()

        cp.restart_etcd()
        cp.restart_apiserver()

        pids_after = cp.pids()
        assert pids_after["etcd"] != pids_before["etcd"]
        assert pids_after["kube-apiserver"] != pids_before["kube-apiserver"]
        assert cp.kubectl(
            "get", "configmap", "survivor", "-n", "default", "-o", "name"
        ).stdout.strip() == ("configmap/survivor")
