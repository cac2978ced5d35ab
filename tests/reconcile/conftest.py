"""Each scenario is swept once per session; the summary says how many crash points were covered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from .harness import Scenario, Sweep, sweep

_SWEEPS: dict[str, Sweep] = {}


@pytest.fixture(scope="session")
def swept() -> Callable[[Scenario], Sweep]:
    """The sweep of a scenario, run at most once per session (the coverage test reuses it)."""

    def get(scenario: Scenario) -> Sweep:
        if scenario.name not in _SWEEPS:
            _SWEEPS[scenario.name] = asyncio.run(sweep(scenario))
        return _SWEEPS[scenario.name]

    return get


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SWEEPS:
        return
    points = sum(len(s.points) for s in _SWEEPS.values())
    runs = sum(s.crash_runs for s in _SWEEPS.values())
    steps = sorted({p.step for s in _SWEEPS.values() for p in s.points})
    terminalreporter.write_sep("-", "reconcile crash points (tests/reconcile)")
    terminalreporter.write_line(
        f"{len(_SWEEPS)} scenarios, {points} crash points, {runs} runs crashed before or after "
        f"an effect, in {len(steps)} functions: {', '.join(steps)}"
    )
