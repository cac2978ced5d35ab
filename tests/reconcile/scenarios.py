"""The changes an admin makes to an Invitation, each with the outcome the operator promises.

Every scenario starts from a settled world (built without crashes), makes one change, and says
what must hold once the operator settled, beyond the shared invariants.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

from .harness import Interference, Scenario, operate
from .subject import RESEND_ANNOTATION
from .world import ROOMS, Crash, World

ADA = "ada@example.org"
ADA_ACCOUNT = "@ada:example.org"
BOB = "bob@example.org"
NAME = "ada"
ISSUE = "MAS POST /user-registration-tokens"


def _status(world: World) -> dict[str, Any]:
    body = world.api.invitations.get(NAME)
    return dict((body or {}).get("status") or {})


def _check(*conditions: tuple[bool, str]) -> list[str]:
    return [message for ok, message in conditions if not ok]


async def _settled(world: World) -> None:
    problems = await operate(world)
    assert problems == [], problems


async def nothing(world: World) -> None:
    """An empty cluster and an empty MAS."""


async def invited(world: World, **spec: Any) -> None:
    world.api.create_invitation(NAME, {"email": ADA, **spec})
    await _settled(world)
    assert _status(world).get("phase") == "Sent", _status(world)


async def revoked(world: World) -> None:
    await invited(world)
    world.api.edit_spec(NAME, revoked=True)
    await _settled(world)


async def readdressed_while_revoked(world: World) -> None:
    await revoked(world)
    world.api.edit_spec(NAME, email=BOB)
    await _settled(world)


async def readdressed(world: World) -> None:
    await invited(world)
    world.api.edit_spec(NAME, email=BOB)
    await _settled(world)


async def resent(world: World) -> None:
    await invited(world)
    world.api.annotate(NAME, RESEND_ANNOTATION, "lost it")
    world.api.edit_spec(NAME, resend="2026-06-01")
    await _settled(world)


async def deleted_before_collection(world: World) -> None:
    """Deleted; the garbage collector has not yet removed its Secret when it is re-created."""
    await invited(world)
    world.api.gc_delay = dt.timedelta(minutes=5)
    world.api.delete_invitation(NAME)
    await _settled(world)
    world.api.gc_delay = dt.timedelta()  # later deletions: collected at once
    assert NAME not in world.api.invitations
    assert f"{NAME}-invite-token" in world.api.secrets


async def born_revoked(world: World) -> None:
    world.api.create_invitation(NAME, {"email": ADA, "revoked": True})
    await _settled(world)


async def issued_unrecorded(world: World) -> None:
    """The operator died right after MAS created the token: its id is in no status."""
    tokens = len(world.mas.tokens)
    world.api.create_invitation(NAME, {"email": ADA})
    world.wire.crash_on = (ISSUE, True)
    with contextlib.suppress(Crash):
        await operate(world)
    assert _status(world).get("tokenId") is None
    assert len(world.mas.tokens) == tokens + 1


NEIGHBOURS = {"eve": "eve@example.org", "zoe": "zoe@example.org"}


async def neighbours(world: World) -> None:
    """Two other settled Invitations, whose tokens share MAS's listing (more than one page)."""
    for name, email in NEIGHBOURS.items():
        world.api.create_invitation(name, {"email": email})
    await _settled(world)


async def invited_among_neighbours(world: World) -> None:
    await neighbours(world)
    await invited(world)


async def unrecorded_among_neighbours(world: World) -> None:
    await neighbours(world)
    await issued_unrecorded(world)


async def edit_failed_in_outage(world: World) -> None:
    """An edit whose handler met a MAS outage: Kopf retries it later."""
    await invited(world)
    world.api.edit_spec(NAME, usageLimit=3)
    world.mas.down = True
    await operate(world, rounds=1)
    assert _status(world).get("observedGeneration") == 2, _status(world)


def _outage(minutes: int) -> Callable[[World], None]:
    """MAS answers 503 for a while; the operator's retries wait on the fake clock."""

    def start(world: World) -> None:
        world.mas.down_until = world.clock() + dt.timedelta(minutes=minutes)

    return start


def _created_in_outage(world: World) -> None:
    _outage(2)(world)
    world.api.create_invitation(NAME, {"email": ADA})


def _deleted_in_outage(world: World) -> None:
    _outage(2)(world)
    world.api.delete_invitation(NAME)


def _revert_after_outage(world: World) -> None:
    """MAS is back, and the admin reverts the edit: Kopf sees no change left to handle."""
    world.mas.down = False
    world.api.edit_spec(NAME, usageLimit=None)


def _expect_newest_generation(world: World) -> list[str]:
    body, token = world.api.invitations[NAME], _token(world)
    return _one_token_sent(world) + _check(
        (
            _status(world).get("observedGeneration") == body["metadata"]["generation"],
            "the newest generation was never reconciled",
        ),
        (token is not None and token.usage_limit == 1, "the token kept the reverted limit"),
    )


def _one_token_sent(world: World) -> list[str]:
    status = _status(world)
    return _check(
        (len(world.mas.tokens) == 1, f"{len(world.mas.tokens)} tokens in MAS, not one"),
        (status.get("phase") == "Sent", f"phase {status.get('phase')}, not Sent"),
    )


def _token(world: World) -> Any:
    return world.mas.tokens.get(str(_status(world).get("tokenId")))


def _created(world: World) -> dt.datetime:
    stamp = world.api.invitations[NAME]["metadata"]["creationTimestamp"]
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _expect_limit(world: World) -> list[str]:
    token = _token(world)
    return _one_token_sent(world) + _check(
        (token is not None and token.usage_limit == 3, "the token's usage limit is not 3"),
        (_status(world).get("usageLimit") == 3, "status does not show usage limit 3"),
    )


def _expect_expiry(world: World) -> list[str]:
    token, wanted = _token(world), _created(world) + dt.timedelta(hours=72)
    return _one_token_sent(world) + _check(
        (token is not None and token.expires_at == wanted, "the token's expiry is not +72h"),
    )


def _expect_readdressed(world: World) -> list[str]:
    status, tokens = _status(world), list(world.mas.tokens.values())
    current = _token(world)
    first = tokens[0]
    return _check(
        (len(tokens) == 2, f"{len(tokens)} tokens in MAS, not the old and one new"),
        (first.revoked_at is not None, "the old address's token is not revoked"),
        (current is not None and current.id != first.id, "status still names the old token"),
        (current is not None and current.token != first.token, "the new token reuses the value"),
        (status.get("phase") == "Sent", f"phase {status.get('phase')}, not Sent"),
        (status.get("mailRecipient") == BOB, "the mail record does not name the new address"),
    )


def _expect_revoked(world: World) -> list[str]:
    token = _token(world)
    return _check(
        (len(world.mas.tokens) == 1, f"{len(world.mas.tokens)} tokens in MAS, not one"),
        (token is not None and token.revoked_at is not None, "the token is not revoked"),
        (_status(world).get("phase") == "Revoked", "phase is not Revoked"),
    )


def _expect_phase_revoked_any(world: World) -> list[str]:
    valid = [t.id for t in world.mas.tokens.values() if t.valid(world.clock())]
    return _check(
        (_status(world).get("phase") == "Revoked", f"phase {_status(world).get('phase')}"),
        (valid == [], f"tokens {valid} valid for a revoked Invitation"),
        (len(world.outbox.mails) == 1, "the new address of a revoked Invitation was mailed"),
    )


def _expect_sent_to_bob(world: World) -> list[str]:
    status, token = _status(world), _token(world)
    valid = [t.id for t in world.mas.tokens.values() if t.valid(world.clock())]
    return _check(
        (status.get("phase") == "Sent", f"phase {status.get('phase')}, not Sent"),
        (status.get("mailRecipient") == BOB, "the mail record does not name the new address"),
        (token is not None and valid == [token.id], f"valid tokens {valid}, not the new one"),
        ({m.recipient for m in world.outbox.mails} == {ADA, BOB}, "not mailed to each address"),
    )


def _expect_back_at_ada(world: World) -> list[str]:
    status, tokens = _status(world), list(world.mas.tokens.values())
    valid = [t.id for t in tokens if t.valid(world.clock())]
    return _check(
        (status.get("phase") == "Sent", f"phase {status.get('phase')}, not Sent"),
        (status.get("mailRecipient") == ADA, "the mail record does not name the first address"),
        (len(tokens) == 3 and valid == [tokens[-1].id], "not one fresh token per address change"),
    )


def _expect_reissued_after_collection(world: World) -> list[str]:
    status, token = _status(world), _token(world)
    valid = [t.id for t in world.mas.tokens.values() if t.valid(world.clock())]
    return _check(
        (status.get("phase") == "Sent", f"phase {status.get('phase')}: {status.get('message')}"),
        (token is not None and valid == [token.id], f"valid tokens {valid}"),
    )


def _expect_resent(world: World) -> list[str]:
    return _one_token_sent(world) + _check(
        (_status(world).get("mailsSent") == 2, "status does not count two mails"),
    )


def _expect_reissued(world: World) -> list[str]:
    token = _token(world)
    return _check(
        (len(world.mas.tokens) == 1, f"{len(world.mas.tokens)} tokens in MAS, not one"),
        (
            token is not None and token.token == world.api.secret_value(f"{NAME}-invite-token"),
            "the token issued again does not hold the Secret's value",
        ),
        (_status(world).get("phase") == "Sent", "phase is not Sent"),
        (
            _status(world).get("mailedTokenId") == _status(world).get("tokenId"),
            "the mail record did not move to the token issued again",
        ),
    )


def _expect_gone(world: World) -> list[str]:
    """Ada's Invitation, Secret and token are gone; the neighbours' are untouched."""
    kept = {str((b.get("status") or {}).get("tokenId")) for b in world.api.invitations.values()}
    valid = [t.id for t in world.mas.tokens.values() if t.valid(world.clock())]
    phases = {n: (b.get("status") or {}).get("phase") for n, b in world.api.invitations.items()}
    return _check(
        (NAME not in world.api.invitations, "the Invitation is still there"),
        (f"{NAME}-invite-token" not in world.api.secrets, "the Secret is still there"),
        (set(valid) <= kept, f"tokens {sorted(set(valid) - kept)} still valid after the deletion"),
        (phases == dict.fromkeys(NEIGHBOURS, "Sent"), f"the neighbours changed: {phases}"),
    )


def _expect_nothing_issued(world: World) -> list[str]:
    return _check(
        (not world.mas.tokens, "a token was issued for a revoked Invitation"),
        (not world.api.secrets, "a Secret was created for a revoked Invitation"),
        (not world.outbox.mails, "a revoked Invitation was mailed"),
        (_status(world).get("phase") == "Revoked", "phase is not Revoked"),
    )


def _expect_phase(phase: str) -> Callable[[World], list[str]]:
    def expect(world: World) -> list[str]:
        status = _status(world)
        return _check(
            (len(world.mas.tokens) == 1, f"{len(world.mas.tokens)} tokens in MAS, not one"),
            (status.get("phase") == phase, f"phase {status.get('phase')}, not {phase}"),
        )

    return expect


def _expect_onboarded(phase: str) -> Callable[[World], list[str]]:
    """The account known, each room joined (in the homeserver and in status), one notice."""

    def expect(world: World) -> list[str]:
        status = _status(world)
        rooms = {r["room"]: r["state"] for r in status.get("rooms") or []}
        return _expect_phase(phase)(world) + _check(
            (status.get("account") == ADA_ACCOUNT, f"account {status.get('account')}"),
            (
                all(ADA_ACCOUNT in world.matrix.members.get(room, ()) for room in ROOMS),
                f"not a member of each room: {world.matrix.members}",
            ),
            (rooms == dict.fromkeys(ROOMS, "Joined"), f"status says rooms {rooms}"),
            # Posted once: a lost answer to it is recorded as a failure, not posted again.
            (status.get("noticePosted") is not None, "no notice recorded"),
            (len(world.matrix.notices) >= 1, "no notice posted"),
        )

    return expect


def _used_by_ada(world: World) -> None:
    world.mas.use(_token_id(world), email=ADA, account=ADA_ACCOUNT)


def _token_id(world: World) -> str:
    return str(_status(world)["tokenId"])


def _resend_requests_removed(world: World) -> None:
    world.api.annotate(NAME, RESEND_ANNOTATION, None)
    world.api.edit_spec(NAME, resend=None)


def _delete_token(world: World) -> None:
    world.mas.delete(_token_id(world))


def _revoke_by_hand(world: World) -> None:
    world.mas.revoke(_token_id(world))


SCENARIOS = [
    Scenario(
        "create",
        nothing,
        lambda w: w.api.create_invitation(NAME, {"email": ADA}),
        _one_token_sent,
    ),
    Scenario(
        "edit usage limit", invited, lambda w: w.api.edit_spec(NAME, usageLimit=3), _expect_limit
    ),
    Scenario(
        "edit expiry", invited, lambda w: w.api.edit_spec(NAME, validFor="72h"), _expect_expiry
    ),
    Scenario(
        "change email", invited, lambda w: w.api.edit_spec(NAME, email=BOB), _expect_readdressed
    ),
    Scenario("revoke", invited, lambda w: w.api.edit_spec(NAME, revoked=True), _expect_revoked),
    Scenario(
        "change email while revoked",
        revoked,
        lambda w: w.api.edit_spec(NAME, email=BOB),
        _expect_phase_revoked_any,
    ),
    Scenario(
        "un-revoke at the new address",
        readdressed_while_revoked,
        lambda w: w.api.edit_spec(NAME, revoked=False),
        _expect_sent_to_bob,
    ),
    Scenario(
        "new address and un-revoke in one edit",
        revoked,
        lambda w: w.api.edit_spec(NAME, email=BOB, revoked=False),
        _expect_sent_to_bob,
    ),
    Scenario(
        "back to the first address",
        readdressed,
        lambda w: w.api.edit_spec(NAME, email=ADA),
        _expect_back_at_ada,
        mails_expected={ADA: 2},
    ),
    Scenario(
        "expiry moved into the past",
        invited,
        lambda w: w.api.edit_spec(NAME, expiresAt="2026-06-01T11:00:00Z"),
        _expect_phase("Expired"),
    ),
    Scenario(
        "resend in the spec",
        invited,
        lambda w: w.api.edit_spec(NAME, resend="2026-06-01"),
        _expect_resent,
        mails_expected={ADA: 2},
    ),
    # Tidying up asks for nothing: both markers removed, no third mail.
    Scenario(
        "resend requests removed",
        resent,
        _resend_requests_removed,
        _one_token_sent,
        mails_expected={ADA: 2},
    ),
    Scenario("un-revoke", revoked, lambda w: w.api.edit_spec(NAME, revoked=False), _one_token_sent),
    Scenario(
        "resend annotation",
        invited,
        lambda w: w.api.annotate(NAME, RESEND_ANNOTATION, "lost it"),
        _expect_resent,
        mails_expected={ADA: 2},
    ),
    Scenario("token deleted in MAS", invited, _delete_token, _expect_reissued),
    # MAS-side changes reach reconcile through the sync pass (`repair_drift`), which runs the
    # same steps as the handler.
    Scenario(
        "token used up", invited, lambda w: w.mas.use(_token_id(w)), _expect_phase("Accepted")
    ),
    Scenario("revoked outside Git", invited, _revoke_by_hand, _expect_phase("Revoked")),
    Scenario("expired", invited, lambda w: w.clock.advance(8 * 86400), _expect_phase("Expired")),
    # Kopf calls no handler for an edit reverted while its retry waited; the sync pass must.
    Scenario(
        "edit reverted during an outage",
        edit_failed_in_outage,
        _revert_after_outage,
        _expect_newest_generation,
    ),
    Scenario("created during an outage", nothing, _created_in_outage, _one_token_sent),
    Scenario(
        "deleted during an outage", invited_among_neighbours, _deleted_in_outage, _expect_gone
    ),
    Scenario(
        "delete",
        invited_among_neighbours,
        lambda w: w.api.delete_invitation(NAME),
        _expect_gone,
    ),
    Scenario(
        "delete, token id never recorded",
        unrecorded_among_neighbours,
        lambda w: w.api.delete_invitation(NAME),
        _expect_gone,
    ),
    # The old Secret is not ours: Stalled, retried, and issued once the collector took it.
    Scenario(
        "re-created before the old Secret was collected",
        deleted_before_collection,
        lambda w: w.api.create_invitation(NAME, {"email": ADA}),
        _expect_reissued_after_collection,
        mails_expected={ADA: 2},
    ),
    Scenario(
        "born revoked",
        nothing,
        lambda w: w.api.create_invitation(NAME, {"email": ADA, "revoked": True}),
        _expect_nothing_issued,
    ),
    Scenario(
        "born revoked, then un-revoked",
        born_revoked,
        lambda w: w.api.edit_spec(NAME, revoked=False),
        _one_token_sent,
    ),
    # Onboarding is due on the very first run when spec.account names the account: the mail
    # goes out, then sessions are minted, rooms joined and a notice posted. A crash in there
    # must find the mail recorded (issue 21, defect 1).
    Scenario(
        "create with an account and rooms",
        nothing,
        lambda w: w.api.create_invitation(
            NAME, {"email": ADA, "account": ADA_ACCOUNT, "rooms": list(ROOMS)}
        ),
        _expect_onboarded("Sent"),
    ),
    # The sync pass sees the use, finds the account and joins it (onboarding in the sync pass).
    Scenario(
        "token used, the account joins its rooms",
        lambda w: invited(w, rooms=list(ROOMS)),
        _used_by_ada,
        _expect_onboarded("Accepted"),
    ),
]


def _annotated(world: World) -> None:
    if NAME in world.api.invitations:
        world.api.annotate(NAME, "example.org/owner", "team-a")


def _limit_edited(world: World) -> None:
    if NAME in world.api.invitations:
        world.api.edit_spec(NAME, usageLimit=5)


def _expect_edit_followed(world: World) -> list[str]:
    body = world.api.invitations.get(NAME)
    if body is None:
        return []  # deleted: the edit of a deleting object changes nothing
    status, token = _status(world), _token(world)
    return _check(
        (
            status.get("observedGeneration") == body["metadata"]["generation"],
            "the newest generation was never reconciled",
        ),
        (token is None or token.usage_limit == 5, "the token does not have the edited limit"),
    )


def _delete_if_there(world: World) -> None:
    body = world.api.invitations.get(NAME)
    if body is not None and not body["metadata"].get("deletionTimestamp"):
        world.api.delete_invitation(NAME)


def _expect_deleted(world: World) -> list[str]:
    """Gone; its Secret gone or left to the garbage collector (owned by no live Invitation);
    no valid token the remaining Invitations do not name (the invariants check that too)."""
    kept = {str((b.get("status") or {}).get("tokenId")) for b in world.api.invitations.values()}
    valid = {t.id for t in world.mas.tokens.values() if t.valid(world.clock())}
    return _check(
        (NAME not in world.api.invitations, "the Invitation is still there"),
        (not _secret_owned(world), "the Secret is still there, with a live owner"),
        (valid <= kept, f"tokens {sorted(valid - kept)} still valid after the deletion"),
    )


def _secret_owned(world: World) -> bool:
    secret = world.api.secrets.get(f"{NAME}-invite-token")
    live = {b["metadata"]["uid"] for b in world.api.invitations.values()}
    owners = (secret or {}).get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") in live for ref in owners)


#: What the admin does while the crashed operator is down.
WHILE_DOWN = Interference("deleted", _delete_if_there, _expect_deleted)

INTERFERENCES = [
    # Kopf's bookkeeping, or an admin's annotation: the resourceVersion moves, the spec does not.
    Interference("an annotation", _annotated),
    Interference("usage limit edited", _limit_edited, _expect_edit_followed),
    Interference("deleted meanwhile", _delete_if_there, _expect_deleted),
]
