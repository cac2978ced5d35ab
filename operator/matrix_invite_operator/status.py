"""Pure status computation: (spec, token as the backend holds it, mail record, now) → status.

Nothing here does I/O, so the phase table and the kstatus contract (conditions `Ready`,
`Reconciling`, `Stalled` plus `observedGeneration` in one patch) are tested without a cluster.
Phases, first match wins: Failed > Revoked > Accepted > Expired > Sent > Pending.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .backends import TokenState
from .models import Condition, InvitationSpec, InvitationStatus, Phase, rfc3339


@dataclass(frozen=True)
class Problem:
    """Why the Invitation is not done: a CamelCase reason and a sentence for the admin."""

    reason: str
    message: str


def phase_of(
    status: InvitationStatus, spec: InvitationSpec, token: TokenState | None, now: dt.datetime
) -> Phase:
    if token is None:
        # Revoked before any token existed: nothing was issued, and nothing will be until the
        # spec un-revokes it.
        return Phase.REVOKED if spec.revoked and status.token_id is None else Phase.PENDING
    if token.revoked:
        return Phase.REVOKED
    if token.usage_limit is not None and token.times_used >= token.usage_limit:
        return Phase.ACCEPTED
    if token.expired(now):
        return Phase.EXPIRED
    if status.mailed_token_id == token.id and status.mail_recipient == spec.email:
        return Phase.SENT
    return Phase.PENDING


def _ready_message(
    phase: Phase, status: InvitationStatus, spec: InvitationSpec, token: TokenState | None
) -> str:
    if token is None:
        if phase is Phase.REVOKED:
            return (
                "Revoked before a token was issued: nothing exists in the token store; set "
                "spec.revoked to false to issue the token and send the mail"
            )
        return "Issuing the registration token"
    expiry = rfc3339(token.expires_at) or "never"
    if phase is Phase.REVOKED:
        if spec.revoked:
            return "The token is revoked, as the spec asks"
        return (
            "The token was revoked in MAS outside Git; set spec.revoked to true and back to false "
            "to issue it again"
        )
    if phase is Phase.ACCEPTED:
        return f"The token was used {token.times_used} of {token.usage_limit} times"
    if phase is Phase.EXPIRED:
        return f"The token expired at {expiry} unused"
    if phase is Phase.SENT:
        used = f"; used {token.times_used} of {token.usage_limit}" if token.times_used else ""
        return (
            f"Invitation mailed to {status.mail_recipient}; the token is valid until {expiry}{used}"
        )
    return "Sending the invitation mail"


def _condition(
    previous: InvitationStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> Condition:
    state = "True" if value else "False"
    before = previous.condition(type_)
    # kstatus and humans read lastTransitionTime as "since when": keep it while the value holds.
    since = before.last_transition_time if before is not None and before.status == state else now
    return Condition(
        type=type_,
        status=state,
        reason=reason,
        message=message[:32768],
        last_transition_time=since.replace(microsecond=0),
        observed_generation=generation,
    )


# Other modules' conditions (onboarding's AccountKnown, RoomsJoined) use the same rules.
make_condition = _condition

CORE_CONDITIONS = ("Ready", "Reconciling", "Stalled")


def compute_status(
    previous: InvitationStatus,
    *,
    spec: InvitationSpec,
    generation: int,
    token: TokenState | None,
    now: dt.datetime,
    stalled: Problem | None = None,
    reconciling: Problem | None = None,
) -> InvitationStatus:
    """The whole status for one Invitation, ready to be written in a single patch."""
    status = previous.model_copy(deep=True)
    if token is not None:
        status.token_id = token.id
        # MAS computed `valid` when it answered; expiry may have passed since.
        status.valid = token.valid and not token.expired(now)
        status.times_used = token.times_used
        status.pending_uses = token.pending
        status.usage_limit = token.usage_limit
        status.expires_at = rfc3339(token.expires_at)
        status.expired = token.expired(now)
        status.revoked = token.revoked
        status.last_used_at = rfc3339(token.last_used_at)

    if stalled is not None:
        phase, ready_reason, ready_message = Phase.FAILED, stalled.reason, stalled.message
    else:
        phase = phase_of(status, spec, token, now)
        ready_reason = phase.value
        ready_message = _ready_message(phase, status, spec, token)
        if phase is Phase.PENDING and reconciling is not None:
            ready_reason, ready_message = reconciling.reason, reconciling.message

    ready = phase not in (Phase.PENDING, Phase.FAILED)
    in_progress = phase is Phase.PENDING
    status.phase = phase
    status.message = ready_message[:1024]
    status.observed_generation = generation
    status.conditions = [
        _condition(previous, "Ready", ready, ready_reason, ready_message, generation, now),
        _condition(
            previous,
            "Reconciling",
            in_progress,
            ready_reason if in_progress else "Reconciled",
            ready_message if in_progress else "Nothing left to do",
            generation,
            now,
        ),
        _condition(
            previous,
            "Stalled",
            stalled is not None,
            stalled.reason if stalled else "NotStalled",
            stalled.message if stalled else "No error that needs a change",
            generation,
            now,
        ),
        *(c for c in previous.conditions if c.type not in CORE_CONDITIONS),
    ]
    return status
