"""Clocks that disagree, and the mail the sync pass hands back to reconcile: pure decisions."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from matrix_invite_operator.backends import TokenState
from matrix_invite_operator.backends.synapse import TokenPathRedaction
from matrix_invite_operator.models import InvitationSpec, InvitationStatus
from matrix_invite_operator.ownership import awaits_mail, clock_disagrees, needs_reconcile
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.status import Problem, compute_status
from pydantic import SecretStr

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
EXPIRY = NOW + dt.timedelta(hours=1)


def invitation(status: InvitationStatus | None = None, **spec: Any) -> Invitation:
    return Invitation(
        namespace="ns",
        name="ada",
        uid="uid-1",
        generation=1,
        created=NOW,
        spec=InvitationSpec.model_validate({"email": "ada@example.org", **spec}),
        status=status or InvitationStatus(token_id="01TOKEN"),
    )


def token(**changes: Any) -> TokenState:
    fields: dict[str, Any] = {
        "id": "01TOKEN",
        "token": SecretStr("x" * 24),
        "valid": True,
        "usage_limit": 1,
        "times_used": 0,
        "expires_at": EXPIRY,
    }
    return TokenState.model_validate({**fields, **changes})


def with_reason(reason: str | None, *, waiting: bool | None = None) -> InvitationStatus:
    base = InvitationStatus(token_id="01TOKEN", waiting_for_backend_clock=waiting)
    problem = Problem(reason=reason, message="m") if reason else None
    return compute_status(
        base,
        spec=InvitationSpec(email="ada@example.org"),
        generation=1,
        token=token(),
        now=NOW,
        reconciling=problem,
    )


def test_invalid_by_the_backend_but_not_by_our_clock_is_disagreement() -> None:
    assert clock_disagrees(invitation(), token(valid=False), NOW)


@pytest.mark.parametrize(
    "state",
    [
        token(valid=False, revoked_at=NOW),
        token(valid=False, times_used=1),
        token(valid=False, pending=1),
        token(valid=False, expires_at=NOW - dt.timedelta(seconds=1)),
        token(valid=True),
    ],
    ids=["revoked", "used-up", "pending-sign-up", "expired-by-our-clock too", "valid"],
)
def test_a_token_invalid_for_a_reason_is_no_disagreement(state: TokenState) -> None:
    assert not clock_disagrees(invitation(), state, NOW)


@pytest.mark.parametrize(
    ("reason", "waiting", "due"),
    [
        (None, None, False),
        ("MasClockAhead", True, True),
        ("SynapseClockAhead", True, True),
        # The field decides, not the words of a reason.
        ("SynapseClockAhead", None, False),
        ("MailDeferred", None, False),
        ("WaitingForMailSlot", None, False),
    ],
)
def test_the_sync_pass_mails_only_what_no_handler_retries(
    reason: str | None, waiting: bool | None, due: bool
) -> None:
    inv = invitation(with_reason(reason, waiting=waiting))
    assert awaits_mail(inv, token()) is due
    assert needs_reconcile(inv, token(), EXPIRY) is due


def test_a_mailed_or_revoked_invitation_awaits_no_mail() -> None:
    mailed = InvitationStatus(
        token_id="01TOKEN", mailed_token_id="01TOKEN", mail_recipient="ada@example.org"
    )
    assert not awaits_mail(invitation(mailed), token())
    assert not awaits_mail(invitation(revoked=True), token())
    assert not awaits_mail(invitation(), token(valid=False))


def test_token_paths_are_redacted_in_any_log_record() -> None:
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: %s %s "%s"',
        ("GET", "http://s/_synapse/admin/v1/registration_tokens/Secret.Token_1~x?y=1", "200"),
        None,
    )
    assert TokenPathRedaction().filter(record)
    message = record.getMessage()
    assert "Secret" not in message
    assert "registration_tokens/<redacted>?y=1" in message
