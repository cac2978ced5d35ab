"""docs/install-flux.md's route to a registry of your own: `helm package` makes the archive that
`helm push` uploads, named as the guide's glob expects, with the chart's name and version."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import yaml

from tests.deploy.chart import CHART_DIR, REPO_ROOT, helm

GUIDE = REPO_ROOT / "docs" / "install-flux.md"


def test_helm_package_makes_the_archive_the_guide_pushes(tmp_path: Path) -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    package_line = re.search(r"^helm package (\S+)", guide, re.MULTILINE)
    push_line = re.search(r"^helm push (\S+) oci://", guide, re.MULTILINE)
    assert package_line is not None
    assert push_line is not None
    assert (REPO_ROOT / package_line.group(1)).resolve() == CHART_DIR
    helm("package", str(CHART_DIR), "--destination", str(tmp_path))
    [archive] = list(tmp_path.glob(push_line.group(1)))
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    assert archive.name == f"{chart['name']}-{chart['version']}.tgz"
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"{chart['name']}/Chart.yaml")
        assert member is not None
        packed = yaml.safe_load(member.read())
    assert (packed["name"], packed["version"]) == (chart["name"], chart["version"])
