"""The fast layer's line in the terminal summary: how many crash points and runs it covered.

A plugin of the root conftest (not tests/reconcile/conftest.py), so that under pytest-xdist the
controller, which collects nothing, has it too: workers hand their counts over in
`workeroutput`, the controller merges them (a sweep two workers ran counts once).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

#: kind of sweep → sweep name → what the summary counts; plain data, so that xdist can carry it.
COVERED: dict[str, dict[str, dict[str, Any]]] = {}
_WORKER_KEY = "reconcile_crash_points"


def record(kind: str, name: str, counts: dict[str, Any]) -> None:
    COVERED.setdefault(kind, {})[name] = counts


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # an xdist worker
        output[_WORKER_KEY] = json.dumps(COVERED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller: merge what a worker covered."""
    covered = json.loads(getattr(node, "workeroutput", {}).get(_WORKER_KEY, "{}"))
    for kind, sweeps in covered.items():
        COVERED.setdefault(kind, {}).update(sweeps)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COVERED:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("-", "reconcile crash points (tests/reconcile)")
    crash = COVERED.get("crash", {})
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
        if kind in COVERED:
            runs = sum(s["runs"] for s in COVERED[kind].values())
            write(f"{len(COVERED[kind])} scenarios {what}: {runs} runs")
    interference = COVERED.get("interference", {})
    if interference:
        write(
            f"{len(interference)} scenario-and-interference sweeps, "
            f"{sum(s['runs'] for s in interference.values())} runs with a write by someone else "
            f"before one request, {sum(s['conflicts'] for s in interference.values())} "
            "stale-resourceVersion 409s met"
        )
