"""What a failing GitOps test attaches to its pytest report, so that CI's log shows the cause.

Owns the report's sections: the status of the test namespace's GitRepository and Kustomizations,
each Flux controller's state (running, or how it ended) with the tail of its log, and the Git
server's request log. Fixtures register what they run with :func:`watch` on the test's item; the
hook here (registered by tests/gitops/conftest.py) adds :func:`sections` to every failed phase
(setup, call, teardown), and pytest prints them under the failure (xdist carries them along).
Every section is bounded, so a failure adds at most a few screens to the log.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass

import pytest

from tests.gitops.flux import FluxApi, FluxControllers
from tests.gitops.git_server import GitServer

LOG_LINES = 80
MAX_SECTION_CHARS = 12_000


@dataclass
class Watched:
    """What one test runs that could explain its failure; unset parts are left out."""

    flux: FluxControllers | None = None
    git: GitServer | None = None
    api: FluxApi | None = None


WATCHED = pytest.StashKey[Watched]()


def watch(item: pytest.Item) -> Watched:
    """The item's :class:`Watched`, created on first use; fixtures fill in what they start."""
    return item.stash.setdefault(WATCHED, Watched())


def _bounded(text: str) -> str:
    if len(text) <= MAX_SECTION_CHARS:
        return text
    return f"[... {len(text) - MAX_SECTION_CHARS} characters cut]\n{text[-MAX_SECTION_CHARS:]}"


def _statuses(api: FluxApi) -> str:
    try:
        return json.dumps(api.statuses(), indent=1)
    except Exception as exc:  # a report must not hide the test's own failure
        return f"(could not read them: {exc})"


def sections(watched: Watched) -> list[tuple[str, str]]:
    """(title, text) pairs for a failed report, most telling first."""
    found: list[tuple[str, str]] = []
    if watched.api is not None:
        title = f"Flux objects' status in {watched.api.namespace}"
        found.append((title, _bounded(_statuses(watched.api))))
    if watched.flux is not None:
        for name, state, tail in watched.flux.states(LOG_LINES):
            found.append((f"{name} ({state}): last {LOG_LINES} log lines", _bounded(tail)))
    if watched.git is not None:
        found.append(("Git server: requests served", _bounded(watched.git.log_tail(LOG_LINES))))
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        report.sections.extend(sections(watch(item)))
    return report
