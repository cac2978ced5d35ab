"""The run's secret-hygiene ledger, a pytest plugin (registered in ``tests/conftest.py``): how many
logs/Event/Invitation dumps the leak scan (``tests.integration.conftest.assert_no_secret_leaks``)
searched, for how many secret values, and how many leaks it found, printed once at the end.

The scan itself fails the test that leaked; the ledger makes the scan's reach visible in every CI
log. Under pytest-xdist every worker counts in its own process and hands its counts to the
controller through xdist's ``workeroutput``; the controller adds them up, prints one line for the
whole run and keeps the run failed if any worker counted a leak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest

# The key of a worker's counts in xdist's `workeroutput`.
WORKEROUTPUT_KEY = "secret_hygiene"


@dataclass
class LeakLedger:
    searched: int = 0
    secrets: int = 0
    leaks: int = 0

    def add(self, other: LeakLedger) -> None:
        self.searched += other.searched
        self.secrets += other.secrets
        self.leaks += other.leaks

    def summary(self) -> str:
        return (
            f"secret hygiene: searched {self.searched} logs/Event/Invitation dumps for "
            f"{self.secrets} secret values, {self.leaks} leaks"
        )


# This process's counts: the whole run without xdist, one worker's share in a worker, and the
# sum of all workers' shares on the xdist controller (which runs no tests itself).
LEAK_LEDGER = LeakLedger()


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: xdist sends this to the controller
        workeroutput[WORKEROUTPUT_KEY] = asdict(LEAK_LEDGER)
    elif LEAK_LEDGER.leaks and session.exitstatus == pytest.ExitCode.OK:
        # The leaking test has failed already; this keeps the run red even if its report is lost.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)  # xdist's hook, on the controller, as each worker finishes
def pytest_testnodedown(node: object, error: object) -> None:
    counts = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
    if counts is not None:
        LEAK_LEDGER.add(LeakLedger(**counts))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LEAK_LEDGER.searched:
        terminalreporter.write_line(LEAK_LEDGER.summary())
