"""Every YAML block a user copies from docs/ is a file under docs/examples/ that a test reads.

A guide shows a file with a marker line right before the fenced block::

    <!-- file: docs/examples/<topic>/<name>.yaml -->
    ```yaml
    ...the file, byte for byte...
    ```

This module checks the marker and the equality for every guide, and reads the examples that no
other test uses (the Flux, ESS and chart examples are applied or rendered by their own tests).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from matrix_invite_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
TEMPLATES = ROOT / "operator" / "matrix_invite_operator" / "mail" / "templates"

_BLOCK = re.compile(r"^```(?:yaml|yml)[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
_MARKER = re.compile(r"<!-- file: (\S+) -->\s*$")


def _guides() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if EXAMPLES not in p.parents)


def _shown_blocks(guide: Path) -> list[tuple[int, str | None, str]]:
    """(line, marked file or None, block text) for each YAML block of a guide."""
    text = guide.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        found.append((line, marker.group(1) if marker else None, match.group(1)))
    return found


@pytest.mark.parametrize("guide", _guides(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_block_is_an_example_file(guide: Path) -> None:
    for line, marked, block in _shown_blocks(guide):
        where = f"{guide.relative_to(ROOT)}:{line}"
        assert marked is not None, f"{where}: a YAML block without a <!-- file: ... --> marker"
        path = ROOT / marked
        assert EXAMPLES in path.resolve().parents, f"{where}: {marked} is not under docs/examples/"
        assert path.is_file(), f"{where}: {marked} does not exist"
        assert block == path.read_text(encoding="utf-8"), f"{where}: differs from {marked}"


def test_the_marker_check_catches_a_drifted_block(tmp_path: Path) -> None:
    example = tmp_path / "x.yaml"
    example.write_text("a: 1\n")
    guide = tmp_path / "guide.md"
    guide.write_text(
        f"Text\n\n<!-- file: {example} -->\n```yaml\na: 2\n```\n\n```yaml\nb: 1\n```\n"
    )
    shown = _shown_blocks(guide)
    assert shown == [(4, str(example), "a: 2\n"), (8, None, "b: 1\n")]


def _documented_metrics() -> set[str]:
    table = (DOCS / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(matrix_invite_[a-z_]+)`", table, re.MULTILINE))


def test_the_alert_rules_use_documented_metrics() -> None:
    rules = yaml.safe_load((EXAMPLES / "metrics" / "alerts.yaml").read_text(encoding="utf-8"))
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs, "no alert rules"
    documented = _documented_metrics()
    for expr in exprs:
        used = set(re.findall(r"matrix_invite_[a-z_]+", expr))
        assert used, f"an alert that reads no metric of ours: {expr}"
        assert used <= documented, f"{expr} names undocumented metrics {used - documented}"


def test_the_template_volume_maps_onto_real_template_files() -> None:
    manifest = yaml.safe_load((EXAMPLES / "mail" / "template-volume.yaml").read_text("utf-8"))
    (volume,) = manifest["volumes"]
    paths = [item["path"] for item in volume["configMap"]["items"]]
    assert paths
    for path in paths:
        assert (TEMPLATES / path).is_file(), f"{path} overrides no built-in template"
    (container,) = manifest["containers"]
    (env,) = container["env"]
    assert env["name"].removeprefix("MATRIX_INVITE_").lower() in Settings.model_fields
    (mount,) = container["volumeMounts"]
    assert (mount["name"], mount["mountPath"], mount["readOnly"]) == (
        volume["name"],
        env["value"],
        True,
    )
