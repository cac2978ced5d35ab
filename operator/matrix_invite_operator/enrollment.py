"""The invitee's account at authentik: one single-use authentik invitation per Invitation.

With authentik configured (`Settings.authentik_url`), an Invitation whose token is valid has
exactly one authentik invitation, bound to the invitee (`fixed_data`: email and display name),
expiring with the token; the mail's first step is its enrollment link. When the token stops being
valid (revoked, spent, expired), the address changes or the Invitation is deleted, the authentik
invitation is deleted. Decisions only, through `ports.EnrollmentInvitations`: no HTTP here
(`authentik.AuthentikClient` is the port's implementation); `reconcile` records what these
functions return.

Idempotent across crashes although authentik's invitation names are not unique (a second create
with the same name makes a second invitation, FACTS section 5):
- the name is derived from the Invitation (namespace, name, uid), so it is known before any create;
- every decision starts from a listing by that name: an invitation created just before a crash
  (its answer seen or not) is found and kept, not created again;
- a create whose answer was lost is followed by another listing; if that finds nothing either,
  the error stands and the next attempt lists again before it creates;
- extra invitations of the name (duplicates, the old address's, expired ones) are deleted, so
  none is left behind.

The invitation's pk is the link's secret: status shows its name and `EnrollmentInvite.id`.
authentik deletes a single-use invitation when the invitee *opens* the link, so "gone after the
mail" is reported as `Opened`, never as "account created", and is not created again (unless a
resend asks for a working link).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pydantic import SecretStr

from .errors import AuthentikUnavailable
from .formats import rfc3339
from .models import AuthentikInvitationStatus, EnrollmentState
from .ports import EnrollmentInvitations, EnrollmentInvite, Invitation, Notice

NAME_PREFIX = "matrix-invite"

OPENED_MESSAGE = (
    "authentik no longer has this invitation after its link was mailed: authentik deletes a "
    "single-use invitation when the invitee opens the link (or at its expiry, or by hand). "
    "This does not mean the account was created"
)


def invitation_name(invitation: Invitation) -> str:
    """`matrix-invite_<namespace>_<name>_<uid prefix>`: authentik's slug alphabet; `_` cannot occur
    in Kubernetes names, and `.` (which can) becomes `_`. The uid keeps a re-created Invitation
    of the same name apart from the one before it."""
    name = invitation.name.replace(".", "_")
    return f"{NAME_PREFIX}_{invitation.namespace}_{name}_{invitation.uid[:8]}"


@dataclass(frozen=True)
class Enrollment:
    """What the step found or did: the status to record, the link for the mail, the Events."""

    status: AuthentikInvitationStatus | None
    link: SecretStr | None = None  # the current invitation's link: the mail carries it
    notices: list[Notice] = field(default_factory=list)

    @property
    def unmailed(self) -> bool:
        """A working link the invitee has not been mailed yet: the mail is due for it."""
        status = self.status
        return self.link is not None and status is not None and status.id != status.mailed_id


def mailed(status: AuthentikInvitationStatus) -> AuthentikInvitationStatus:
    """The status once the mail with the current invitation's link was accepted."""
    return status.model_copy(update={"mailed_id": status.id})


async def ensure(
    invitations: EnrollmentInvitations,
    invitation: Invitation,
    before: AuthentikInvitationStatus | None,
    *,
    expiry: dt.datetime,
    resend: bool,
    now: dt.datetime,
) -> Enrollment:
    """One working authentik invitation for the invitee, unless the mailed one was opened.

    `resend`: the admin asked for the mail again; a link that was opened is replaced then, so
    the mail they asked for works.
    """
    spec = invitation.spec
    name = invitation_name(invitation)
    same_address = before is not None and before.email == spec.email
    found = await invitations.named(name)
    current = _pick(found, before.id if same_address and before else None, spec.email, now)
    notices = await _delete_others(invitations, invitation, found, keep=current)
    opened = (
        same_address
        and before is not None
        and before.mailed_id is not None
        and before.state is not EnrollmentState.DELETED  # the operator's deletion: made again
    )
    if current is None and opened and not resend and before is not None:
        # The mailed link was opened (or expired, or deleted in authentik): not made again.
        status = before.model_copy(
            update={
                "state": EnrollmentState.OPENED,
                "exists": False,
                "checked_at": now,
                "message": OPENED_MESSAGE,
            }
        )
        return Enrollment(_unless_same(before, status), None, notices)
    if current is None:
        current = await _create(invitations, invitation, name, expiry, now)
        notices.append(
            Notice(
                "AuthentikInvitationCreated",
                f"authentik invitation {name} ({current.id}) created for {spec.email}, "
                f"single use, expires {rfc3339(current.expires)}",
            )
        )
    status = AuthentikInvitationStatus(
        name=name,
        id=current.id,
        email=spec.email,
        state=EnrollmentState.ACTIVE,
        exists=True,
        mailed_id=before.mailed_id if same_address and before is not None else None,
        expires_at=current.expires,
        checked_at=now,
    )
    return Enrollment(_unless_same(before, status), invitations.link(current), notices)


def _unless_same(
    before: AuthentikInvitationStatus | None, status: AuthentikInvitationStatus
) -> AuthentikInvitationStatus:
    """`before` when only the time of the look differs: a settled Invitation reconciled again
    writes nothing (`checkedAt` moves when something else does). Compared as written: authentik's
    expiry may carry fractions of a second that status, in whole seconds, never shows."""
    if (
        before is not None
        and status.model_copy(update={"checked_at": before.checked_at}).to_api() == before.to_api()
    ):
        return before
    return status


async def withdraw(
    invitations: EnrollmentInvitations,
    invitation: Invitation,
    before: AuthentikInvitationStatus | None,
    *,
    why: str,
    now: dt.datetime,
) -> Enrollment:
    """No authentik invitation may work any more (the token does not): delete every one of the
    name. Returns the status to record (None if there never was one)."""
    found = await invitations.named(invitation_name(invitation))
    notices = await _delete_others(invitations, invitation, found, keep=None, why=why)
    if before is None and not found:
        return Enrollment(None)
    if before is not None and not found and not before.exists:
        return Enrollment(before)  # settled: nothing to record again
    base = before or AuthentikInvitationStatus(
        name=invitation_name(invitation), state=EnrollmentState.DELETED, exists=False
    )
    if not found and base.mailed_id is not None and base.state is EnrollmentState.ACTIVE:
        # Gone before the operator came to delete it: the invitee opened the mailed link.
        opened = {"state": EnrollmentState.OPENED, "message": OPENED_MESSAGE}
        status = base.model_copy(update={**opened, "exists": False, "checked_at": now})
        return Enrollment(_unless_same(before, status))
    status = base.model_copy(
        update={
            "state": EnrollmentState.DELETED,
            "exists": False,
            "checked_at": now,
            "message": f"Deleted by the operator: {why}",
        }
    )
    return Enrollment(status, None, notices)


async def remove_all(invitations: EnrollmentInvitations, invitation: Invitation) -> list[Notice]:
    """Deletion of the Invitation: every authentik invitation of its name goes too."""
    found = await invitations.named(invitation_name(invitation))
    why = "the Invitation is being deleted"
    return await _delete_others(invitations, invitation, found, keep=None, why=why)


def _pick(
    found: list[EnrollmentInvite], known_id: str | None, email: str, now: dt.datetime
) -> EnrollmentInvite | None:
    """The invitation to keep: the recorded one if it is still usable, else any usable one for
    this address (one created before a crash), the same one on every run."""
    usable = [i for i in found if i.email == email and i.expires > now]
    for invite in usable:
        if invite.id == known_id:
            return invite
    return min(usable, key=lambda i: i.id, default=None)


async def _delete_others(
    invitations: EnrollmentInvitations,
    invitation: Invitation,
    found: list[EnrollmentInvite],
    *,
    keep: EnrollmentInvite | None,
    why: str | None = None,
) -> list[Notice]:
    notices = []
    for invite in found:
        if keep is not None and invite.id == keep.id:
            continue
        await invitations.delete(invite)
        reason = why or _why_extra(invite, invitation)
        notices.append(
            Notice(
                "AuthentikInvitationDeleted",
                f"authentik invitation {invite.name} ({invite.id}) deleted: {reason}",
            )
        )
    return notices


def _why_extra(invite: EnrollmentInvite, invitation: Invitation) -> str:
    if invite.email != invitation.spec.email:
        return "it was made for the previous address"
    return "a second invitation of this name (from a create whose answer was lost), or expired"


async def _create(
    invitations: EnrollmentInvitations,
    invitation: Invitation,
    name: str,
    expiry: dt.datetime,
    now: dt.datetime,
) -> EnrollmentInvite:
    spec = invitation.spec
    try:
        return await invitations.create(
            name, email=spec.email, display_name=spec.display_name, expires=expiry
        )
    except AuthentikUnavailable as lost:
        if not lost.may_have_taken_effect:
            raise
        # The answer was lost, not necessarily the create: look before anyone creates again.
        found = _pick(await invitations.named(name), None, spec.email, now)
        if found is None:
            raise
        return found
