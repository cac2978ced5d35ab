"""The package layout promises of the project brief.

Which module may import which (the layers, Kopf only in handlers and __main__, no HTTP in the
reconcile logic) is checked by import-linter's contracts: tests/unit/test_import_contracts.py.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "matrix_invite_operator"


def test_import_operator_is_still_the_standard_library() -> None:
    import operator

    assert operator.__file__ is not None
    assert Path(operator.__file__).parent == Path(sysconfig.get_paths()["stdlib"])
    assert operator.add(2, 3) == 5
    assert not (PACKAGE.parent / "__init__.py").exists()


def test_every_module_says_what_it_owns() -> None:
    missing = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert missing == []


def test_no_utils_module() -> None:
    assert not [p for p in PACKAGE.rglob("*.py") if p.stem in {"utils", "helpers", "misc"}]
