"""Each sweep runs once per session (per xdist worker); what it covered goes to the summary
(tests/reconcile/summary.py, a plugin of the root conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from . import summary
from .harness import (
    Interference,
    Scenario,
    Sweep,
    crash_then,
    crash_twice,
    interfere,
    lose_answers,
    sweep,
)
from .scenarios import WHILE_DOWN

_SWEEPS: dict[tuple[str, str], Sweep] = {}


def _once(kind: str, name: str, run: Callable[[], Sweep]) -> Sweep:
    if (kind, name) not in _SWEEPS:
        result = _SWEEPS[(kind, name)] = run()
        counts = {
            "points": len(result.points),
            "runs": len(result.outcomes) - 1,
            "crash_runs": result.crash_runs,
            "conflicts": sum(o.conflicts for o in result.outcomes),
            "steps": sorted({p.step for p in result.points}),
        }
        summary.record(kind, name, counts)
    return _SWEEPS[(kind, name)]


@pytest.fixture(scope="session")
def swept() -> Callable[[Scenario], Sweep]:
    """The crash sweep of a scenario (the coverage test reuses what the others ran)."""
    return lambda s: _once("crash", s.name, lambda: asyncio.run(sweep(s)))


@pytest.fixture(scope="session")
def swept_twice() -> Callable[[Scenario], Sweep]:
    return lambda s: _once("twice", s.name, lambda: asyncio.run(crash_twice(s)))


@pytest.fixture(scope="session")
def swept_then_deleted() -> Callable[[Scenario], Sweep]:
    return lambda s: _once("deleted", s.name, lambda: asyncio.run(crash_then(s, WHILE_DOWN)))


@pytest.fixture(scope="session")
def swept_losing_answers() -> Callable[[Scenario], Sweep]:
    return lambda s: _once("lost", s.name, lambda: asyncio.run(lose_answers(s)))


@pytest.fixture(scope="session")
def interfered() -> Callable[[Scenario, Interference], Sweep]:
    def get(s: Scenario, i: Interference) -> Sweep:
        return _once("interference", f"{s.name} + {i.name}", lambda: asyncio.run(interfere(s, i)))

    return get
