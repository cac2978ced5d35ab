"""The package layout promises of the project brief."""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "matrix_invite_operator"


def test_import_operator_is_still_the_standard_library() -> None:
    import operator

    assert operator.__file__ is not None
    assert Path(operator.__file__).parent == Path(sysconfig.get_paths()["stdlib"])
    assert operator.add(2, 3) == 5
    assert not (PACKAGE.parent / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_handlers_and_the_cli_import_kopf() -> None:
    users = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any(name == "kopf" or name.startswith("kopf.") for name in _imports(path))
    }
    assert users == {"handlers.py", "__main__.py"}


def test_every_module_says_what_it_owns() -> None:
    missing = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert missing == []


def test_no_utils_module() -> None:
    assert not [p for p in PACKAGE.rglob("*.py") if p.stem in {"utils", "helpers", "misc"}]


def test_reconcile_logic_runs_without_kopf() -> None:
    """Not even transitively: the reconcile, sync and wiring modules load without Kopf."""
    code = (
        "import sys, matrix_invite_operator.reconcile, matrix_invite_operator.sync, "
        "matrix_invite_operator.runtime; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kopf'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
