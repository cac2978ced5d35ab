"""The chart from this project's Git repository, as docs/install-flux.md shows it until a release
exists (docs/examples/flux/chart-from-git.yaml), served by the real source-controller.

helm-controller cannot be built here (flux/FACTS.md); what it would do with the HelmRelease's
``spec.chart`` is create a HelmChart from it in the source's namespace, named
``<namespace>-<release>``. The test applies the guide's GitRepository and that HelmChart, waits
for source-controller to package the chart from the commit, downloads the artifact from
source-controller's storage as helm-controller would, and renders it with helm.
"""

from __future__ import annotations

import copy
import io
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.cluster import ControlPlane
from tests.deploy.chart import CHART_DIR, helm, parse
from tests.gitops.flux import FluxApi, FluxControllers, ready_condition
from tests.gitops.git_server import GitServer
from tests.gitops.repository import for_test, guide_documents
from tests.operator_process import REPO_ROOT

pytestmark = pytest.mark.integration

HELM_CHARTS = "helmcharts.source.toolkit.fluxcd.io"


def test_source_controller_serves_the_chart_from_the_projects_git_repository(
    control_plane: ControlPlane, flux: FluxControllers, namespace: str, tmp_path: Path
) -> None:
    source, release = guide_documents("chart-from-git.yaml")
    chart_files = {
        str(path.relative_to(REPO_ROOT)): path.read_text(encoding="utf-8")
        for path in CHART_DIR.rglob("*")
        if path.is_file()
    }
    # Outside the chart's folder: the GitRepository's `ignore` keeps it out of the artifact.
    outside = {"README.md": "the project", "operator/x.py": "print()"}
    with GitServer(tmp_path / "git") as git:
        commit = git.commit({**chart_files, **outside}, "The project, chart included")
        chart_spec = copy.deepcopy(release["spec"]["chart"]["spec"])
        helm_chart: dict[str, Any] = {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "HelmChart",
            "metadata": {
                "name": f"{release['metadata']['namespace']}-{release['metadata']['name']}",
                "namespace": namespace,
            },
            "spec": {**chart_spec, "interval": "5s"},
        }
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump_all([for_test(source, namespace, git_url=git.url), helm_chart]),
        )
        api = FluxApi(control_plane, namespace)
        deadline = time.monotonic() + 60
        chart = api.get(HELM_CHARTS, helm_chart["metadata"]["name"])
        while ready_condition(chart).get("status") != "True":
            assert time.monotonic() < deadline, f"HelmChart not Ready: {chart.get('status')}"
            time.sleep(0.25)
            chart = api.get(HELM_CHARTS, helm_chart["metadata"]["name"])

        artifact = chart["status"]["artifact"]
        source_artifact = api.get(
            "gitrepositories.source.toolkit.fluxcd.io", source["metadata"]["name"]
        )
        packed = source_artifact["status"]["artifact"]["url"]
        with urllib.request.urlopen(packed, timeout=10) as answer:  # noqa: S310 - loopback
            packed_bytes = answer.read()
        with tarfile.open(fileobj=io.BytesIO(packed_bytes)) as tar:
            names = tar.getnames()
        assert "charts/matrix-invite-operator/Chart.yaml" in names
        assert "README.md" not in names
        assert not [n for n in names if n.startswith("operator")]

        with urllib.request.urlopen(artifact["url"], timeout=10) as answer:  # noqa: S310
            package = tmp_path / "chart.tgz"
            package.write_bytes(answer.read())
    chart_yaml = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    # reconcileStrategy Revision: the commit makes the version, so a commit is a new release.
    assert artifact["revision"] == f"{chart_yaml['version']}+{commit[:12]}"
    rendered = parse(helm("template", "matrix-invite-operator", str(package), "-n", "ess").stdout)
    kinds = {document["kind"] for document in rendered}
    assert {"Deployment", "CustomResourceDefinition", "ServiceAccount"} <= kinds
