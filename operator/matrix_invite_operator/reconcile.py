"""The ordered, idempotent steps that bring one Invitation to its desired state.

No Kopf and no HTTP details here: the steps talk to a `TokenBackend`, a `KubeStore`, an
`InvitationMailer` and an `EventSink` (`ports.Collaborators`; `runtime.Dependencies` builds them
once at startup). Every step is safe to repeat after a crash at any point:

1. Secret: reuse the token in our Secret, or generate one and write the Secret first.
2. Token: issue it in the backend with that value (a conflict means "find it", never a second
   token), record its id in status at once.
3. Converge: usage limit, expiry and revocation as the spec says; drift is corrected with an Event.
4. Mail: only if this token has not been mailed to this address; record it, with the whole
   status, in the request right after the relay accepts. The one duplicate-mail window is
   between that accept and that status write. Its MailSent Event also tells of a token issued
   in the same run (one Event, not two); TokenIssued is posted alone when no mail follows.
5. Onboarding, when due (`onboarding.py`): after the mail record, never before it.
6. Status: computed by `status.compute_status` and written with `observedGeneration` in one patch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
import string

from pydantic import SecretStr

from . import enrollment
from .backends import TokenState
from .errors import (
    BackendClockAhead,
    InvalidSpecError,
    KubeNotFound,
    OperatorError,
    PermanentError,
    SecretConflict,
)
from .formats import rfc3339
from .models import InvitationStatus
from .ownership import (
    clock_disagrees,
    desired_expiry,
    drifted,
    mailed,
    missing_token_state,
    owned_by_handler,
)
from .ports import Collaborators, Invitation, Notice, secret_name_for
from .settings import Settings
from .status import (
    Problem,
    StaleBody,
    StatusWriter,
    announce_phase_change,
    compute_status,
    post_notices,
    read_current,
)

logger = logging.getLogger(__name__)

TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_LENGTH = 24


def generate_token() -> SecretStr:
    """A fresh registration token: 24 characters of [A-Za-z0-9] (~143 bits), easy to paste."""
    return SecretStr("".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH)))


def check_spec(invitation: Invitation, settings: Settings, now: dt.datetime) -> dt.datetime:
    """What the CRD schema cannot check (it cannot see the clock or our settings)."""
    expiry = desired_expiry(invitation, settings)
    if expiry - invitation.created > settings.max_validity:
        raise InvalidSpecError(
            f"the invitation would stay valid until {rfc3339(expiry)}, longer than this "
            f"installation allows ({_days(settings.max_validity)} after creation); "
            "shorten spec.validFor or spec.expiresAt"
        )
    if invitation.status.token_id is None and expiry <= now:
        raise InvalidSpecError(
            f"the invitation expires at {rfc3339(expiry)}, which has passed before a token was "
            "issued; set spec.expiresAt in the future or use spec.validFor"
        )
    return expiry


def _days(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 86400:g} days"


async def reconcile(
    deps: Collaborators, invitation: Invitation, *, whole_body: bool = False
) -> InvitationStatus | None:
    """Run all steps for the Invitation as it is now; returns the status it wrote, or None if
    it is gone or being deleted.

    The body Kopf hands over may be older than what the sync pass or an earlier run of this
    function wrote meanwhile (a mail record, a token id): under the lock, the steps decide on a
    fresh read, so nothing done is done twice. Except where the body's first status write
    proves it current before anything is done that must not be done twice (`decidable_unread`):
    a 409 on that write means "decide again on a fresh read" (`StaleBody`). `whole_body`: the
    Invitation is a whole object as the watch delivered it (Kopf's body), not the sync pass's
    digest, which lacks the annotations: only a whole one may be decided on unread.
    """
    async with deps.slots, deps.lock_for(invitation):
        if whole_body and decidable_unread(invitation):
            with contextlib.suppress(StaleBody):
                return await _reconcile_locked(deps, invitation, unread=True)
        current = await read_current(deps.kube, invitation)
        if current is None:
            return None
        return await _reconcile_locked(deps, current)


def decidable_unread(invitation: Invitation) -> bool:
    """Whether a run may decide on this body without reading the Invitation first.

    Without a token id in status, the steps' first write records one (or the status of a spec
    that cannot work), conditioned on the body's resourceVersion, and everything before it is
    safe to repeat: the Secret is created or found, the token issued or found by its value
    (409), nothing mailed, no Event posted, nothing asked of authentik. So a stale body costs a
    repeat, never a second mail. With a token id the mail may follow with no write before it;
    a revoked spec may withdraw an authentik invitation first; a deleting one is the
    finalizer's: those runs read afresh. This spares a new Invitation one request (issue 24).
    """
    return (
        invitation.resource_version is not None
        and invitation.status.token_id is None
        and not invitation.spec.revoked
        and not invitation.deleting
    )


async def repair_drift(
    deps: Collaborators, invitation: Invitation, *, alive: set[str] | None = None
) -> bool:
    """Reconcile an Invitation the sync pass found drifted, if it still is.

    The sync pass compares a listing with its watch cache; either may be older than a handler
    that just ran. Deciding on them could set an edited limit back, or mark a settled
    Invitation Pending during an outage. So: under the Invitation's lock, read both afresh
    and decide again (`ownership.drifted`). A held lock means a handler is at work on it:
    skipped, not waited for (it may be waiting on a mail relay for its whole timeout).
    Returns whether it reconciled.
    """
    lock = deps.lock_for(invitation)
    if lock.locked():
        return False
    async with lock:
        current = await read_current(deps.kube, invitation)
        if current is None or owned_by_handler(current):
            return False
        token_id = current.status.token_id
        assert token_id is not None  # owned_by_handler said so
        token = await deps.backend.read(token_id)
        enrolled = deps.enrollment is not None
        if not drifted(
            current, token, deps.settings, deps.clock(), enrollment=enrolled, alive=alive
        ):
            return False
        await _reconcile_locked(deps, current)
        return True


async def _reconcile_locked(
    deps: Collaborators, invitation: Invitation, *, unread: bool = False
) -> InvitationStatus:
    writer = StatusWriter(deps.kube, invitation, unread=unread)
    token_state: TokenState | None = None
    # A token issued now, not yet told: the mail that follows in this run tells both in one
    # Event (one request less per new Invitation, issue 24); without a mail, TokenIssued.
    issued: list[Notice] = []
    try:
        expiry = check_spec(invitation, deps.settings, deps.clock())
        await _rotate_if_readdressed(deps, invitation, writer)
        if invitation.spec.revoked and writer.status.token_id is None:
            # Born revoked, revoked before a token existed, or given a new address while
            # revoked (the old address's token was just revoked): nothing to issue, no mail,
            # until the spec un-revokes it. Issuing first and revoking after would leave a
            # valid token no status names, were the operator to stop in between.
            await enroll(deps, invitation, writer, None, expiry)
            return await _finish(deps, invitation, writer, None)
        token = await _ensure_secret(deps, invitation, writer)
        token_state = await _ensure_token(deps, invitation, writer, token, expiry, issued)
        token_state = await _converge(deps, invitation, writer, token_state, expiry)
        _check_clocks(invitation, token_state, deps.clock(), deps.backend.name)
        enrolled = await enroll(deps, invitation, writer, token_state, expiry)
        mailed = await _mail_if_due(deps, invitation, writer, token, token_state, enrolled)
        if mailed is not None:
            # The mail record goes out with the very next request: onboarding below (sessions,
            # joins with retries, a notice) may crash or fail, and a lost record mails again.
            await _finish(deps, invitation, writer, token_state)
            await deps.events.normal(invitation, "MailSent", _with_untold(issued, mailed))
        else:
            await _post_untold(deps, invitation, issued)
        notices = await onboard(deps, invitation, writer, token_state)
    except BackendClockAhead as exc:
        # Not handed to Kopf for a retry: the sync pass sees when the backend agrees and mails
        # then (`awaits_mail`), so no retry races it for the one mail.
        problem = Problem.of(exc, deps.backend.name)
        await _post_untold(deps, invitation, issued)
        return await _finish(
            deps, invitation, writer, token_state, reconciling=problem, waiting_for_clock=True
        )
    except PermanentError as exc:
        problem = Problem.of(exc, deps.backend.name)
        await _post_untold(deps, invitation, issued)
        await _finish(deps, invitation, writer, token_state, stalled=problem)
        raise
    except OperatorError as exc:
        # Transient, and (should a new error ever lack a class) the unclassified as well:
        # waiting is the safe default, and the reason still reaches status.
        problem = Problem.of(exc, deps.backend.name)
        await _post_untold(deps, invitation, issued)
        await _finish(deps, invitation, writer, token_state, reconciling=problem)
        raise
    if notices is None and mailed is not None:
        return writer.status  # written with the mail record; onboarding had nothing to do
    status = await _finish(deps, invitation, writer, token_state)
    await post_notices(deps.events, invitation, notices or [])
    return status


def _with_untold(untold: list[Notice], mailed: str) -> str:
    """The MailSent message, after what it tells as well ("Registration token X issued in MAS;
    invitation mailed to ..."); `untold` is told then."""
    if not untold:
        return mailed
    told = [notice.message for notice in untold]
    untold.clear()
    return "; ".join([*told, mailed[:1].lower() + mailed[1:]])


async def _post_untold(deps: Collaborators, invitation: Invitation, untold: list[Notice]) -> None:
    """Post what no mail told (a token issued, then no mail: revoked, not due, mail failed)."""
    notices = list(untold)
    untold.clear()  # once: a failure after this must not post them again
    await post_notices(deps.events, invitation, notices)


async def enroll(
    deps: Collaborators,
    invitation: Invitation,
    writer: StatusWriter,
    token: TokenState | None,
    expiry: dt.datetime,
) -> enrollment.Enrollment | None:
    """The invitee's authentik invitation (`enrollment.py`), if authentik is configured: kept
    while the token works, deleted once it does not; staged for the next status write (a crash
    before it loses nothing: the next run finds the invitation by its name), which for a mail
    is the one right after the relay's accept."""
    if deps.enrollment is None:
        return None
    now = deps.clock()
    before = writer.status.authentik_invitation
    if token is not None and token.valid and not invitation.spec.revoked:
        resend = resend_requested(invitation, writer.status.resend_handled)
        enrolled = await enrollment.ensure(
            deps.enrollment, invitation, before, expiry=expiry, resend=resend, now=now
        )
    else:
        why = "the Invitation is revoked"
        if token is not None and not invitation.spec.revoked:
            why = "the registration token expired" if token.expired(now) else "the token is spent"
        enrolled = await enrollment.withdraw(deps.enrollment, invitation, before, why=why, now=now)
    if enrolled.status != before:
        writer.stage(authentik_invitation=enrolled.status)
    # Now, not after the status write: what was created or deleted in authentik is done.
    await post_notices(deps.events, invitation, enrolled.notices)
    return enrolled


async def onboard(
    deps: Collaborators, invitation: Invitation, writer: StatusWriter, token: TokenState | None
) -> list[Notice] | None:
    """Stage what onboarding found and did, if anything is due; the Events to post after it
    (None: nothing was due)."""
    now = deps.clock()
    current = writer.status
    if token is not None:  # the use count as the backend says now, not as status last showed
        current = current.model_copy(
            update={"times_used": token.times_used, "last_used_at": token.last_used_at}
        )
    about_to_be_written = dataclasses.replace(invitation, status=current)
    if deps.onboarding is None or not deps.onboarding.due(about_to_be_written, now):
        return None
    onboarded = await deps.onboarding.apply(about_to_be_written, token, now)
    writer.stage(**onboarded.changes)
    return onboarded.notices


def _check_clocks(
    invitation: Invitation, state: TokenState, now: dt.datetime, backend: str
) -> None:
    if not clock_disagrees(invitation, state, now):
        return
    expiry = rfc3339(state.expires_at) or "never"
    raise BackendClockAhead(
        f"{backend} calls token {state.id} invalid, though it expires at {expiry} and the "
        f"operator's clock says {rfc3339(now)}: {backend}'s clock is probably ahead of the "
        "operator's. Check time synchronisation (NTP) on both; the mail goes out once "
        f"{backend} calls the token valid",
        retry_after=60.0,
    )


async def _finish(
    deps: Collaborators,
    invitation: Invitation,
    writer: StatusWriter,
    token_state: TokenState | None,
    *,
    stalled: Problem | None = None,
    reconciling: Problem | None = None,
    waiting_for_clock: bool = False,
) -> InvitationStatus:
    now = deps.clock()
    before = writer.status.phase
    previous_ready = writer.status.condition("Ready")
    previous_reason = previous_ready.reason if previous_ready is not None else None
    status = compute_status(
        writer.status,
        spec=invitation.spec,
        generation=invitation.generation,
        token=token_state,
        now=now,
        stalled=stalled,
        reconciling=reconciling,
    )
    if token_state is not None:
        status.last_synced_at = now
    # Set only here, cleared by every other ending: the sync pass owns the Invitation meanwhile.
    status.waiting_for_backend_clock = True if waiting_for_clock else None
    try:
        await writer.write(status)
    except KubeNotFound:
        return status  # deleted while we worked: nothing left to report on
    await announce_phase_change(deps.events, invitation, before, status)
    if reconciling is not None and previous_reason != reconciling.reason:
        # Once per cause, not once per retry: the condition carries the details meanwhile.
        await deps.events.warning(invitation, reconciling.reason, reconciling.message)
    return status


async def _rotate_if_readdressed(
    deps: Collaborators, invitation: Invitation, writer: StatusWriter
) -> None:
    """A new address gets a new token; the old address must not keep a working one."""
    status = writer.status
    if status.token_id is None or status.issued_to in (None, invitation.spec.email):
        return
    await deps.backend.revoke(status.token_id)
    await deps.events.normal(
        invitation, "TokenRevoked", "Revoked the token of the previous address; issuing a new one"
    )
    secret_name = status.secret_name or secret_name_for(invitation.name)
    # No Secret at all is fine: the next step creates one with a fresh token anyway.
    with contextlib.suppress(KubeNotFound):
        await deps.kube.replace_token(
            invitation.namespace, secret_name, generate_token(), invitation.uid
        )
    await writer.record(token_id=None, issued_to=None, revocation_requested=None)


async def _ensure_secret(
    deps: Collaborators, invitation: Invitation, writer: StatusWriter
) -> SecretStr:
    name = writer.status.secret_name or secret_name_for(invitation.name)
    # Never recorded: almost always a new Invitation, whose Secret does not exist yet. Creating
    # answers "exists" otherwise and then reads it (with the same ownership check), so the
    # read first would be one request per new Invitation for the rare retry (issue 24).
    token = None
    if writer.status.secret_name is not None:
        token = await deps.kube.read_token_secret(invitation.namespace, name, invitation.uid)
    if token is None:
        token = await deps.kube.create_token_secret(
            invitation.namespace, name, generate_token(), invitation.owner_reference()
        )
    if writer.status.secret_name != name:
        writer.stage(secret_name=name)  # derived from the Invitation's name: nothing to lose
    return token


async def _ensure_token(
    deps: Collaborators,
    invitation: Invitation,
    writer: StatusWriter,
    token: SecretStr,
    expiry: dt.datetime,
    untold: list[Notice],
) -> TokenState:
    """The backend's token for the Secret's value, issued if need be. A new one's TokenIssued
    Event is added to `untold`, for the caller to post (with the mail, if one follows)."""
    spec = invitation.spec
    token_id = writer.status.token_id
    same_value_again = False
    if token_id is not None:
        state = await deps.backend.read(token_id)
        if state is not None and secrets.compare_digest(
            state.token.get_secret_value(), token.get_secret_value()
        ):
            return state
        if state is None:
            settled = missing_token_state(invitation, expiry, deps.clock())
            if settled is not None:
                return settled  # revoked, spent or expired: not to be issued again
            same_value_again = True
        if state is None and writer.status.revocation_requested:
            # The spec revoked it and now no longer does; a backend that revokes by deleting
            # (Synapse) has nothing left to un-revoke, so it is issued again from the Secret.
            await deps.events.normal(
                invitation,
                "TokenUnrevoked",
                f"Token {token_id} was deleted in {deps.backend.name} when it was revoked; "
                "issuing it again from the Secret",
            )
        elif state is None:
            await deps.events.warning(
                invitation,
                "DriftCorrected",
                f"Token {token_id} is missing in {deps.backend.name} (deleted by hand, or a "
                "restored database?); issuing it again from the Secret",
            )
        else:
            # Someone replaced the Secret: the mailed token and the stored one disagree.
            await deps.backend.revoke(token_id)
            await deps.events.warning(
                invitation,
                "DriftCorrected",
                f"The Secret no longer matches token {token_id}; revoked it and issuing the "
                "Secret's token",
            )
    state = await deps.backend.issue(token, usage_limit=spec.usage_limit, expires_at=expiry)
    # The lost token's value issued again: whoever was mailed it holds this one already, so the
    # mail record moves to the new id (MAS gives it a new one) instead of mailing it twice.
    carried: dict[str, str] = {}
    if same_value_again and writer.status.mailed_token_id == token_id:
        carried["mailed_token_id"] = state.id
    await writer.record(token_id=state.id, issued_to=spec.email, **carried)
    untold.append(
        Notice("TokenIssued", f"Registration token {state.id} issued in {deps.backend.name}")
    )
    unprotected = deps.site.facts.unprotected if deps.site is not None else None
    if unprotected:
        await deps.events.warning(invitation, "RegistrationNotTokenGated", unprotected)
    return state


async def _converge(
    deps: Collaborators,
    invitation: Invitation,
    writer: StatusWriter,
    state: TokenState,
    expiry: dt.datetime,
) -> TokenState:
    spec = invitation.spec
    spec_changed = writer.status.observed_generation != invitation.generation
    if state.usage_limit != spec.usage_limit or state.expires_at != expiry:
        state = await deps.backend.update(state.id, usage_limit=spec.usage_limit, expires_at=expiry)
        what = f"usage limit {spec.usage_limit}, expiry {rfc3339(expiry)}"
        if spec_changed:
            await deps.events.normal(invitation, "TokenUpdated", f"Token {state.id} now has {what}")
        else:
            await deps.events.warning(
                invitation,
                "DriftCorrected",
                f"Token {state.id} was changed outside Git; set back to {what}",
            )

    requested = bool(writer.status.revocation_requested)
    if spec.revoked and not state.revoked:
        if not requested:
            # The intent first: if MAS's answer to the revoke is lost (MAS did revoke), the
            # revocation is still known as ours, undone if the spec flips back, and never
            # reported as made outside Git.
            await writer.record(revocation_requested=True)
            requested = True
        revoked = await deps.backend.revoke(state.id)
        state = revoked or state
        await deps.events.normal(
            invitation, "TokenRevoked", f"Token {state.id} revoked, as the spec asks"
        )
    elif not spec.revoked and state.revoked and requested:
        state = await deps.backend.unrevoke(state.id)
        await deps.events.normal(invitation, "TokenUnrevoked", f"Token {state.id} is valid again")
    if requested != spec.revoked:
        await writer.record(revocation_requested=spec.revoked)
    return state


def resend_requested(invitation: Invitation, handled: str | None) -> bool:
    """Whether `spec.resend` or the resend annotation holds a value that `handled` (the
    `Invitation.resend_request` of the last mail) did not: each new value is one request.
    Removing a value asks for nothing: tidying Git or `kubectl annotate ... resend-` mails no one.
    """
    handled = handled or ""
    marker = invitation.spec.resend or ""
    annotation = (invitation.resend_annotation or "")[:300]
    new_marker = bool(marker) and not handled.startswith(f"spec={marker};annotation=")
    new_annotation = bool(annotation) and not handled.endswith(f";annotation={annotation}")
    return new_marker or new_annotation


async def _mail_if_due(
    deps: Collaborators,
    invitation: Invitation,
    writer: StatusWriter,
    token: SecretStr,
    state: TokenState,
    enrolled: enrollment.Enrollment | None = None,
) -> str | None:
    """Send the mail if it is due; returns the MailSent Event's message, or None.

    The mail record is staged, not written: the caller writes it with the status at once, with
    no I/O in between, so that one PATCH closes the duplicate-mail window (and posts the Event
    after it).
    """
    status = writer.status
    already = mailed(dataclasses.replace(invitation, status=status), state)
    # A resend request that was already present when the first mail went out is not a new one.
    resend = already and resend_requested(invitation, status.resend_handled)
    # A new authentik invitation (after an un-revoke, say) is mailed even for a mailed token.
    new_link = enrolled is not None and enrolled.unmailed
    if (already and not resend and not new_link) or not state.valid or invitation.spec.revoked:
        return None
    link = enrolled.link if enrolled is not None else None
    await deps.mailer.send_invitation(
        invitation, token=token, token_state=state, enrollment_url=link
    )
    if enrolled is not None and enrolled.status is not None and link is not None:
        writer.stage(authentik_invitation=enrollment.mailed(enrolled.status))
    writer.stage(
        mail_sent_at=deps.clock(),
        mail_recipient=invitation.spec.email,
        mailed_token_id=state.id,
        mails_sent=(status.mails_sent or 0) + 1,
        resend_handled=invitation.resend_request,
    )
    what = "mailed again" if resend else "mailed"
    return f"Invitation {what} to {invitation.spec.email}"


async def finalize(deps: Collaborators, invitation: Invitation) -> None:
    """Deletion: revoke the recorded token, and any other token holding our Secret's value.

    Unknown or already revoked counts as done. The other token is one issued just before a crash
    whose id was never recorded (a first issue, or a re-issue after the Secret changed): without
    the search, deleting such an Invitation would leave a working token behind. A Secret of our
    name that we do not own holds nothing of ours, and never keeps the Invitation from going.
    """
    async with deps.slots, deps.lock_for(invitation):
        token_id = invitation.status.token_id
        value = await _our_secret_value(deps, invitation)
        state = await deps.backend.revoke(token_id) if token_id is not None else None
        if state is not None:
            await _announce_revoked(deps, invitation, state.id)
        holds_value = state is not None and secrets.compare_digest(
            state.token.get_secret_value(), value.get_secret_value() if value else ""
        )
        if value is not None and not holds_value:
            other = await _token_holding(deps, value)
            if (
                other is not None
                and other.id != token_id
                and await deps.backend.revoke(other.id) is not None
            ):
                await _announce_revoked(deps, invitation, other.id)
        if deps.enrollment is not None:
            notices = await enrollment.remove_all(deps.enrollment, invitation)
            await post_notices(deps.events, invitation, notices)
    deps.locks.pop(invitation.uid, None)
    if deps.onboarding is not None:
        deps.onboarding.forget(invitation.uid)


async def _announce_revoked(deps: Collaborators, invitation: Invitation, token_id: str) -> None:
    await deps.events.normal(
        invitation, "TokenRevoked", f"Token {token_id} revoked: the Invitation is being deleted"
    )


async def _our_secret_value(deps: Collaborators, invitation: Invitation) -> SecretStr | None:
    name = invitation.status.secret_name or secret_name_for(invitation.name)
    try:
        return await deps.kube.read_token_secret(invitation.namespace, name, invitation.uid)
    except SecretConflict:
        return None  # not ours, or without a token: nothing of ours to revoke in it


async def _token_holding(deps: Collaborators, value: SecretStr) -> TokenState | None:
    wanted = value.get_secret_value()
    async for state in deps.backend.list_all():
        if secrets.compare_digest(state.token.get_secret_value(), wanted):
            return state
    return None
