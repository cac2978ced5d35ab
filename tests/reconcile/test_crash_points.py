"""Every scenario, crashed at each await of reconcile and finalize, settles keeping the promises."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType

import pytest

from .harness import Interference, Scenario, Sweep, seen_apart
from .scenarios import INTERFERENCES, SCENARIOS
from .subject import reconcile_module, sync_module

#: Coroutine functions of reconcile and the sync pass that await no fake themselves, and why.
NOT_STEPS = {
    "reconcile": "the entry: takes the lock and awaits read_current and the steps",
    "sync.run_pass": "awaits list_tokens and sync_invitations",
    "sync._converge": "awaits reconcile (converge_lagging's task), whose steps are counted",
    "sync.aclose": "cancels tasks",
    "sync.run_forever": "the timer loop; the harness runs its passes in rounds instead",
}


def _coroutine_functions(module: ModuleType, prefix: str = "") -> set[str]:
    names = set()
    for name, member in inspect.getmembers(module):
        if inspect.iscoroutinefunction(member) and member.__module__ == module.__name__:
            names.add(prefix + name)
        elif inspect.isclass(member) and member.__module__ == module.__name__:
            names |= {
                prefix + method
                for method, function in inspect.getmembers(member, inspect.iscoroutinefunction)
            }
    return names


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_crash_settles_keeping_the_promises(
    scenario: Scenario, swept: Callable[[Scenario], Sweep]
) -> None:
    result = swept(scenario)
    assert result.points, "the scenario made no call: nothing was tested"
    assert result.crash_runs >= len(result.points)
    assert result.failures == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_crash_during_the_repair_of_a_crash_settles_too(
    scenario: Scenario, swept_twice: Callable[[Scenario], Sweep]
) -> None:
    result = swept_twice(scenario)
    assert len(result.outcomes) > 1, "no crash after an effect: nothing was repaired"
    assert result.failures == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_lost_answer_settles_keeping_the_promises(
    scenario: Scenario, swept_losing_answers: Callable[[Scenario], Sweep]
) -> None:
    """Timeouts after the server acted: transient errors, Kopf's retries and the sync pass's
    next round must reach the same end as a run without them."""
    result = swept_losing_answers(scenario)
    assert len(result.outcomes) == len(result.points) + 1
    assert result.failures == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_an_invitation_deleted_while_the_operator_is_down_leaves_no_token(
    scenario: Scenario, swept_then_deleted: Callable[[Scenario], Sweep]
) -> None:
    result = swept_then_deleted(scenario)
    assert result.crash_runs == 1 + sum(p.changed for p in result.points)
    assert result.failures == []


def test_every_step_of_reconcile_finalize_and_the_sync_pass_was_crashed_in(
    swept: Callable[[Scenario], Sweep],
) -> None:
    steps = _coroutine_functions(reconcile_module) | _coroutine_functions(sync_module, "sync.")
    assert steps >= set(NOT_STEPS), "an exclusion names a function that no longer exists"
    crashed = {
        o.crashed_at.step
        for scenario in SCENARIOS
        for o in swept(scenario).outcomes
        if o.crashed_at is not None
    }
    assert steps - set(NOT_STEPS) - crashed == set()


@pytest.mark.parametrize("interference", INTERFERENCES, ids=[i.name for i in INTERFERENCES])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_write_by_someone_else_between_two_requests_changes_no_outcome(
    scenario: Scenario,
    interference: Interference,
    interfered: Callable[[Scenario, Interference], Sweep],
) -> None:
    result = interfered(scenario, interference)
    assert len(result.outcomes) == 1 + len(seen_apart(result.points))
    assert result.failures == []


def test_interference_meets_stale_resource_versions(
    interfered: Callable[[Scenario, Interference], Sweep],
) -> None:
    """Without 409s the conditioned status writes were never put to the test."""
    result = interfered(SCENARIOS[0], INTERFERENCES[0])
    assert sum(o.conflicts for o in result.outcomes) > 0
