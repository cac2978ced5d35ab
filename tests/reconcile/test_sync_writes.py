"""A sync pass writes status only when something a reader can see changed (issue 21, defect 3).

Measured before the fix: with MAS answering 404 to `user-emails`, each accepted Invitation was
PATCHed on every pass, forever (38 writes in two minutes at a 3 s interval): every failed account
lookup moved `accountSearch.at` and `lastSyncedAt`. Here the passes run against the fast layer's
fakes, and the status writes of each pass are counted.
"""

from __future__ import annotations

import asyncio

from .harness import operate
from .scenarios import ADA, NAME
from .subject import Invitation, StatusSync, WatchedInvitation, finalize
from .world import NAMESPACE, World, json_copy

PASSES = 30
WRITE = "Kube PATCH invitation/status"


async def _writes_per_pass(world: World, passes: int) -> list[int]:
    """Run listing passes one sync interval apart; the status writes each made."""
    sync = StatusSync(world.restart(), {})
    writes = []
    for _ in range(passes):
        sync.registry.clear()
        for name, body in world.api.invitations.items():
            sync.registry[(NAMESPACE, name)] = WatchedInvitation.from_body(json_copy(body))
        before = len(world.wire.points)
        await sync.run_pass(list_backend=True)
        writes.append(sum(p.call == WRITE for p in world.wire.points[before:]))
        world.clock.advance(world.settings.sync_interval_seconds)
    return writes


async def _accepted_while_lookups_fail() -> tuple[World, list[int]]:
    world = World()
    world.api.create_invitation(NAME, {"email": ADA})
    assert await operate(world) == []
    world.mas.lookups_refused = True
    world.mas.use(world.api.invitations[NAME]["status"]["tokenId"])
    return world, await _writes_per_pass(world, PASSES)


def test_a_failing_account_lookup_backs_off_without_writing_status() -> None:
    world, writes = asyncio.run(_accepted_while_lookups_fail())
    status = world.api.invitations[NAME]["status"]
    # The pass that saw the use shows it (Accepted, and why the account is not known yet).
    assert writes[0] == 1
    assert status["phase"] == "Accepted"
    known = next(c for c in status["conditions"] if c["type"] == "AccountKnown")
    assert (known["status"], known["reason"]) == ("False", "Searching")
    assert "/user-emails with 404" in known["message"]
    # Then nothing a reader could see changes, and nothing is written.
    assert writes[1:] == [0] * (PASSES - 1), writes
    lookups = sum(p.call == "MAS GET /user-emails" for p in world.wire.points)
    assert 1 < lookups < PASSES, f"{lookups} lookups in {PASSES} passes: no backoff, or no retry"


def test_a_lookup_that_works_again_finds_the_account() -> None:
    async def healed() -> World:
        world, _ = await _accepted_while_lookups_fail()
        world.mas.lookups_refused = False
        world.mas.accounts[ADA] = "@ada:example.org"
        world.clock.advance(world.settings.retry_max_seconds)  # the longest backoff
        await _writes_per_pass(world, 2)
        return world

    status = asyncio.run(healed()).api.invitations[NAME]["status"]
    assert status.get("account") == "@ada:example.org"


def test_a_mas_outage_writes_no_status() -> None:
    async def outage() -> list[int]:
        world = World()
        world.api.create_invitation(NAME, {"email": ADA})
        assert await operate(world) == []
        world.mas.down = True
        return await _writes_per_pass(world, 5)

    assert asyncio.run(outage()) == [0] * 5


def test_a_deleted_invitation_leaves_no_failed_lookup_behind() -> None:
    """The backoff of failed lookups is kept in memory by Invitation uid: a deleted Invitation's
    entry must go with it, or a long-running operator keeps one per Invitation ever accepted
    during an outage."""

    async def deleted() -> tuple[bool, bool]:
        world = World()
        world.api.create_invitation(NAME, {"email": ADA})
        assert await operate(world) == []
        world.mas.lookups_refused = True
        world.mas.use(world.api.invitations[NAME]["status"]["tokenId"])
        deps = world.restart()
        sync = StatusSync(deps, {})
        body = json_copy(world.api.invitations[NAME])
        sync.registry[(NAMESPACE, NAME)] = WatchedInvitation.from_body(body)
        await sync.run_pass(list_backend=True)
        assert deps.onboarding is not None
        invitation = Invitation.from_body(json_copy(world.api.invitations[NAME]))
        waited = deps.onboarding.lookup_waits(invitation, world.clock.now)
        await finalize(deps, invitation)
        return waited, deps.onboarding.lookup_waits(invitation, world.clock.now)

    assert asyncio.run(deleted()) == (True, False)
