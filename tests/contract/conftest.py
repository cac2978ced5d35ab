"""Fixtures for the contract tests: a running MAS double that must stay true to the spec."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.doubles.mas import MasDouble


@pytest.fixture
def mas_double() -> Iterator[MasDouble]:
    """A fresh MAS double on a free port; at teardown, no answer may have broken the spec."""
    with MasDouble() as double:
        yield double
    assert double.spec_violations == [], "the MAS double answered outside the spec"
    assert double.request_violations == [], "a client sent a body outside the spec"
