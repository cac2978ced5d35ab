"""Documentation that must not drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from matrix_invite_operator.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(MATRIX_INVITE_[A-Z0-9_]+)`", text))
    expected = {f"MATRIX_INVITE_{name.upper()}" for name in Settings.model_fields}
    missing = expected - documented
    stale = documented - expected
    assert missing == set(), f"settings missing from docs/configuration.md: {sorted(missing)}"
    assert stale == set(), (
        f"docs/configuration.md names settings that do not exist: {sorted(stale)}"
    )
