"""A token the backend no longer holds: issued again only while it could still be used.

Synapse revokes by deleting, and its admins delete spent or expired tokens; MAS may lose a token
in a restored database. `missing_token_state` decides, without I/O, whether that is drift to
repair (None: issue it again from the Secret) or the settled end of the Invitation.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from matrix_invite_operator.models import InvitationSpec, InvitationStatus, Phase
from matrix_invite_operator.ownership import desired_expiry, missing_token_state
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.settings import Settings
from matrix_invite_operator.status import compute_status

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=3)


def invitation(status: dict[str, Any] | None = None, **spec: Any) -> Invitation:
    return Invitation(
        namespace="ns",
        name="ada",
        uid="uid-1",
        generation=2,
        created=NOW - dt.timedelta(days=1),
        spec=InvitationSpec.model_validate({"email": "ada@example.org", **spec}),
        status=InvitationStatus.model_validate(
            {"tokenId": "syn-0123456789abcdef01234567", "timesUsed": 0, **(status or {})}
        ),
    )


def test_a_sent_invitation_gets_its_token_issued_again() -> None:
    assert missing_token_state(invitation(), LATER, NOW) is None


def test_nothing_is_issued_without_a_recorded_token() -> None:
    assert missing_token_state(invitation({"tokenId": None}, revoked=True), LATER, NOW) is None


def test_a_revoked_invitation_stays_revoked() -> None:
    inv = invitation({"revocationRequested": True, "timesUsed": 0}, revoked=True)
    state = missing_token_state(inv, LATER, NOW)
    assert state is not None
    assert (state.id, state.revoked, state.valid) == (inv.status.token_id, True, False)
    assert (state.usage_limit, state.expires_at) == (1, LATER)
    status = compute_status(inv.status, spec=inv.spec, generation=2, token=state, now=NOW)
    assert status.phase is Phase.REVOKED
    assert "as the spec asks" in (status.message or "")


@pytest.mark.parametrize(
    ("status", "spec", "expiry", "phase"),
    [
        ({"timesUsed": 1}, {}, LATER, Phase.ACCEPTED),
        ({"timesUsed": 2}, {"usageLimit": 2}, LATER, Phase.ACCEPTED),
        ({"timesUsed": 0}, {}, NOW - dt.timedelta(seconds=1), Phase.EXPIRED),
    ],
)
def test_a_spent_or_expired_token_is_not_handed_out_again(
    status: dict[str, Any], spec: dict[str, Any], expiry: dt.datetime, phase: Phase
) -> None:
    inv = invitation(status, **spec)
    state = missing_token_state(inv, expiry, NOW)
    assert state is not None
    assert (state.revoked, state.valid) == (False, False)
    computed = compute_status(inv.status, spec=inv.spec, generation=2, token=state, now=NOW)
    assert computed.phase is phase


def test_a_raised_limit_or_a_later_expiry_issues_it_again() -> None:
    assert missing_token_state(invitation({"timesUsed": 1}, usageLimit=3), LATER, NOW) is None


def test_the_desired_expiry_has_whole_milliseconds() -> None:
    inv = invitation(expiresAt="2026-07-01T10:00:00.123456Z")
    expiry = desired_expiry(inv, Settings())
    assert expiry == dt.datetime(2026, 7, 1, 10, 0, 0, 123000, tzinfo=dt.UTC)
