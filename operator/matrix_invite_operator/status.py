"""An Invitation's status: computed (pure), and written (`StatusWriter`).

`compute_status` and its helpers are pure: (spec, token as the backend holds it, mail record,
now) → status, so the phase table and the kstatus contract (conditions `Ready`, `Reconciling`,
`Stalled` plus `observedGeneration` in one patch) are tested without a cluster. Phases, first
match wins: Failed > Revoked > Accepted > Expired > Sent > Pending.

`StatusWriter` is the one place that writes status, through the `ports.KubeStore` interface:
as steps complete, conditioned on the resourceVersion it was computed from (a fresh read,
`read_current`, or the watch's body, whose first write then proves it current: `StaleBody`);
`announce_phase_change` and `post_notices` post the Events a written status calls for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .backends import TokenState
from .errors import KubeConflict, KubeNotFound, KubeUnavailable, reason_of
from .formats import rfc3339
from .models import Condition, InvitationSpec, InvitationStatus, Phase
from .ports import EventSink, Invitation, KubeStore, Notice


class StaleBody(Exception):
    """The body a run decided on was older than the Invitation: its first status write was
    refused for its resourceVersion. Nothing the run did before that write is harmful to
    repeat; the caller decides again on a fresh read. Never leaves `reconcile`."""


@dataclass(frozen=True)
class Problem:
    """Why the Invitation is not done: a CamelCase reason and a sentence for the admin."""

    reason: str
    message: str

    @classmethod
    def of(cls, error: Exception, backend: str) -> Problem:
        """The error's own reason (`errors.reason_of`) and its text."""
        return cls(reason=reason_of(error, backend), message=str(error)[:1000])


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
        status.expires_at = token.expires_at
        status.expired = token.expired(now)
        status.revoked = token.revoked
        status.last_used_at = token.last_used_at

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


class StatusWriter:
    """Writes status as steps complete, so a crash never forgets a token id or a sent mail.

    What a crash may forget (a name derived from the Invitation's, or what the final status
    write follows at once) is `stage`d instead and goes out with the next write: each status
    PATCH costs the operator, the API server and every watcher one event, so a new Invitation
    takes two (token id; mail record with the final status), not four (docs/performance.md).

    Every write is conditioned on the resourceVersion it was computed from. The writer holds
    the Invitation's lock, so a conflict means someone edited the object meanwhile (a spec
    edit, Kopf's annotations): the fields we changed are facts (a token was issued, a mail
    went out), so they are applied again on a fresh read. The status still names the
    generation it was computed for; a newer one is reconciled next.

    `unread`: the Invitation is the watch's body, not a fresh read, and may be older than a
    status this process wrote. Until one write succeeded, a conflict is then not a fact to
    apply again but `StaleBody`: what the run decided may rest on a status that is gone.
    """

    ATTEMPTS = 5

    def __init__(
        self,
        kube: KubeStore,
        invitation: Invitation,
        *,
        retry_conflicts: bool = True,
        unread: bool = False,
    ) -> None:
        self._kube = kube
        self._invitation = invitation
        self._retry_conflicts = retry_conflicts
        self._unread = unread
        self.status = invitation.status.model_copy(deep=True)
        self._written = invitation.status  # as the API server holds it, as far as we know
        self._version = invitation.resource_version

    def stage(self, **fields: Any) -> None:
        """Set fields to be written with the next `record` or `write`."""
        self.status = self.status.model_copy(update=fields)

    async def record(self, **fields: Any) -> None:
        self.stage(**fields)
        await self.write(self.status)

    async def write(self, status: InvitationStatus) -> None:
        before = self._written.model_dump(mode="json", by_alias=True)
        after = status.model_dump(mode="json", by_alias=True)
        patch = {key: value for key, value in after.items() if before.get(key) != value}
        if patch:
            await self._patch(patch)
        self.status = self._written = status

    async def _patch(self, patch: dict[str, Any]) -> None:
        namespace, name = self._invitation.namespace, self._invitation.name
        for _ in range(self.ATTEMPTS):
            try:
                written = await self._kube.patch_invitation_status(
                    namespace, name, patch, resource_version=self._version
                )
            except KubeConflict:
                if self._unread:
                    raise StaleBody(
                        f"{namespace}/{name} changed since the watch showed it"
                    ) from None
                if not self._retry_conflicts:
                    raise
                fresh = await self._kube.get_invitation(namespace, name)
                if fresh is None or fresh["metadata"].get("uid") != self._invitation.uid:
                    raise KubeNotFound(f"{namespace}/{name} is gone") from None
                self._version = fresh["metadata"].get("resourceVersion")
                continue
            self._version = (written.get("metadata") or {}).get("resourceVersion")
            self._unread = False  # the body was current; a later conflict is someone's edit
            return
        raise KubeUnavailable(
            f"{namespace}/{name} kept changing while its status was written", retry_after=1
        )


async def read_current(kube: KubeStore, invitation: Invitation) -> Invitation | None:
    """The Invitation as the API server holds it now; None if it is gone or being deleted."""
    body = await kube.get_invitation(invitation.namespace, invitation.name)
    if (
        body is None
        or body["metadata"].get("uid") != invitation.uid
        or body["metadata"].get("deletionTimestamp")
    ):
        return None
    return Invitation.from_body(body)


async def announce_phase_change(
    events: EventSink, invitation: Invitation, before: Phase | None, status: InvitationStatus
) -> None:
    """One Event per transition into a terminal or failed phase."""
    if status.phase == before:
        return
    if status.phase is Phase.ACCEPTED:
        account = f"; the account is {status.account}" if status.account else ""
        await events.normal(
            invitation,
            "InvitationAccepted",
            f"The token was used {status.times_used} of {status.usage_limit} times{account}",
        )
    elif status.phase is Phase.EXPIRED:
        await events.normal(
            invitation, "InvitationExpired", f"The token expired at {rfc3339(status.expires_at)}"
        )
    elif status.phase is Phase.REVOKED and not invitation.spec.revoked:
        await events.warning(
            invitation,
            "RevokedOutsideGit",
            "The token was revoked in MAS, not through the spec; it stays revoked",
        )
    elif status.phase is Phase.FAILED:
        await events.warning(invitation, "Stalled", status.message or "")


async def post_notices(events: EventSink, invitation: Invitation, notices: list[Notice]) -> None:
    for notice in notices:
        post = events.warning if notice.warning else events.normal
        await post(invitation, notice.reason, notice.message)
