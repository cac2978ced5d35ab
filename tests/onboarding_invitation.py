"""Onboarding as reconcile and the sync pass call it, for tests that call it directly."""

from __future__ import annotations

import datetime as dt

from matrix_invite_operator.models import InvitationSpec, InvitationStatus
from matrix_invite_operator.onboarding import Onboarding
from matrix_invite_operator.ports import Invitation, Notice

CREATED = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def invitation(
    spec: InvitationSpec,
    status: InvitationStatus | None = None,
    *,
    created: dt.datetime = CREATED,
    name: str = "ada",
) -> Invitation:
    """The Invitation as onboarding is handed it: with the status about to be written."""
    return Invitation(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        generation=1,
        created=created,
        spec=spec,
        status=status or InvitationStatus(),
    )


async def applied(
    onboarding: Onboarding,
    spec: InvitationSpec,
    status: InvitationStatus,
    now: dt.datetime,
    *,
    created: dt.datetime = CREATED,
    name: str = "ada",
) -> tuple[InvitationStatus, list[Notice]]:
    """`apply`'s changes on top of `status`, as reconcile and the sync pass write them."""
    onboarded = await onboarding.apply(
        invitation(spec, status, created=created, name=name), None, now
    )
    return onboarded.applied_to(status), onboarded.notices
