"""When onboarding acts, decided from status alone, and what it records when it cannot act.

`Onboarding.due` runs for every Invitation on every sync pass, so it must say no without I/O
unless a search, a room or the notice is due. The backend here is the operator's own stand-in
for a broken configuration: every lookup fails, which `apply` must record, never raise.
"""

from __future__ import annotations

import datetime as dt

from matrix_invite_operator.errors import ConfigurationError
from matrix_invite_operator.formats import rfc3339
from matrix_invite_operator.models import (
    AccountSearch,
    InvitationSpec,
    InvitationStatus,
    RoomState,
    RoomStatus,
)
from matrix_invite_operator.onboarding import MAX_SEARCHES, Onboarding
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.status import compute_status
from matrix_invite_operator.unconfigured import UnconfiguredBackend

from tests.onboarding_invitation import applied, invitation

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SPEC = InvitationSpec(email="ada@example.org", rooms=["#team:example.org"])
ONBOARDING = Onboarding(
    Settings(retry_base_seconds=10, retry_max_seconds=60),
    UnconfiguredBackend(ConfigurationError("no MAS configured")),
)


def searched(uses: int, attempts: int, seconds_ago: float) -> AccountSearch:
    at = rfc3339(NOW - dt.timedelta(seconds=seconds_ago)) or ""
    return AccountSearch(uses=uses, attempts=attempts, at=at)


def test_nothing_is_due_before_the_token_is_used() -> None:
    assert not ONBOARDING.due(invitation(SPEC, InvitationStatus(times_used=0)), NOW)


def test_a_rising_use_count_makes_a_search_due_once() -> None:
    assert ONBOARDING.due(invitation(SPEC, InvitationStatus(times_used=1)), NOW)
    found = InvitationStatus(
        times_used=1,
        account="@ada:example.org",
        account_search=searched(1, 1, 0),
        rooms=[RoomStatus(room="#team:example.org", state=RoomState.JOINED)],
    )
    assert not ONBOARDING.due(invitation(SPEC, found), NOW)
    assert ONBOARDING.due(invitation(SPEC, found.model_copy(update={"times_used": 2})), NOW)


def test_a_search_that_found_nothing_is_repeated_with_backoff_then_stops() -> None:
    waiting = InvitationStatus(times_used=1, account_search=searched(1, 1, 5))
    assert not ONBOARDING.due(invitation(SPEC, waiting), NOW), "10 s backoff after the first search"
    assert ONBOARDING.due(
        invitation(SPEC, waiting.model_copy(update={"account_search": searched(1, 1, 11)})), NOW
    )
    second = waiting.model_copy(update={"account_search": searched(1, 2, 15)})
    assert not ONBOARDING.due(invitation(SPEC, second), NOW), "20 s after the second"
    given_up = waiting.model_copy(update={"account_search": searched(1, MAX_SEARCHES, 3600)})
    assert not ONBOARDING.due(invitation(SPEC, given_up), NOW)


def test_a_failed_room_is_due_after_its_backoff_and_a_joined_one_never() -> None:
    failed = RoomStatus(
        room="#team:example.org",
        state=RoomState.FAILED,
        attempts=2,
        last_attempt_at=rfc3339(NOW - dt.timedelta(seconds=15)),
    )
    status = InvitationStatus(
        times_used=1, account="@ada:example.org", account_search=searched(1, 1, 60), rooms=[failed]
    )
    assert not ONBOARDING.due(invitation(SPEC, status), NOW), "20 s after the second failure"
    assert ONBOARDING.due(invitation(SPEC, status), NOW + dt.timedelta(seconds=6))


def test_an_account_named_in_the_spec_is_due_until_status_shows_it() -> None:
    spec = SPEC.model_copy(update={"account": "@ada.l:example.org", "rooms": None})
    assert ONBOARDING.due(invitation(spec, InvitationStatus()), NOW)
    assert not ONBOARDING.due(invitation(spec, InvitationStatus(account="@ada.l:example.org")), NOW)


async def test_a_failed_lookup_is_recorded_not_raised_and_leaves_ready_alone() -> None:
    before = compute_status(
        InvitationStatus(), spec=SPEC, generation=1, token=None, now=NOW
    ).model_copy(update={"times_used": 1})
    onboarding = Onboarding(  # its own: it remembers the failed lookups
        Settings(retry_base_seconds=10, retry_max_seconds=60),
        UnconfiguredBackend(ConfigurationError("no MAS configured")),
    )
    status, notices = await applied(onboarding, SPEC, before, NOW)
    assert status.account is None
    known = status.condition("AccountKnown")
    assert known is not None
    assert (known.status, known.reason) == ("False", "Searching")
    assert "no MAS configured" in known.message
    assert "spec.account" in known.message
    waiting = status.condition("RoomsJoined")
    assert waiting is not None
    assert (waiting.status, waiting.reason) == ("False", "WaitingForAccount")
    assert notices == []
    # The next status computation keeps onboarding's conditions beside the kstatus trio.
    again = compute_status(status, spec=SPEC, generation=1, token=None, now=NOW)
    assert [c.type for c in again.conditions] == [
        "Ready",
        "Reconciling",
        "Stalled",
        "AccountKnown",
        "RoomsJoined",
    ]
    assert again.condition("Ready") == before.condition("Ready")

    # An outage is no answer: it uses up no search and leaves nothing new to write (issue 21,
    # defect 3); the next try waits a backoff kept in memory: 10 s, doubling up to 60 s here.
    assert status.account_search is None
    at = NOW
    for wait in (10, 20, 40, 60, 60):
        assert not onboarding.due(invitation(SPEC, status), at + dt.timedelta(seconds=wait - 1))
        at += dt.timedelta(seconds=wait)
        assert onboarding.due(invitation(SPEC, status), at)
        again, _ = await applied(onboarding, SPEC, status, at)
        assert again == status, "a failed lookup changed status"
    still = status.condition("AccountKnown")
    assert still is not None
    assert still.reason == "Searching"


async def test_rooms_fail_with_a_clear_sentence_when_nobody_can_act() -> None:
    spec = SPEC.model_copy(update={"account": "@ada:example.org"})
    status, notices = await applied(ONBOARDING, spec, InvitationStatus(), NOW, name="ada")
    (room,) = status.rooms or []
    assert room.state is RoomState.FAILED
    assert "MATRIX_INVITE_ONBOARDING_USER" in (room.message or "")
    assert room.attempts == 1
    failing = status.condition("RoomsJoined")
    assert failing is not None
    assert (failing.status, failing.reason) == ("False", "RoomJoinFailed")
    assert notices == []
