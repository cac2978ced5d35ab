"""The phase table and the kstatus contract of `compute_status`, without a cluster."""

from __future__ import annotations

import datetime as dt

import pytest
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.models import InvitationSpec, InvitationStatus, Phase
from matrix_invite_operator.status import Problem, compute_status
from pydantic import SecretStr

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
SPEC = InvitationSpec(email="ada@example.org", usage_limit=2)
MAILED = InvitationStatus(mailed_token_id="01TOKEN", mail_recipient="ada@example.org")


def token(**changes: object) -> TokenState:
    fields: dict[str, object] = {
        "id": "01TOKEN",
        "token": SecretStr("x" * 24),
        "valid": True,
        "usage_limit": 2,
        "times_used": 0,
        "expires_at": NOW + dt.timedelta(days=1),
    }
    fields.update(changes)
    return TokenState.model_validate(fields)


def conditions(status: InvitationStatus) -> dict[str, str]:
    return {c.type: c.status for c in status.conditions}


CASES = [
    # (description, previous status, token, stalled, phase, Ready, Reconciling, Stalled)
    ("no token yet", InvitationStatus(), None, None, Phase.PENDING, "False", "True", "False"),
    (
        "issued, not mailed",
        InvitationStatus(),
        token(),
        None,
        Phase.PENDING,
        "False",
        "True",
        "False",
    ),
    ("mailed", MAILED, token(), None, Phase.SENT, "True", "False", "False"),
    ("partly used", MAILED, token(times_used=1), None, Phase.SENT, "True", "False", "False"),
    (
        "used up",
        MAILED,
        token(times_used=2, valid=False),
        None,
        Phase.ACCEPTED,
        "True",
        "False",
        "False",
    ),
    (
        "over-used",
        MAILED,
        token(times_used=3, valid=False),
        None,
        Phase.ACCEPTED,
        "True",
        "False",
        "False",
    ),
    (
        "expired",
        MAILED,
        token(expires_at=NOW - dt.timedelta(seconds=1)),
        None,
        Phase.EXPIRED,
        "True",
        "False",
        "False",
    ),
    (
        "revoked beats used up",
        MAILED,
        token(times_used=2, revoked_at=NOW),
        None,
        Phase.REVOKED,
        "True",
        "False",
        "False",
    ),
    (
        "used up beats expired",
        MAILED,
        token(times_used=2, expires_at=NOW),
        None,
        Phase.ACCEPTED,
        "True",
        "False",
        "False",
    ),
    (
        "failure beats all",
        MAILED,
        token(revoked_at=NOW),
        Problem("MasRejected", "no"),
        Phase.FAILED,
        "False",
        "False",
        "True",
    ),
]


@pytest.mark.parametrize(
    ("previous", "state", "stalled", "phase", "ready", "reconciling", "stuck"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_phase_table(
    previous: InvitationStatus,
    state: TokenState | None,
    stalled: Problem | None,
    phase: Phase,
    ready: str,
    reconciling: str,
    stuck: str,
) -> None:
    status = compute_status(
        previous, spec=SPEC, generation=3, token=state, now=NOW, stalled=stalled
    )
    assert status.phase is phase
    assert conditions(status) == {"Ready": ready, "Reconciling": reconciling, "Stalled": stuck}
    assert status.observed_generation == 3
    assert all(c.observed_generation == 3 for c in status.conditions)


def test_expiry_between_listings_turns_valid_false() -> None:
    """MAS said valid=true when listed; at expiresAt we flip it locally."""
    state = token(expires_at=NOW - dt.timedelta(seconds=5), valid=True)
    status = compute_status(MAILED, spec=SPEC, generation=1, token=state, now=NOW)
    assert (status.valid, status.expired, status.phase) == (False, True, Phase.EXPIRED)


def test_status_fields_come_from_the_token() -> None:
    state = token(times_used=1, last_used_at=NOW)
    status = compute_status(MAILED, spec=SPEC, generation=1, token=state, now=NOW)
    assert status.token_id == "01TOKEN"
    assert (status.valid, status.times_used, status.usage_limit, status.expired) == (
        True,
        1,
        2,
        False,
    )
    # Datetimes in the model, written once as RFC 3339 with whole seconds and a Z.
    assert status.expires_at == dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    written = status.to_api()
    assert written["expiresAt"] == "2026-11-28T12:00:00Z"
    assert written["lastUsedAt"] == "2026-11-27T12:00:00Z"
    assert "x" * 24 not in status.model_dump_json()


def test_transition_time_kept_while_condition_holds() -> None:
    first = compute_status(MAILED, spec=SPEC, generation=1, token=token(), now=NOW)
    later = compute_status(
        first, spec=SPEC, generation=1, token=token(), now=NOW + dt.timedelta(hours=1)
    )
    assert first.condition("Ready") == later.condition("Ready")
    used = compute_status(
        later, spec=SPEC, generation=1, token=token(times_used=2), now=NOW + dt.timedelta(hours=2)
    )
    ready = used.condition("Ready")
    assert ready is not None
    assert ready.last_transition_time == NOW  # still True: Sent → Accepted keeps Ready=True
    assert ready.reason == "Accepted"


def test_transient_problem_shows_as_reconciling_reason() -> None:
    status = compute_status(
        InvitationStatus(),
        spec=SPEC,
        generation=1,
        token=None,
        now=NOW,
        reconciling=Problem("MasUnavailable", "MAS answered 503"),
    )
    ready = status.condition("Ready")
    assert ready is not None
    assert (ready.status, ready.reason, ready.message) == (
        "False",
        "MasUnavailable",
        "MAS answered 503",
    )


def test_revoked_outside_git_says_how_to_recover() -> None:
    status = compute_status(MAILED, spec=SPEC, generation=1, token=token(revoked_at=NOW), now=NOW)
    assert status.phase is Phase.REVOKED
    assert "outside Git" in (status.message or "")


def test_born_revoked_is_revoked_and_ready_without_a_token() -> None:
    spec = InvitationSpec(email="ada@example.org", revoked=True)
    status = compute_status(InvitationStatus(), spec=spec, generation=1, token=None, now=NOW)
    assert status.phase is Phase.REVOKED
    assert conditions(status) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert status.message is not None
    assert "spec.revoked to false" in status.message
    assert status.token_id is None


def test_a_recorded_token_missing_while_revoked_is_not_taken_for_born_revoked() -> None:
    spec = InvitationSpec(email="ada@example.org", revoked=True)
    previous = InvitationStatus(token_id="01TOKEN")
    status = compute_status(previous, spec=spec, generation=1, token=None, now=NOW)
    assert status.phase is Phase.PENDING
