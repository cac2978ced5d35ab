"""Who acts on an Invitation now, and what is due: pure decisions, no I/O.

A Kopf handler (create, update, resume) and the sync pass may both act on one Invitation; they
ask here instead of deciding each in its own words:

- `owned_by_handler`: new, being edited, or stuck on an error: the handlers' business, the sync
  pass leaves it alone. `resume_needed`: what a process start hands to reconcile (the rest the
  sync pass compares with the backend on its first round).
- `awaits_clock_agreement`: the last reconcile stopped because the backend's clock runs ahead
  (`status.waitingForBackendClock`); only the sync pass sees when the clocks agree, and hands
  the Invitation back (`awaits_mail`), so that no handler retry races it for the one mail.
- `drifted`: the backend's token differs from what the spec asks, or a mail is due: only the
  reconcile steps repair it. `expiry_due`: the sync pass flips it to Expired.
"""

from __future__ import annotations

import datetime as dt

from pydantic import SecretStr

from .backends import TokenState
from .models import Phase
from .ports import Invitation
from .settings import Settings

#: Nothing left for a handler: the sync pass keeps them current.
SETTLED_PHASES = frozenset({Phase.SENT, Phase.ACCEPTED, Phase.EXPIRED, Phase.REVOKED})


def desired_expiry(invitation: Invitation, settings: Settings) -> dt.datetime:
    """When the token should expire, in whole milliseconds: the finest any backend keeps
    (Synapse counts milliseconds), so a stored expiry never differs from the desired one."""
    expiry = invitation.spec.expiry(invitation.created, settings.default_validity)
    return expiry.replace(microsecond=expiry.microsecond // 1000 * 1000)


def missing_token_state(
    invitation: Invitation, expiry: dt.datetime, now: dt.datetime
) -> TokenState | None:
    """What a token the backend no longer holds amounts to, when issuing it again would be wrong.

    Synapse cannot revoke, so revoking deletes the token there, and Synapse admins delete spent
    or expired tokens; MAS may lose one in a restored database. Issuing it again from the Secret
    would undo the spec's revocation or hand out uses beyond the limit, so a missing token of an
    Invitation that is revoked, used up or past its expiry is reported from what status last
    showed. None means: nothing stands against issuing it again.
    """
    status, spec = invitation.status, invitation.spec
    used = status.times_used or 0
    if status.token_id is None or not (spec.revoked or used >= spec.usage_limit or expiry <= now):
        return None
    return TokenState(
        id=status.token_id,
        token=SecretStr(""),  # the value lives in the Secret; nothing here reads it
        valid=False,
        usage_limit=spec.usage_limit,
        times_used=used,
        expires_at=expiry,
        last_used_at=status.last_used_at,
        revoked_at=now if spec.revoked else None,
    )


def owned_by_handler(invitation: Invitation) -> bool:
    """New, being edited, or stuck on an error: the handlers' business, not the sync pass's."""
    status = invitation.status
    stalled = status.condition("Stalled")
    return (
        status.token_id is None
        or status.observed_generation != invitation.generation
        or (stalled is not None and stalled.status == "True")
    )


def resume_needed(invitation: Invitation) -> bool:
    """Whether a process start must reconcile it: not if this generation settled (no backend
    write, no mail is due; the sync pass compares it with the backend on its first round), nor
    if it waits for the backend's clock (the sync pass owns it: a resume could mail twice)."""
    status = invitation.status
    if status.observed_generation != invitation.generation:
        return True
    return status.phase not in SETTLED_PHASES and not awaits_clock_agreement(invitation)


def clock_disagrees(invitation: Invitation, state: TokenState, now: dt.datetime) -> bool:
    """The backend calls the token invalid, though by our clock it has not expired and it is
    neither revoked nor used up: the backend's clock runs ahead of ours."""
    # Synapse counts sign-ups in progress (`pending`) against the limit too.
    uses = state.times_used + (state.pending or 0)
    used_up = state.usage_limit is not None and uses >= state.usage_limit
    return (
        not state.valid
        and not state.revoked
        and not used_up
        and not invitation.spec.revoked
        and not state.expired(now)
    )


def awaits_clock_agreement(invitation: Invitation) -> bool:
    """The last reconcile stopped because the backend's clock ran ahead: the sync pass owns it."""
    return bool(invitation.status.waiting_for_backend_clock)


def mailed(invitation: Invitation, state: TokenState) -> bool:
    """This token was mailed to the address the spec names now."""
    status = invitation.status
    return status.mailed_token_id == state.id and status.mail_recipient == invitation.spec.email


def awaits_mail(invitation: Invitation, state: TokenState) -> bool:
    """A token the backend calls valid now, whose mail waited for the clocks to agree.

    A reconcile that met a token the backend called invalid (its clock ahead) ends without
    mailing and without a retry; only the sync pass sees when the backend agrees, and hands the
    Invitation back to reconcile. Other unmailed states belong to a handler's retry (mail
    deferred, waiting for a slot), which the sync pass must not race for the one mail.
    """
    if not state.valid or invitation.spec.revoked or mailed(invitation, state):
        return False
    return awaits_clock_agreement(invitation)


def needs_reconcile(invitation: Invitation, token: TokenState | None, expiry: dt.datetime) -> bool:
    """Drift that only the reconcile steps can repair, or a mail that is due."""
    if token is None:
        return True
    spec = invitation.spec
    if token.usage_limit != spec.usage_limit or token.expires_at != expiry:
        return True
    return (spec.revoked and not token.revoked) or awaits_mail(invitation, token)


def drifted(
    invitation: Invitation, token: TokenState | None, settings: Settings, now: dt.datetime
) -> bool:
    """`needs_reconcile` for a token as the backend answered a read (None: it holds none)."""
    expiry = desired_expiry(invitation, settings)
    return needs_reconcile(
        invitation, token or missing_token_state(invitation, expiry, now), expiry
    )


def expiry_due(invitation: Invitation, now: dt.datetime) -> bool:
    """It reached its expiry, but status does not show it expired yet."""
    status = invitation.status
    expires = status.expires_at
    return expires is not None and not status.expired and expires <= now
