"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and each one can fail.

`make lint` runs `lint-imports` on the package; here it also runs on a copy of the package with
one forbidden import added per case, so a contract that stopped matching anything (a renamed
module, a layer that lost its modules) cannot pass in silence.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "matrix_invite_operator"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

LAYERS = "Layers: imports point down only"
KOPF = "Only handlers and __main__ import Kopf"
PURE = "The reconcile logic and its types speak no HTTP, SMTP or Kopf"
BACKENDS = "The two token backends share backends/transport.py, not each other"
MAS_LAYERS = "Inside backends/mas: token backend over client over error mapping over models"
CONTRACTS = (LAYERS, KOPF, PURE, BACKENDS, MAS_LAYERS)


def lint_imports(source_root: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts on the package found in `source_root`."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def broken_contracts(report: str) -> set[str]:
    """The contracts the report calls BROKEN (each must have a verdict)."""
    joined = " ".join(report.split())  # the report wraps long names
    broken = set()
    for name in CONTRACTS:
        verdict = re.search(re.escape(name) + r".*? (KEPT|BROKEN)\b", joined)
        assert verdict is not None, f"no verdict for {name!r} in {joined!r}"
        if verdict[1] == "BROKEN":
            broken.add(name)
    return broken


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    source_root = tmp_path / "src"
    shutil.copytree(
        PACKAGE, source_root / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__")
    )
    return source_root


def test_the_package_keeps_every_contract(package_copy: Path, tmp_path: Path) -> None:
    result = lint_imports(package_copy, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert broken_contracts(result.stdout) == set()
    assert "Contracts: 5 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "added_import", "broken"),
    [
        # reconcile naming the wiring it is handed: an upward import.
        ("reconcile.py", "from . import runtime", {LAYERS, PURE}),
        # the sync loop using Kopf itself.
        ("sync.py", "import kopf", {KOPF, PURE}),
        # the status writer reaching for the real Kubernetes client: allowed by the layers
        # (kube is lower), but it brings httpx into the core.
        ("status.py", "from . import kube", {PURE}),
        ("backends/synapse.py", "from . import mas", {BACKENDS}),
        # any module of the MAS package counts as MAS.
        ("backends/mas/client.py", "from .. import synapse", {BACKENDS}),
        # the resource models reaching up for the client that parses them.
        ("backends/mas/models.py", "from . import client", {MAS_LAYERS}),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    package_copy: Path, tmp_path: Path, module: str, added_import: str, broken: set[str]
) -> None:
    target = package_copy / PACKAGE.name / module
    target.write_text(
        target.read_text(encoding="utf-8") + f"\n{added_import}  # added by the test\n",
        encoding="utf-8",
    )
    result = lint_imports(package_copy, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken_contracts(result.stdout) == broken
