"""Each sweep runs once per session (per xdist worker); the terminal summary says how many crash
points and runs were covered, gathered from the workers when pytest-xdist runs the suite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

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

#: kind → sweep name → what the summary counts; plain data, so that xdist can carry it.
_COVERED: dict[str, dict[str, dict[str, Any]]] = {}
_SWEEPS: dict[tuple[str, str], Sweep] = {}
_WORKER_KEY = "reconcile_crash_points"


def _once(kind: str, name: str, run: Callable[[], Sweep]) -> Sweep:
    if (kind, name) not in _SWEEPS:
        result = _SWEEPS[(kind, name)] = run()
        _COVERED.setdefault(kind, {})[name] = {
            "points": len(result.points),
            "runs": len(result.outcomes) - 1,
            "crash_runs": result.crash_runs,
            "conflicts": sum(o.conflicts for o in result.outcomes),
            "steps": sorted({p.step for p in result.points}),
        }
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


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # an xdist worker: hand the counts to the controller
        output[_WORKER_KEY] = json.dumps(_COVERED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller: merge what a worker covered (a sweep two workers ran counts once)."""
    covered = json.loads(getattr(node, "workeroutput", {}).get(_WORKER_KEY, "{}"))
    for kind, sweeps in covered.items():
        _COVERED.setdefault(kind, {}).update(sweeps)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _COVERED:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("-", "reconcile crash points (tests/reconcile)")
    crash = _COVERED.get("crash", {})
    if crash:
        steps = sorted({step for s in crash.values() for step in s["steps"]})
        write(
            f"{len(crash)} scenarios, {sum(s['points'] for s in crash.values())} crash points, "
            f"{sum(s['crash_runs'] for s in crash.values())} runs crashed before or after an "
            f"effect, in {len(steps)} functions: {', '.join(steps)}"
        )
    for kind, what in (
        ("lost", "with each answer lost in turn (the server acted, no crash)"),
        ("twice", "crashed twice (after an effect, then during its repair)"),
        ("deleted", "crashed, then deleted while the operator was down"),
    ):
        if kind in _COVERED:
            runs = sum(s["runs"] for s in _COVERED[kind].values())
            write(f"{len(_COVERED[kind])} scenarios {what}: {runs} runs")
    interference = _COVERED.get("interference", {})
    if interference:
        write(
            f"{len(interference)} scenario-and-interference sweeps, "
            f"{sum(s['runs'] for s in interference.values())} runs with a write by someone else "
            f"before one request, {sum(s['conflicts'] for s in interference.values())} "
            "stale-resourceVersion 409s met"
        )
