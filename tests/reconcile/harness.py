"""Runs a scenario as Kopf would, crashes it at one await, restarts, and judges the end state.

`operate` plays the operator: for each Invitation it runs `finalize` (deleted) or `reconcile`
(live), retries temporary errors after the delay they ask for (on the fake clock), and stops
when a whole round changed nothing. A crash ends the process; the restart gets fresh
`Dependencies` over the same world and operates again until it settles.

`sweep` runs a scenario once without a crash to count its crash points, then once per point
and side (before the effect; after it, answer lost), and checks after each restart:
the invariants of tests/integration/invariants.py (one pure function over a snapshot of the
fakes), no token value outside the Secret and the mail, and what the scenario promises.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tests.integration.invariants import Snapshot, evaluate

from .subject import Invitation, OperatorError, PermanentError, finalize, reconcile
from .world import NAMESPACE, BackendFactory, Crash, CrashPlan, CrashPoint, FakeTokenBackend, World

#: Rounds without a quiet one before a run counts as "never settles".
MAX_ROUNDS = 8


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A change to a settled world, and what must be true once the operator has handled it."""

    name: str
    prepare: Callable[[World], Awaitable[None]]  # the world before the change (no crash)
    change: Callable[[World], object]  # what the admin did (kubectl, Flux, MAS's admin)
    expect: Callable[[World], list[str]]  # promises beyond the invariants; [] when kept
    mails_expected: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Interference:
    """A write by someone else that lands between two requests of the operator's."""

    name: str
    act: Callable[[World], object]
    # What must hold afterwards instead of the scenario's own promises (None: those still hold).
    expect: Callable[[World], list[str]] | None = None


@dataclasses.dataclass
class Outcome:
    label: str  # "crash 3-after", "Kopf's annotation before 3", "clean"
    plan: CrashPlan | None
    crashed_at: CrashPoint | None
    points: list[CrashPoint]
    problems: list[str]
    duplicate_mails: int = 0
    events: list[str] = dataclasses.field(default_factory=list)  # "Type Reason", since the change
    conflicts: int = 0  # status writes the API server refused for a stale resourceVersion


async def operate(world: World) -> list[str]:
    """One operator process handling every Invitation until a round changes nothing."""
    deps = world.restart()
    problems: list[str] = []
    stalled: set[str] = set()
    for _ in range(MAX_ROUNDS):
        version = world.ledger.version
        for name in sorted(world.api.invitations):
            if name in stalled:
                continue
            body = world.api.invitations[name]
            invitation = Invitation.from_body(json.loads(json.dumps(body)))
            try:
                if body["metadata"].get("deletionTimestamp"):
                    await finalize(deps, invitation)
                    world.api.remove_finalizer(name)  # Kopf, once the handler succeeded
                else:
                    await reconcile(deps, invitation)
            except PermanentError as exc:
                stalled.add(name)  # Kopf stops retrying; status says Stalled
                problems.extend(_leaks(world, str(exc), f"{name}: error"))
            except OperatorError as exc:
                problems.extend(_leaks(world, str(exc), f"{name}: error"))
                world.clock.advance(getattr(exc, "retry_after", 30.0))  # Kopf's retry delay
        if world.ledger.version == version:
            return problems
    return [*problems, f"no quiet round in {MAX_ROUNDS}: the operator never settles"]


async def run(
    scenario: Scenario,
    plan: CrashPlan | None,
    *,
    backend: BackendFactory = FakeTokenBackend,
    crash_window: bool = True,
    interference: tuple[int, Interference] | None = None,
) -> Outcome:
    """The scenario with at most one crash; `crash_window=False` denies the documented
    duplicate-mail window (to show that the mail count is checked)."""
    world = World(backend=backend)
    await scenario.prepare(world)
    start, events_before = len(world.wire.points), len(world.events.events)
    world.wire.crashed_at = None  # a crash the preparation planned is not this run's
    scenario.change(world)
    world.wire.plan = None if plan is None else CrashPlan(start + plan.at, plan.after_effect)
    if interference is not None:
        at, meddler = interference
        world.wire.meddle = (start + at, lambda: meddler.act(world))
    try:
        problems = await operate(world)
    except Crash:
        problems = await operate(world)  # the restart
    points = [dataclasses.replace(p, index=p.index - start) for p in world.wire.points[start:]]
    crashed = world.wire.crashed_at
    if crashed is not None:
        crashed = dataclasses.replace(crashed, index=crashed.index - start)
    if plan is not None and crashed is None:
        problems.append(f"planned crash {plan} never happened")
    allowed = world.unrecorded_at_crash if crash_window else {}
    report = evaluate(
        snapshot(world), duplicate_mail_allowed=allowed, mails_expected=scenario.mails_expected
    )
    expect = scenario.expect
    if interference is not None and interference[1].expect is not None:
        expect = interference[1].expect
    problems += report.violations + expect(world) + leaked_secrets(world)
    if interference is not None and world.wire.meddle is not None:
        problems.append(f"{interference[1].name} at {interference[0]} never happened")
    events = [f"{e.type} {e.reason}" for e in world.events.events[events_before:]]
    label = "clean" if plan is None else f"crash {plan} ({crashed})"
    if interference is not None:
        label = f"{interference[1].name} before {interference[0]}"
    return Outcome(
        label, plan, crashed, points, problems, report.duplicate_mails, events, world.api.conflicts
    )


def snapshot(world: World) -> Snapshot:
    return Snapshot(
        invitations=list(world.api.invitations.values()),
        tokens=world.mas.snapshot(),
        secrets={
            (NAMESPACE, name): world.api.secret_value(name) or "" for name in world.api.secrets
        },
        mails=[m.recipient for m in world.outbox.mails],
    )


def leaked_secrets(world: World) -> list[str]:
    """A token value appears only in the Secret and the mail: never in status or Events."""
    problems: list[str] = []
    for body in world.api.invitations.values():
        problems += _leaks(world, json.dumps(body.get("status") or {}), f"{_name(body)}: status")
        problems += _leaks(world, json.dumps(body["metadata"]), f"{_name(body)}: metadata")
    for event in world.events.events:
        problems += _leaks(world, event.message, f"Event {event.reason}")
    for mail in world.outbox.mails:
        token = world.mas.tokens.get(mail.token_id)
        if token is not None and token.token != mail.token_value:
            problems.append(f"mail to {mail.recipient} carries a value token {mail.token_id} lacks")
    return problems


def _leaks(world: World, text: str, where: str) -> list[str]:
    return [f"{where} shows a token value" for v in world.token_values() if v in text]


def _name(body: dict[str, Any]) -> str:
    return str(body["metadata"]["name"])


@dataclasses.dataclass
class Sweep:
    scenario: str
    points: list[CrashPoint]
    outcomes: list[Outcome]

    @property
    def failures(self) -> list[str]:
        return [
            f"{self.scenario}, {o.label}: {problem}"
            for o in self.outcomes
            for problem in o.problems
        ]

    @property
    def crash_runs(self) -> int:
        return sum(1 for o in self.outcomes if o.plan is not None)


async def sweep(
    scenario: Scenario,
    *,
    backend: BackendFactory = FakeTokenBackend,
    crash_window: bool = True,
) -> Sweep:
    """Crash the scenario at every await, before and (where the call changed something) after
    its effect; every run must end in a world that keeps the promises."""
    clean = await run(scenario, None, backend=backend, crash_window=crash_window)
    outcomes = [clean]
    for point in clean.points:
        sides = (False, True) if point.changed else (False,)
        for after in sides:
            plan = CrashPlan(point.index, after)
            outcome = await run(scenario, plan, backend=backend, crash_window=crash_window)
            if outcome.crashed_at is not None and (
                outcome.crashed_at.call,
                outcome.crashed_at.step,
            ) != (point.call, point.step):
                outcome.problems.append(
                    f"nondeterministic: point {point.index} was {point.call} in "
                    f"{point.step}, now {outcome.crashed_at.call} in {outcome.crashed_at.step}"
                )
            # A crash of our own is no drift made outside Git: no Warning the clean run lacks.
            warnings = {e for e in outcome.events if e.startswith("Warning")}
            outcome.problems += [
                f"{e} after a crash, not without" for e in sorted(warnings - set(clean.events))
            ]
            outcomes.append(outcome)
    return Sweep(scenario.name, clean.points, outcomes)


async def interfere(scenario: Scenario, interference: Interference) -> Sweep:
    """The scenario with someone else's write landing before each of the operator's requests
    in turn: conditioned status writes meet 409s, and the operator must still converge."""
    clean = await run(scenario, None)
    outcomes = [clean]
    for point in clean.points:
        outcomes.append(await run(scenario, None, interference=(point.index, interference)))
    return Sweep(f"{scenario.name} + {interference.name}", clean.points, outcomes)
