"""deploy/ (the kustomize base for Flux Kustomizations) cannot drift from the chart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.controlplane.build import ensure_binaries
from tests.deploy.chart import key, parse
from tests.deploy.manifests import DEPLOY_DIR, render_deploy, write


def kustomize(directory: Path) -> str:
    # kubectl's built-in kustomize, from the pinned Kubernetes build; needs no cluster.
    result = subprocess.run(
        [str(ensure_binaries().kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_kubectl_kustomize_deploy_equals_the_charts_rendering() -> None:
    built = {key(o): o for o in parse(kustomize(DEPLOY_DIR))}
    rendered = {key(o): o for o in parse(render_deploy())}
    assert sorted(built) == sorted(rendered)
    for name, manifest in rendered.items():
        assert built[name] == manifest, f"deploy/ differs from the chart in {name}"
    kinds = {kind for kind, _, _ in built}
    assert {"CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    assert "Deployment" in kinds


def test_deploy_is_what_make_deploy_manifests_writes_now(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in write(tmp_path)}
    current = {p.name: p.read_text() for p in DEPLOY_DIR.glob("*.yaml")}
    assert sorted(current) == sorted(fresh), "run `make deploy-manifests`"
    for name, text in fresh.items():
        assert current[name] == text, f"deploy/{name} is stale: run `make deploy-manifests`"


def test_the_base_can_be_moved_to_another_namespace(tmp_path: Path) -> None:
    # kustomize loads bases only from below the overlay's parent: copy, as a Git checkout has it.
    shutil.copytree(DEPLOY_DIR, tmp_path / "deploy")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../deploy]\nnamespace: invites\n", encoding="utf-8"
    )
    objects = parse(kustomize(overlay))
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["metadata"]["namespace"] == "invites"
    assert binding["subjects"][0]["namespace"] == "invites"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (watched,) = [e for e in container["env"] if e["name"] == "MATRIX_INVITE_NAMESPACES"]
    assert watched["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
