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

Every integration test binds a fresh namespace, so a `helm template` per test would cost a helm
process each time. The chart's RBAC is rendered once per process for stand-in namespace names and
the test's names are put in their place; that is the chart's own rendering only if the chart
uses the names as plain values, so the stand-ins are rendered twice, with names of different
lengths, and the two renderings must agree after swapping the names (else the test fails and
says so).
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.controlplane.cluster import ControlPlane
from tests.deploy.chart import Manifest, parse, render_text

OPERATOR_USER = "operator"
OPERATOR_GROUPS = ("matrix-invite:operators",)


def chart_rbac(
    namespaces: Sequence[str] = (), *, cluster_wide: bool = False, release: str = "rbac"
) -> list[Manifest]:
    """The chart's RBAC objects for these watched namespaces (or cluster-wide), as rendered
    (for stand-in names, then with these names in their place: see the module's docstring)."""
    text, stand_ins = _rendered_for_stand_ins(len(namespaces), cluster_wide, release)
    return parse(_swap_names(text, stand_ins, tuple(namespaces)))


def _render_rbac(namespaces: Sequence[str], cluster_wide: bool, release: str) -> str:
    values: dict[str, Any] = {"clusterWide": cluster_wide, "watchNamespaces": list(namespaces)}
    release_namespace = namespaces[0] if namespaces else "default"
    return render_text(
        values, release=release, namespace=release_namespace, show_only=["templates/rbac.yaml"]
    )


@functools.cache
def _rendered_for_stand_ins(
    count: int, cluster_wide: bool, release: str
) -> tuple[str, tuple[str, ...]]:
    short = tuple(f"ns{i}-{secrets.token_hex(4)}" for i in range(count))
    long = tuple(f"a-longer-stand-in-namespace-{i}-{secrets.token_hex(8)}" for i in range(count))
    text = _render_rbac(short, cluster_wide, release)
    assert _swap_names(text, short, long) == _render_rbac(long, cluster_wide, release), (
        "the chart's RBAC depends on the watched namespaces' names beyond naming them: "
        "render it per namespace (tests/deploy/rbac.py)"
    )
    return text, short


def _swap_names(text: str, old: Sequence[str], new: Sequence[str]) -> str:
    for before, after in zip(old, new, strict=True):
        text = text.replace(before, after)
    return text


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
    control_plane.server_side_apply(objects)
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
