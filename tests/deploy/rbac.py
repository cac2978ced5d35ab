"""Bind a test identity to exactly the chart's RBAC, for tests that run the real operator.

Integration tests run the operator as a process on the test control plane. To prove it needs no
more than the chart grants, they give it a non-admin identity and bind that identity with the
Roles (or the ClusterRole) that `helm template` renders, unchanged: only the bindings' subject
is swapped from the chart's ServiceAccount to the given identity.

    objects = bind_chart_rbac(control_plane, namespace, user="operator")
    env["KUBECONFIG"] = str(control_plane.kubeconfig_for("operator"))

The identity must be a static one of the session control plane (see `control_plane_identities`
in tests/conftest.py, which declares `operator`), or a ServiceAccount
(`subject=service_account_subject(...)`, with `service_account_kubeconfig`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.controlplane.cluster import ControlPlane
from tests.deploy.chart import Manifest, render

OPERATOR_USER = "operator"
OPERATOR_GROUPS = ("matrix-invite:operators",)


def chart_rbac(
    namespaces: Sequence[str] = (), *, cluster_wide: bool = False, release: str = "rbac"
) -> list[Manifest]:
    """The chart's RBAC objects for these watched namespaces (or cluster-wide), as rendered."""
    values: dict[str, Any] = {"clusterWide": cluster_wide, "watchNamespaces": list(namespaces)}
    release_namespace = namespaces[0] if namespaces else "default"
    return render(
        values, release=release, namespace=release_namespace, show_only=["templates/rbac.yaml"]
    )


def chart_lease_name(objects: Sequence[Manifest]) -> str:
    """The one Lease the chart's leader-election Role lets the operator read and renew."""
    (role,) = [
        o
        for o in objects
        if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader-election")
    ]
    (rule,) = [r for r in role["rules"] if r.get("resourceNames")]
    name: str = rule["resourceNames"][0]
    return name


def user_subject(user: str) -> dict[str, str]:
    return {"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}


def service_account_subject(namespace: str, name: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def bind_chart_rbac(
    control_plane: ControlPlane,
    namespaces: str | Sequence[str],
    user: str = OPERATOR_USER,
    *,
    cluster_wide: bool = False,
    subject: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """Apply the chart's Roles/RoleBindings in `namespaces` (or its ClusterRole and binding when
    `cluster_wide`), bound to `user` (or `subject`), as admin. Returns the applied objects; the
    namespaced ones go with their namespace, `unbind` removes the cluster-scoped ones."""
    watched = [namespaces] if isinstance(namespaces, str) else list(namespaces)
    objects = chart_rbac(
        [] if cluster_wide else watched, cluster_wide=cluster_wide, release=f"rbac-{user}"
    )
    for manifest in objects:
        if manifest["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            manifest["subjects"] = [dict(subject or user_subject(user))]
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(_list(objects)))
    return objects


def unbind(control_plane: ControlPlane, objects: Sequence[Manifest]) -> None:
    """Delete what `bind_chart_rbac` applied (needed only for cluster-wide bindings)."""
    control_plane.kubectl(
        "delete", "--ignore-not-found", "--wait=false", "-f", "-", input=json.dumps(_list(objects))
    )


def service_account_kubeconfig(
    control_plane: ControlPlane, namespace: str, name: str, path: Path, *, duration: str = "2h"
) -> Path:
    """A kubeconfig holding a token of ServiceAccount `namespace/name` (TokenRequest API, as
    `kubectl create token`), so that a process runs with exactly that account's rights."""
    token = control_plane.kubectl(
        "create", "token", name, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    ca_pem = (control_plane.workdir / "apiserver-certs" / "apiserver.crt").read_bytes()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "controlplane",
                "cluster": {
                    "server": control_plane.server_url,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "controlplane", "user": name}}],
        "current-context": name,
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    path.chmod(0o600)
    return path


def _list(objects: Sequence[Manifest]) -> Manifest:
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}
