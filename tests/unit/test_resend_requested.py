"""Each new resend value is one request for another mail; removing a value is none."""

from __future__ import annotations

import datetime as dt

import pytest
from matrix_invite_operator.models import InvitationSpec, InvitationStatus
from matrix_invite_operator.ports import Invitation
from matrix_invite_operator.reconcile import resend_requested


def invitation(resend: str | None = None, annotation: str | None = None) -> Invitation:
    return Invitation(
        namespace="ns",
        name="ada",
        uid="uid-1",
        generation=1,
        created=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
        spec=InvitationSpec(email="ada@example.org", resend=resend),
        status=InvitationStatus(),
        resend_annotation=annotation,
    )


@pytest.mark.parametrize(
    ("before", "now", "requested"),
    [
        ((None, None), (None, None), False),
        ((None, None), ("monday", None), True),
        ((None, None), (None, "please"), True),
        (("monday", None), ("tuesday", None), True),
        (("monday", "please"), ("monday", "again"), True),
        (("monday", "please"), ("monday", "please"), False),  # the same values again
        (("monday", None), (None, None), False),  # spec.resend removed from Git
        ((None, "please"), (None, None), False),  # kubectl annotate ... resend-
        (("monday", "please"), (None, None), False),
        (("monday", "please"), (None, "please"), False),
        (("monday", None), (None, "please"), True),  # removed one, new other
    ],
)
def test_a_request_is_a_new_value(
    before: tuple[str | None, str | None], now: tuple[str | None, str | None], requested: bool
) -> None:
    handled = invitation(*before).resend_request  # what the last mail recorded
    assert resend_requested(invitation(*now), handled) is requested


def test_without_a_record_only_a_present_value_asks() -> None:
    assert resend_requested(invitation(), None) is False
    assert resend_requested(invitation("monday"), None) is True
