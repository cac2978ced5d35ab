"""Each sweep runs once per session; the summary says how many crash points were covered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from .harness import Interference, Scenario, Sweep, crash_then, crash_twice, interfere, sweep
from .scenarios import WHILE_DOWN

_CRASHES: dict[str, Sweep] = {}
_INTERFERENCES: dict[str, Sweep] = {}
_TWICE: dict[str, Sweep] = {}
_DELETED: dict[str, Sweep] = {}


@pytest.fixture(scope="session")
def swept() -> Callable[[Scenario], Sweep]:
    """The crash sweep of a scenario, run at most once per session (the coverage test reuses
    what the per-scenario tests ran)."""

    def get(scenario: Scenario) -> Sweep:
        if scenario.name not in _CRASHES:
            _CRASHES[scenario.name] = asyncio.run(sweep(scenario))
        return _CRASHES[scenario.name]

    return get


@pytest.fixture(scope="session")
def swept_twice() -> Callable[[Scenario], Sweep]:
    def get(scenario: Scenario) -> Sweep:
        if scenario.name not in _TWICE:
            _TWICE[scenario.name] = asyncio.run(crash_twice(scenario))
        return _TWICE[scenario.name]

    return get


@pytest.fixture(scope="session")
def swept_then_deleted() -> Callable[[Scenario], Sweep]:
    def get(scenario: Scenario) -> Sweep:
        if scenario.name not in _DELETED:
            _DELETED[scenario.name] = asyncio.run(crash_then(scenario, WHILE_DOWN))
        return _DELETED[scenario.name]

    return get


@pytest.fixture(scope="session")
def interfered() -> Callable[[Scenario, Interference], Sweep]:
    def get(scenario: Scenario, interference: Interference) -> Sweep:
        key = f"{scenario.name} + {interference.name}"
        if key not in _INTERFERENCES:
            _INTERFERENCES[key] = asyncio.run(interfere(scenario, interference))
        return _INTERFERENCES[key]

    return get


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (_CRASHES or _INTERFERENCES or _TWICE or _DELETED):
        return
    terminalreporter.write_sep("-", "reconcile crash points (tests/reconcile)")
    if _CRASHES:
        points = sum(len(s.points) for s in _CRASHES.values())
        runs = sum(s.crash_runs for s in _CRASHES.values())
        steps = sorted({p.step for s in _CRASHES.values() for p in s.points})
        terminalreporter.write_line(
            f"{len(_CRASHES)} scenarios, {points} crash points, {runs} runs crashed before or "
            f"after an effect, in {len(steps)} functions: {', '.join(steps)}"
        )
    if _TWICE:
        runs = sum(len(s.outcomes) - 1 for s in _TWICE.values())
        terminalreporter.write_line(
            f"{len(_TWICE)} scenarios crashed twice (after an effect, then in its repair): "
            f"{runs} runs"
        )
    if _DELETED:
        runs = sum(len(s.outcomes) - 1 for s in _DELETED.values())
        terminalreporter.write_line(
            f"{len(_DELETED)} scenarios crashed and then deleted while down: {runs} runs"
        )
    if _INTERFERENCES:
        runs = sum(len(s.outcomes) - 1 for s in _INTERFERENCES.values())
        conflicts = sum(o.conflicts for s in _INTERFERENCES.values() for o in s.outcomes)
        terminalreporter.write_line(
            f"{len(_INTERFERENCES)} scenario-and-interference sweeps, {runs} runs with a write by "
            f"someone else before one request, {conflicts} stale-resourceVersion 409s met"
        )
