"""Fixtures for the contract tests: a running MAS double that must stay true to the spec."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bench.sync_cost import SyncBench
from tests.doubles.kube_recorder import KubeRecorder
from tests.doubles.mas import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, MasDouble


@pytest.fixture
def mas_double() -> Iterator[MasDouble]:
    """A fresh MAS double on a free port; at teardown, no answer may have broken the spec."""
    with MasDouble() as double:
        yield double
    assert double.spec_violations == [], "the MAS double answered outside the spec"
    assert double.request_violations == [], "a client sent a body outside the spec"


@pytest.fixture
def kube() -> Iterator[KubeRecorder]:
    with KubeRecorder() as recorder:
        yield recorder


@pytest.fixture
async def bench(mas_double: MasDouble, kube: KubeRecorder) -> AsyncIterator[SyncBench]:
    """The operator's real sync pass and MAS client against the double (`bench/sync_cost.py`)."""
    bench = SyncBench(mas_double, kube, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    yield bench
    await bench.aclose()
