"""Runs a scenario as the operator would, crashes it, restarts it, and judges the end state.

`operate` plays one operator process: Kopf calling handlers.py's handlers (create/update for a
change not yet handled, resume at a process start, delete), then the sync pass, in rounds until
a round changes nothing, and neither does the next one, a sync interval later; temporary errors
wait their delay on the fake clock. A crash ends the
process; the next one gets fresh `Dependencies` over the same world and operates until settled.

`sweep` runs a scenario once without a crash to count its crash points (the requests made after
the change), then once per point and side (before the effect; after it, the answer lost).
`crash_twice` crashes again during the repair, `crash_then` lets the admin act while no operator
runs, `interfere` lets someone else write between two requests. After each run: the invariants
of tests/integration/invariants.py (one pure function, here over a snapshot of the fakes), the
scenario's promises, no token value outside the Secret and the mail, and a settled Invitation
reconciled once more changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tests.integration.invariants import Snapshot, evaluate

from .subject import (
    GROUP,
    HandledChanges,
    Invitation,
    OperatorError,
    ProgressStorage,
    StatusSync,
    WatchedInvitation,
    kopf,
    kopf_body,
    on_change,
    on_delete,
    on_resume,
    reconcile,
)
from .world import (
    NAMESPACE,
    BackendFactory,
    Crash,
    CrashPlan,
    CrashPoint,
    FakeTokenBackend,
    World,
    json_copy,
)

#: Rounds without a quiet one before a run counts as "never settles".
MAX_ROUNDS = 30  # an outage of minutes takes a few backoffs


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A change to a settled world, and what must be true once the operator has handled it."""

    name: str
    prepare: Callable[[World], Awaitable[None]]  # the world before the change (no crash)
    change: Callable[[World], object]  # what the admin did (kubectl, Flux, MAS's admin)
    expect: Callable[[World], list[str]]  # promises beyond the invariants; [] when kept
    mails_expected: Mapping[str, int] = dataclasses.field(default_factory=dict)
    authentik: bool = False  # with authentik configured: an enrollment invitation per Invitation


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
    recovery: list[CrashPoint] = dataclasses.field(default_factory=list)  # the restart's requests


async def operate(world: World, *, rounds: int = MAX_ROUNDS) -> list[str]:
    """One operator process, in rounds until a round changes nothing: Kopf calls the handlers of
    handlers.py as it would (a change not yet handled: on.create/on.update; on a process start:
    on.resume; deletion: on.delete, then the finalizer goes), then the sync pass runs (an expiry
    wake-up if one is due, an acceptance pass if one would list anything, and a listing pass).
    Temporary errors are retried after their delay on the fake clock; a permanent one waits for
    the next change. Returns problems seen."""
    started, world.process_alive = not world.process_alive, True
    deps = world.restart()
    memo = kopf.Memo()
    memo.deps, memo.config = deps, world.settings
    # Kopf's diff base as handlers.py configures it: derived from status, Kopf's progress
    # records (a retry under way) and what this process handled; it writes nothing.
    changes = memo.handled_changes = HandledChanges(ProgressStorage(prefix=GROUP))
    registry: dict[tuple[str, str], WatchedInvitation] = {}
    sync = StatusSync(deps, registry)
    retries: dict[str, int] = {}
    problems: list[str] = []
    quiet = 0
    for round_ in range(rounds):
        world.api.collect_garbage()  # another controller, between our rounds
        version = world.ledger.version
        for name in sorted(world.api.invitations):
            world.wire.epoch += 1  # Kopf hands the handler the body it has: a read of its own
            body = json_copy(world.api.invitations[name])
            # Kopf counts a handler's retries in its progress record, also across a restart.
            retry = world.api.progress(name).get("retries", 0)
            deleting = bool(body["metadata"].get("deletionTimestamp"))
            try:
                if deleting:
                    await on_delete(body=kopf_body(body), memo=memo, retry=retry)
                    world.api.remove_finalizer(name)
                elif changes.fetch(body=kopf_body(body)) is None:
                    await on_change(body=kopf_body(body), memo=memo, retry=retry)
                    world.api.set_progress(name, None)  # Kopf purges a retry's record
                elif started and round_ == 0:
                    await on_resume(body=kopf_body(body), memo=memo, retry=retry)
                    world.api.set_progress(name, None)
                retries.pop(name, None)
            except kopf.TemporaryError as exc:
                retries[name] = retry + 1
                if not deleting and name in world.api.invitations:
                    world.api.set_progress(name, {"retries": retry + 1})
                problems += _leaks(world, str(exc), f"{name}: error")
                world.clock.advance(float(exc.delay or 60))
            except kopf.PermanentError as exc:
                problems += _leaks(world, str(exc), f"{name}: error")
                world.api.set_progress(name, None)  # Kopf is done; it waits for the next change
        world.wire.epoch += 1  # the sync pass reads the watch cache
        registry.clear()
        for name, body in world.api.invitations.items():
            registry[(NAMESPACE, name)] = WatchedInvitation.from_body(json_copy(body))
        if any(w.due(world.clock()) for w in registry.values()):
            await _sync_pass(sync, list_backend=False)
        if sync.awaits_acceptance():  # the loop's acceptance pass, between two full passes
            await sync.run_recent_pass()
        complete = await _sync_pass(sync, list_backend=True)
        if not complete:
            # A pass that could not list, or failed for an Invitation, left undone what it would
            # have done (an onboarding retry due now, say): no quiet round. The next pass comes
            # an interval later.
            quiet = 0
            world.clock.advance(world.settings.sync_interval_seconds)
            continue
        if world.ledger.version != version or retries:
            quiet = 0
            continue
        quiet += 1
        if quiet == 2:
            return problems
        # Quiet now; the next sync pass comes an interval later (one that failed is retried
        # only then), and it must find nothing to do either.
        world.clock.advance(world.settings.sync_interval_seconds)
    return [*problems, f"no two quiet rounds in {rounds}: the operator never settles"]


async def _sync_pass(sync: StatusSync, *, list_backend: bool) -> bool:
    """One pass, and the reconciles of lagging Invitations it started in tasks of their own;
    whether the pass did all it meant to (False: it could not list, or failed for one)."""
    passes = sync.passes
    report = await sync.run_pass(list_backend=list_backend)
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for result in await asyncio.gather(*others, return_exceptions=True):
        if isinstance(result, Crash):
            raise result
    return sync.passes > passes and report.failed == 0


async def run(
    scenario: Scenario,
    plan: CrashPlan | None,
    *,
    backend: BackendFactory = FakeTokenBackend,
    crash_window: bool = True,
    interference: tuple[int, Interference] | None = None,
    then: CrashPlan | None = None,
    while_down: Interference | None = None,
    prepared: World | None = None,
) -> Outcome:
    """The scenario with at most one crash (`then`: and one more in the restarted process,
    counted from its first request); `crash_window=False` denies the documented
    duplicate-mail window (to show that the mail count is checked)."""
    world = prepared.fork() if prepared is not None else await prepare(scenario, backend)
    start, events_before = len(world.wire.points), len(world.events.events)
    world.wire.crashed_at = None  # a crash the preparation planned is not this run's
    scenario.change(world)
    world.wire.plan = None if plan is None else dataclasses.replace(plan, at=start + plan.at)
    if interference is not None:
        at, meddler = interference
        world.wire.meddle = (start + at, lambda: meddler.act(world))
    restart: int | None = None
    try:
        problems = await operate(world)
    except Crash:
        crashed = world.wire.crashed_at
        if while_down is not None:
            while_down.act(world)  # the admin acts while no operator runs
        restart = len(world.wire.points)
        if then is not None:
            world.wire.plan = dataclasses.replace(then, at=restart + then.at)
        try:
            problems = await operate(world)  # the restart: a new process
        except Crash:
            problems = await operate(world)  # and another
        if then is not None and world.wire.crashes < 2:
            problems.append(f"planned second crash {then} never happened")
        world.wire.crashed_at = crashed
    points = [dataclasses.replace(p, index=p.index - start) for p in world.wire.points[start:]]
    recovery = [] if restart is None else world.wire.points[restart:]
    recovery = [dataclasses.replace(p, index=p.index - (restart or 0)) for p in recovery]
    crashed = world.wire.crashed_at
    if crashed is not None:
        crashed = dataclasses.replace(crashed, index=crashed.index - start)
    if plan is not None and plan.lost_answer:
        if world.wire.lost_at is None:
            problems.append(f"planned lost answer {plan} never happened")
        else:
            crashed = dataclasses.replace(
                world.wire.lost_at, index=world.wire.lost_at.index - start
            )
    elif plan is not None and crashed is None:
        problems.append(f"planned crash {plan} never happened")
    allowed = world.duplicates_allowed() if crash_window else {}
    report = evaluate(
        snapshot(world), duplicate_mail_allowed=allowed, mails_expected=scenario.mails_expected
    )
    expect = scenario.expect
    if interference is not None and interference[1].expect is not None:
        expect = interference[1].expect
    if while_down is not None and while_down.expect is not None and crashed is not None:
        expect = while_down.expect
    problems += report.violations + expect(world) + leaked_secrets(world) + up_to_date(world)
    problems += await repeated_reconcile_changes_nothing(world)  # last: it may repair
    if interference is not None and world.wire.meddle is not None:
        problems.append(f"{interference[1].name} at {interference[0]} never happened")
    events = [f"{e.type} {e.reason}" for e in world.events.events[events_before:]]
    label = (
        "clean"
        if plan is None
        else f"{'fault' if plan.lost_answer else 'crash'} {plan} ({crashed})"
    )
    if then is not None:
        label += f", then {then} of the restart"
    if while_down is not None:
        label += f", then {while_down.name} while down"
    if interference is not None:
        label = f"{interference[1].name} before {interference[0]}"
    return Outcome(
        label,
        plan,
        crashed,
        points,
        problems,
        report.duplicate_mails,
        events,
        world.api.conflicts,
        recovery,
    )


async def prepare(scenario: Scenario, backend: BackendFactory = FakeTokenBackend) -> World:
    """The settled world before the scenario's change (its requests are not the scenario's)."""
    world = World(backend=backend, authentik=scenario.authentik)
    await scenario.prepare(world)
    world.wire.points.clear()
    return world


async def repeated_reconcile_changes_nothing(world: World) -> list[str]:
    """Every step is idempotent: once settled, reconcile once more (as a resume after another
    restart would) and nothing may change: no token, Secret, mail or Event, no status field but
    the time of the last sync."""
    deps = world.restart()
    problems: list[str] = []
    for name in sorted(world.api.invitations):
        body = json_copy(world.api.invitations[name])
        if body["metadata"].get("deletionTimestamp"):
            continue
        before, calls = _fingerprint(world), len(world.wire.points)
        with contextlib.suppress(OperatorError):
            await reconcile(deps, Invitation.from_body(body))
        if _fingerprint(world) != before:
            changed = [p.call for p in world.wire.points[calls:] if p.changed]
            problems.append(f"{name}: reconciling the settled Invitation again did {changed}")
    return problems


def _fingerprint(world: World) -> str:
    bodies = []
    for body in json_copy(list(world.api.invitations.values())):
        body["metadata"].pop("resourceVersion", None)
        (body.get("status") or {}).pop("lastSyncedAt", None)
        bodies.append(body)
    secrets = {name: world.api.secret_value(name) for name in world.api.secrets}
    tokens, mails, events = world.mas.snapshot(), world.outbox.mails, world.events.events
    invites = sorted(world.authentik.invites) if world.authentik is not None else []
    return json.dumps([bodies, secrets, tokens, len(mails), len(events), invites], default=str)


def snapshot(world: World) -> Snapshot:
    return Snapshot(
        invitations=list(world.api.invitations.values()),
        tokens=world.mas.snapshot(),
        secrets={
            (NAMESPACE, name): world.api.secret_value(name) or "" for name in world.api.secrets
        },
        mails=[m.recipient for m in world.outbox.mails],
    )


def up_to_date(world: World) -> list[str]:
    """Settled means: the status speaks of the newest generation (what kstatus and Flux read),
    and the last mail to a Sent Invitation's invitee carries the token its Secret holds."""
    problems: list[str] = []
    for name, body in world.api.invitations.items():
        if body["metadata"].get("deletionTimestamp"):
            continue
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"]["generation"]:
            problems.append(f"{name}: status is of generation {status.get('observedGeneration')}")
        mails = [m for m in world.outbox.mails if m.invitation_uid == body["metadata"]["uid"]]
        if status.get("phase") == "Sent" and mails:
            secret = world.api.secret_value(str(status.get("secretName")))
            if mails[-1].token_value != secret or mails[-1].recipient != body["spec"]["email"]:
                problems.append(f"{name}: the last mail does not carry the Secret's token")
    return problems


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
    base = await prepare(scenario, backend)
    clean = await run(scenario, None, crash_window=crash_window, prepared=base)
    outcomes = [clean]
    for point in clean.points:
        sides = (False, True) if point.changed else (False,)
        for after in sides:
            plan = CrashPlan(point.index, after)
            outcome = await run(scenario, plan, crash_window=crash_window, prepared=base)
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


INVITATION_CALLS = ("Kube GET invitation", "Kube PATCH invitation/status")


def seen_apart(points: list[CrashPoint]) -> list[CrashPoint]:
    """The requests before which a write to the Invitation can be told apart from one before
    the previous request: the operator sees the Invitation only through its requests to it and
    the bodies Kopf and the watch cache hand over (a new epoch); a write before any other
    request is the same run as one a request earlier."""
    kept: list[CrashPoint] = []
    for before, point in zip([None, *points], points, strict=False):
        if before is None or before.call in INVITATION_CALLS or before.epoch != point.epoch:
            kept.append(point)
    return kept


async def interfere(scenario: Scenario, interference: Interference) -> Sweep:
    """The scenario with someone else's write landing before each of the operator's requests
    in turn: conditioned status writes meet 409s, and the operator must still converge."""
    base = await prepare(scenario)
    clean = await run(scenario, None, prepared=base)
    outcomes = [clean]
    for point in seen_apart(clean.points):
        meddled = (point.index, interference)
        outcomes.append(await run(scenario, None, interference=meddled, prepared=base))
    return Sweep(f"{scenario.name} + {interference.name}", clean.points, outcomes)


def distinct_crashes(points: list[CrashPoint]) -> list[CrashPlan]:
    """The crashes that leave distinct worlds behind: before the first request, and after
    each request that changed something. (A crash before a request that changes nothing, or
    before any request, leaves the world as the crash after the last change did: what the
    next process finds is all that differs between crashes.)"""
    first = [CrashPlan(points[0].index, after_effect=False)] if points else []
    return first + [CrashPlan(p.index, after_effect=True) for p in points if p.changed]


async def crash_twice(scenario: Scenario) -> Sweep:
    """Crash after each effect (the server acted, the answer was lost: what the restart must
    repair), then again in each distinct state of that repair."""
    base = await prepare(scenario)
    clean = await run(scenario, None, prepared=base)
    outcomes = [clean]
    for first in distinct_crashes(clean.points)[1:]:
        once = await run(scenario, first, prepared=base)
        for second in distinct_crashes(once.recovery):
            outcomes.append(await run(scenario, first, then=second, prepared=base))
    return Sweep(f"{scenario.name}, crashed twice", clean.points, outcomes)


async def crash_then(scenario: Scenario, while_down: Interference) -> Sweep:
    """Crash in each distinct state; while no operator runs, someone acts (deletes the
    Invitation, say); the next process must settle what it finds."""
    base = await prepare(scenario)
    clean = await run(scenario, None, prepared=base)
    outcomes = [clean]
    for plan in distinct_crashes(clean.points):
        outcomes.append(await run(scenario, plan, while_down=while_down, prepared=base))
    return Sweep(f"{scenario.name}, crash, then {while_down.name}", clean.points, outcomes)


async def lose_answers(scenario: Scenario) -> Sweep:
    """At each request in turn, the server acts and its answer is lost (a timeout, a reset):
    no crash, the operator's own error handling and Kopf's retries must settle it."""
    base = await prepare(scenario)
    clean = await run(scenario, None, prepared=base)
    outcomes = [clean]
    for point in clean.points:
        plan = CrashPlan(point.index, after_effect=True, lost_answer=True)
        outcomes.append(await run(scenario, plan, prepared=base))
    return Sweep(f"{scenario.name}, answers lost", clean.points, outcomes)
