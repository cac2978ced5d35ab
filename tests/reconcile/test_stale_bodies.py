"""A run decides on the body Kopf hands over only where a stale one cannot cost a second mail.

Kopf hands the handler the newest body its watch delivered; a status this process wrote a moment
ago may not have arrived yet. An Invitation without a token id in status is decided on that body
(one GET less per new Invitation, issue 24): its first write, conditioned on the body's
resourceVersion, comes before anything that must not happen twice, and a 409 there means
"decide again on a fresh read". Every other run reads first. Here the handler gets the bodies
of a new Invitation's own history after it settled, and must leave everything as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .harness import operate
from .scenarios import ADA, NAME
from .subject import Invitation, WatchedInvitation, reconcile, reconcile_module
from .world import World, json_copy

READ = "Kube GET invitation"
WRITE = "Kube PATCH invitation/status"
MAIL_RECORD = ("mailSentAt", "mailRecipient", "mailedTokenId", "mailsSent", "resendHandled")

Body = dict[str, Any]


async def _settled() -> tuple[World, Body]:
    """A new Invitation, mailed and settled; and its body as Kopf first handed it over."""
    world = World()
    created = world.api.create_invitation(NAME, {"email": ADA})
    assert await operate(world) == []
    assert len(world.outbox.mails) == 1
    return world, created


def _token_id_only(world: World, created: Body) -> Body:
    """The body between the run's two writes: the token id recorded, the mail not yet."""
    body = json_copy(world.api.invitations[NAME])
    for field in MAIL_RECORD:
        body["status"].pop(field, None)
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    return body


async def _handle_again(world: World, body: Body) -> tuple[list[str], Body, int, int]:
    """Reconcile `body` in a new process; its requests, and the status, mails and Events after."""
    before = len(world.wire.points)
    events = len(world.events.events)
    await reconcile(world.restart(), Invitation.from_body(json_copy(body)), whole_body=True)
    calls = [p.call for p in world.wire.points[before:]]
    status = json_copy(world.api.invitations[NAME]["status"])
    status.pop("lastSyncedAt")  # the clock moved on: any reconcile says when it last looked
    return calls, status, len(world.outbox.mails), len(world.events.events) - events


def test_a_new_invitation_is_decided_on_the_watch_body() -> None:
    """The first run of a new Invitation reads nothing of it: Kopf's body is current."""
    world, _ = asyncio.run(_settled())
    calls = [p.call for p in world.wire.points]
    assert READ not in calls
    assert calls.count(WRITE) == 2  # the token id, then the mail record with the status


def test_the_first_body_after_the_mail_mails_no_one_twice() -> None:
    """Kopf's first body again, after the run it started mailed: the first write is refused for
    its resourceVersion, and the run decides again on a fresh read."""

    async def scenario() -> None:
        world, created = await _settled()
        settled = json_copy(world.api.invitations[NAME]["status"])
        settled.pop("lastSyncedAt")
        calls, status, mails, events = await _handle_again(world, created)
        assert WRITE in calls
        assert READ in calls
        assert calls.index(WRITE) < calls.index(READ), calls  # the 409, then the fresh read
        assert not any(call.startswith("SMTP") for call in calls)
        assert (mails, events) == (1, 0)
        assert status == settled

    asyncio.run(scenario())


def test_a_body_with_a_token_id_is_read_afresh() -> None:
    """The body between the token id's write and the mail record's: a mail would follow with no
    write before it, so the run reads first, and finds the mail recorded."""

    async def scenario() -> None:
        world, created = await _settled()
        settled = json_copy(world.api.invitations[NAME]["status"])
        settled.pop("lastSyncedAt")
        calls, status, mails, events = await _handle_again(world, _token_id_only(world, created))
        assert calls[0] == READ
        assert (mails, events) == (1, 0)
        assert status == settled

    asyncio.run(scenario())


def test_the_sync_pass_digest_is_read_afresh() -> None:
    """The sync pass hands over its registry's digest of a body, without the annotations (a
    resend request among them): never decided on unread, even without a token id."""

    async def scenario() -> None:
        world, created = await _settled()
        digest = WatchedInvitation.from_body(json_copy(created)).body()
        before = len(world.wire.points)
        await reconcile(world.restart(), Invitation.from_body(digest))
        assert world.wire.points[before].call == READ
        assert len(world.outbox.mails) == 1

    asyncio.run(scenario())


def test_deciding_on_a_body_with_a_token_id_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same body decided on without the read mails the invitee a second time: the test
    above is what keeps `decidable_unread` from accepting it."""

    def any_body(invitation: Invitation) -> bool:
        return invitation.resource_version is not None

    monkeypatch.setattr(reconcile_module, "decidable_unread", any_body)

    async def scenario() -> int:
        world, created = await _settled()
        _, _, mails, _ = await _handle_again(world, _token_id_only(world, created))
        return mails

    assert asyncio.run(scenario()) == 2
