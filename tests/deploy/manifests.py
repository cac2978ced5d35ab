"""`deploy/`, the plain kustomize base, generated from the chart (`make deploy-manifests`).

The base is `helm template` for `DEPLOY_VALUES` in namespace `DEPLOY_NAMESPACE`, split into one
file per kind, plus a kustomization.yaml listing them. tests/deploy/test_deploy.py checks that
`kubectl kustomize deploy/` still equals that rendering, so the two cannot drift.

    python -m tests.deploy.manifests    # rewrite deploy/ from the chart
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.chart import REPO_ROOT, render_text

DEPLOY_DIR = REPO_ROOT / "deploy"
DEPLOY_RELEASE = "matrix-invite-operator"
DEPLOY_NAMESPACE = "matrix-invite"
# Namespaced mode watching its own namespace (read from the Pod, so a kustomize `namespace:`
# carries over), and Flux's prune disabled on the CRD: deleting it would delete every Invitation.
DEPLOY_VALUES: dict[str, Any] = {
    "clusterWide": False,
    "watchNamespaces": [],
    "crds": {"annotations": {"kustomize.toolkit.fluxcd.io/prune": "disabled"}},
    "mas": {
        "clientSecret": {"existingSecret": "matrix-invite-operator-mas", "key": "client-secret"},
    },
    "smtp": {"password": {"existingSecret": "matrix-invite-operator-smtp", "key": "password"}},
}
# File per kind, in the order a reader wants them.
FILES = {
    "CustomResourceDefinition": "crd.yaml",
    "ServiceAccount": "serviceaccount.yaml",
    "Role": "rbac.yaml",
    "RoleBinding": "rbac.yaml",
    "Deployment": "deployment.yaml",
    "Service": "service.yaml",
}
HEADER = "# Generated from charts/matrix-invite-operator by `make deploy-manifests`; do not edit.\n"


def render_deploy() -> str:
    return render_text(DEPLOY_VALUES, release=DEPLOY_RELEASE, namespace=DEPLOY_NAMESPACE)


def split(text: str) -> dict[str, list[str]]:
    """helm's output as YAML documents (comments kept), grouped by the file of their kind, in
    the order of `FILES`."""
    files: dict[str, list[str]] = {name: [] for name in dict.fromkeys(FILES.values())}
    for document in re.split(r"^---\n", text, flags=re.MULTILINE):
        manifest = yaml.safe_load(document)
        if not manifest:
            continue
        name = FILES.get(manifest["kind"])
        if name is None:
            raise ValueError(f"deploy/ has no file for kind {manifest['kind']}")
        # helm's "# Source: <chart>/templates/..." line names a file that is not in deploy/.
        body = re.sub(r"\A# Source: .*\n", "", document).strip("\n")
        files[name].append(body + "\n")
    return {name: documents for name, documents in files.items() if documents}


def kustomization(files: Iterable[str]) -> str:
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(files),
    }
    return (
        HEADER
        + (
            "# Configure it with patches in an overlay (env of the operator container; see\n"
            "# docs/install-flux.md) and create the Secrets matrix-invite-operator-mas (key\n"
            "# client-secret) and matrix-invite-operator-smtp (key password) beside it.\n"
        )
        + yaml.safe_dump(body, sort_keys=False)
    )


def write(directory: Path = DEPLOY_DIR) -> list[Path]:
    files = split(render_deploy())
    directory.mkdir(exist_ok=True)
    for stale in directory.glob("*.yaml"):
        stale.unlink()
    written = []
    for name, documents in files.items():
        path = directory / name
        path.write_text(HEADER + "---\n".join(documents), encoding="utf-8")
        written.append(path)
    path = directory / "kustomization.yaml"
    path.write_text(kustomization(files), encoding="utf-8")
    written.append(path)
    return written


def main() -> int:
    for path in write():
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
