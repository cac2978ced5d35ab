"""The status sync: one paginated pass over the backend's tokens updates every Invitation.

Kopf watches Invitations, not MAS, so usage and out-of-band changes in MAS reach status only
through this pass. It costs ceil(N / page size) list requests per interval, however many
Invitations there are, and patches only Invitations whose status changed. Between passes it
wakes at the next `expiresAt` and flips expiry from the last listing, without asking MAS.
Drift (a token missing, or limits changed outside Git) is handed to `reconcile`.

Between full passes, the acceptance pass lists the newest tokens in one request, every few
seconds while an Invitation whose token is among them waits for its invitee: people sign up
soon after the mail, and a token is created right before its mail, so that is where
acceptances happen. It syncs those Invitations exactly as the full pass would; everything else
(older tokens, tokens gone from MAS, unhandled generations) stays the full pass's.

It also owns the registry: what the loop keeps of each watched Invitation between watch events
(`WatchedInvitation`), packed, because at thousands of Invitations it is most of the operator's
memory (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .backends import ListsNewest, TokenState
from .enrollment import NAME_PREFIX
from .errors import InvalidSpecError, KubeConflict, KubeNotFound, OperatorError
from .formats import parse_rfc3339
from .models import RESEND_ANNOTATION, InvitationStatus, Phase
from .ownership import (
    clock_disagrees,
    desired_expiry,
    expiry_due,
    missing_token_state,
    needs_reconcile,
    owned_by_handler,
)
from .ports import Collaborators, Invitation, Notice
from .reconcile import reconcile, repair_drift
from .status import (
    StatusWriter,
    announce_phase_change,
    compute_status,
    post_notices,
    read_current,
)

logger = logging.getLogger(__name__)

# lastSyncedAt is refreshed at most this often when nothing else changed: a fresh timestamp on
# every pass would cost one API write per Invitation per interval.
LAST_SYNCED_REFRESH = dt.timedelta(hours=1)
# Wake this long after an expiry, so that it has passed by MAS's clock too.
EXPIRY_MARGIN = dt.timedelta(seconds=0.2)
# The newest tokens one acceptance pass lists: one page, as large as the full pass's pages.
RECENT_TOKENS = 100


@dataclass
class SyncReport:
    """What one pass did; the benchmarks and metrics read it."""

    listed: int = 0
    list_requests: int = 0
    patched: int = 0
    skipped: int = 0  # locked by a handler, or changed while the pass looked at it
    reconciled: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)


# The metadata `Invitation.from_body` reads, and whether the object is being deleted.
_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
)


# What nearly every kept Invitation says: field names, the core conditions' reasons and fixed
# messages, a Sent one's sentences. zlib finds most of an entry in it, so a Sent Invitation is
# kept in about 250 bytes instead of 1.4 KB of JSON; at 20,000 Invitations that is 23 MB less
# (docs/performance.md). Only ever used within one process: nothing packed outlives it.
_PACKING_DICTIONARY = json.dumps(
    {
        "metadata": {
            "name": "",
            "namespace": "",
            "uid": "00000000-0000-0000-0000-000000000000",
            "generation": 1,
            "resourceVersion": "",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"displayName": "", "email": "@example.org", "revoked": False, "usageLimit": 1},
        "status": {
            "conditions": [
                {
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "message": "Invitation mailed to ; the token is valid until ",
                    "observedGeneration": 1,
                    "reason": "Sent",
                    "status": "True",
                    "type": "Ready",
                },
                {
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "message": "Nothing left to do",
                    "observedGeneration": 1,
                    "reason": "Reconciled",
                    "status": "False",
                    "type": "Reconciling",
                },
                {
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "message": "No error that needs a change",
                    "observedGeneration": 1,
                    "reason": "NotStalled",
                    "status": "False",
                    "type": "Stalled",
                },
            ],
            "expired": False,
            "expiresAt": "2026-01-01T00:00:00Z",
            "issuedTo": "@example.org",
            "lastSyncedAt": "2026-01-01T00:00:00Z",
            "mailRecipient": "@example.org",
            "mailSentAt": "2026-01-01T00:00:00Z",
            "mailedTokenId": "",
            "mailsSent": 1,
            "message": "Invitation mailed to ; the token is valid until ",
            "observedGeneration": 1,
            "phase": "Sent",
            "resendHandled": "spec=;annotation=",
            "revoked": False,
            "secretName": "-invite-token",
            "timesUsed": 0,
            "tokenId": "",
            "usageLimit": 1,
            "valid": True,
        },
    },
    separators=(",", ":"),
).encode()
# Raw deflate with a 4 KiB window (an entry and the dictionary fit) and a small hash table: a
# compressor's state is allocated per call, and zlib's default of ~270 KB would cost more
# than the packing saves in time.
_WINDOW_BITS = -12
_MEMORY_LEVEL = 4


def _pack(data: bytes) -> bytes:
    packer = zlib.compressobj(
        6, zlib.DEFLATED, _WINDOW_BITS, _MEMORY_LEVEL, zdict=_PACKING_DICTIONARY
    )
    return packer.compress(data) + packer.flush()


def _unpack(data: bytes) -> bytes:
    unpacker = zlib.decompressobj(_WINDOW_BITS, zdict=_PACKING_DICTIONARY)
    return unpacker.decompress(data) + unpacker.flush()


@dataclass(frozen=True, slots=True)
class WatchedInvitation:
    """What the sync loop keeps of one Invitation between watch events.

    A decoded watch event is about 17 KiB of Python objects (managedFields, Kopf's annotations,
    one object per JSON value). The loop needs the names, generation, spec and status, and reads
    them once per pass: kept as compact JSON, deflated against a typical Invitation
    (`_PACKING_DICTIONARY`), a Sent one is about 250 bytes. The two fields the loop looks at on
    every wake-up stay unpacked.
    """

    phase: str | None
    # When the loop must flip it to Expired: set only while Sent and not shown expired yet.
    expires_at: dt.datetime | None
    packed: bytes
    # A generation was handled (observedGeneration set) but not the newest one.
    lagging: bool = False
    # Its token, for the acceptance pass to find it among the newest without unpacking.
    token_id: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WatchedInvitation:
        metadata = body.get("metadata") or {}
        kept: dict[str, Any] = {k: metadata[k] for k in _KEPT_METADATA if k in metadata}
        resend = (metadata.get("annotations") or {}).get(RESEND_ANNOTATION)
        if resend is not None:
            kept["annotations"] = {RESEND_ANNOTATION: resend}
        status = body.get("status") or {}
        expires = status.get("expiresAt")
        if status.get("phase") != Phase.SENT.value or status.get("expired"):
            expires = None  # nothing left for the loop to flip
        observed = status.get("observedGeneration")
        return cls(
            phase=status.get("phase"),
            lagging=(
                observed is not None
                and observed != metadata.get("generation")
                and not metadata.get("deletionTimestamp")
            ),
            expires_at=parse_rfc3339(expires) if expires else None,
            token_id=status.get("tokenId"),
            packed=_pack(
                json.dumps(
                    {"metadata": kept, "spec": body.get("spec") or {}, "status": status},
                    separators=(",", ":"),
                ).encode()
            ),
        )

    def due(self, now: dt.datetime) -> bool:
        """Whether it reached its expiry but does not show it yet."""
        return self.expires_at is not None and self.expires_at <= now

    def body(self) -> dict[str, Any]:
        """The kept parts as a body `Invitation.from_body` accepts."""
        unpacked: dict[str, Any] = json.loads(_unpack(self.packed))
        return unpacked


Registry = dict[tuple[str, str], WatchedInvitation]

# A listed token's fields but its id, which is the key.
_TOKEN_FIELDS = tuple(name for name in TokenState.model_fields if name != "id")


class TokenListing(Mapping[str, TokenState]):
    """A full listing of the backend's tokens by id, each kept as a tuple of its fields.

    The loop holds the last listing between passes, and a pass the next one while it is being
    built: as pydantic models (1.5 KB each) that was 60 MB at 20,000 Invitations; as tuples a
    token is about 0.4 KB. A token is built again when asked for, once per Invitation per pass.
    """

    def __init__(self) -> None:
        self._fields: dict[str, tuple[Any, ...]] = {}

    def add(self, token: TokenState) -> None:
        self._fields[token.id] = tuple(getattr(token, name) for name in _TOKEN_FIELDS)

    def __getitem__(self, token_id: str) -> TokenState:
        fields = self._fields[token_id]  # KeyError: Mapping.get answers None
        return TokenState.model_construct(
            id=token_id, **dict(zip(_TOKEN_FIELDS, fields, strict=True))
        )

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def _settled(status: InvitationStatus) -> dict[str, Any]:
    """What a reader sees of status, as written (JSON), without the fields that change on
    every computation: equal means nothing worth a write."""
    shown = status.model_dump(mode="json", exclude={"last_synced_at"})
    for condition in shown["conditions"]:
        del condition["last_transition_time"]
    return shown


async def sync_invitations(
    deps: Collaborators,
    bodies: Iterable[Mapping[str, Any]],
    tokens: Mapping[str, TokenState],
    report: SyncReport,
    *,
    fresh: bool = True,
    alive: set[str] | None = None,
) -> None:
    """Bring each Invitation's status in line with the tokens listed from the backend.

    With `fresh=False` the tokens are a cached listing (an expiry wake-up): Invitations whose
    token is not in it are newer than the listing and wait for the next pass.
    """
    now = deps.clock()
    for body in bodies:
        if body.get("metadata", {}).get("deletionTimestamp"):
            continue
        try:
            invitation = Invitation.from_body(dict(body))
        except InvalidSpecError:
            continue
        status = invitation.status
        token_id = status.token_id
        if token_id is None or owned_by_handler(invitation):
            continue
        if not fresh and not expiry_due(invitation, now):
            continue  # an expiry wake-up only flips what is due; drift waits for a listing
        token = tokens.get(token_id)
        try:
            if token is None and not fresh:
                token = await deps.backend.read(token_id)  # newer than the listing
            expiry = desired_expiry(invitation, deps.settings)
            if token is None:
                # Revoked by deletion (Synapse), spent or expired: nothing to repair.
                token = missing_token_state(invitation, expiry, now)
            enrolled = deps.enrollment is not None
            if fresh and needs_reconcile(
                invitation, token, expiry, enrollment=enrolled, alive=alive
            ):
                if await repair_drift(deps, invitation, alive=alive):
                    report.reconciled += 1
                continue
            unmailed = token is not None and token.id != status.mailed_token_id
            if unmailed and token is not None and clock_disagrees(invitation, token, now):
                continue  # the handler's condition names the clocks, and it retries
            updated = compute_status(
                status, spec=invitation.spec, generation=invitation.generation, token=token, now=now
            )
            # Onboarding acts (lookups, joins) only in the fresh-read write below; here it is only
            # a reason to get there.
            onboarding_due = deps.onboarding is not None and deps.onboarding.due(
                dataclasses.replace(invitation, status=updated), now
            )
            synced = status.last_synced_at
            stale = synced is None or synced < now - LAST_SYNCED_REFRESH
            if _settled(updated) == _settled(status) and not stale and not onboarding_due:
                continue
            if await _write_from_fresh_read(deps, invitation, token, now):
                report.patched += 1
            else:
                report.skipped += 1
        except KubeNotFound:
            continue
        except OperatorError as exc:
            report.failed += 1
            logger.warning("sync of %s/%s failed: %s", invitation.namespace, invitation.name, exc)


async def _write_from_fresh_read(
    deps: Collaborators, seen: Invitation, token: TokenState | None, now: dt.datetime
) -> bool:
    """Write the status the pass computed, decided again on the Invitation as it is now.

    The pass decided on its watch cache and a listing, either of which may be older than a
    handler that just ran: an expiry wake-up racing an edit of `validFor` would otherwise write
    Expired for a token that was just extended. So, under the Invitation's lock (skipped if a
    handler holds it; it may be waiting on a mail relay), read the Invitation again; if it
    changed since the cache saw it, read the token again too; write conditioned on the version
    read (a conflict skips it until the next pass). Returns whether it wrote.
    """
    lock = deps.lock_for(seen)
    if lock.locked():
        return False
    async with lock:
        current = await read_current(deps.kube, seen)
        if current is None or owned_by_handler(current):
            return False
        token_id = current.status.token_id
        assert token_id is not None  # owned_by_handler said so
        expiry = desired_expiry(current, deps.settings)
        if current.resource_version != seen.resource_version or token_id != seen.status.token_id:
            token = await deps.backend.read(token_id) or missing_token_state(current, expiry, now)
            if needs_reconcile(current, token, expiry, enrollment=deps.enrollment is not None):
                return False  # drift: the next listing hands it to repair_drift
        status = current.status
        updated = compute_status(
            status, spec=current.spec, generation=current.generation, token=token, now=now
        )
        notices: list[Notice] = []
        about_to_be_written = dataclasses.replace(current, status=updated)
        if deps.onboarding is not None and deps.onboarding.due(about_to_be_written, now):
            # Idempotent (a join of a member succeeds), so a conflict below loses nothing.
            onboarded = await deps.onboarding.apply(about_to_be_written, token, now)
            updated, notices = onboarded.applied_to(updated), onboarded.notices
        synced = status.last_synced_at
        stale = synced is None or synced < now - LAST_SYNCED_REFRESH
        if _settled(updated) == _settled(status) and not stale:
            return False  # nothing a reader could see: a failed lookup, say, backing off
        updated.last_synced_at = now
        try:
            await StatusWriter(deps.kube, current, retry_conflicts=False).write(updated)
        except KubeConflict:
            return False
    await announce_phase_change(deps.events, current, status.phase, updated)
    await post_notices(deps.events, current, notices)
    return True


def any_due(watched: Iterable[WatchedInvitation], now: dt.datetime) -> bool:
    """Whether some Invitation reached its expiry but does not show it yet."""
    return any(w.due(now) for w in watched)


def next_expiry(watched: Iterable[WatchedInvitation], now: dt.datetime) -> dt.datetime | None:
    """The earliest expiry still ahead among Invitations that are not expired yet."""
    return min(
        (w.expires_at for w in watched if w.expires_at is not None and w.expires_at > now),
        default=None,
    )


def expires_before(watched: WatchedInvitation, moment: dt.datetime) -> bool:
    """Whether the loop must flip this Invitation to Expired before `moment` (plus the margin)."""
    return watched.expires_at is not None and watched.expires_at + EXPIRY_MARGIN < moment


class StatusSync:
    """The background loop; `registry` is kept current by the Kopf event handler."""

    def __init__(self, deps: Collaborators, registry: Registry) -> None:
        self.deps = deps
        self.registry = registry
        self.tokens: Mapping[str, TokenState] = TokenListing()
        self.last_report: SyncReport | None = None
        self.passes = 0
        self.recent_passes = 0
        self._recent_ids: frozenset[str] = frozenset()  # the last acceptance pass's tokens
        self.last_success: float | None = None  # Unix time of the last pass that listed MAS
        self._outage_logged = False
        self._enrollment_outage_logged = False
        self._wake = asyncio.Event()
        self._wake_at: dt.datetime | None = None  # when the sleeping loop wakes by itself
        self._converging: dict[str, asyncio.Task[None]] = {}  # by uid

    async def list_tokens(self, report: SyncReport) -> TokenListing | None:
        tokens = TokenListing()
        try:
            async for token in self.deps.backend.list_all():
                tokens.add(token)
        except OperatorError as exc:
            # One line per outage, not one per pass: the condition shows it on every object.
            if not self._outage_logged:
                logger.warning("status sync cannot list tokens: %s", exc)
                self._outage_logged = True
            return None
        if self._outage_logged:
            logger.info("status sync can list tokens again")
            self._outage_logged = False
        report.listed = len(tokens)
        return tokens

    async def list_enrollment(self) -> set[str] | None:
        """The names of the operator's authentik invitations, one listing per pass; None when
        authentik is not configured or did not answer (then nothing is judged opened)."""
        if self.deps.enrollment is None:
            return None
        try:
            names = await self.deps.enrollment.names(NAME_PREFIX + "_")
        except OperatorError as exc:
            if not self._enrollment_outage_logged:  # once per outage, as for the tokens
                logger.warning("status sync cannot list authentik's invitations: %s", exc)
                self._enrollment_outage_logged = True
            return None
        self._enrollment_outage_logged = False
        return names

    async def run_pass(self, *, list_backend: bool = True) -> SyncReport:
        report = SyncReport()
        if list_backend:
            tokens = await self.list_tokens(report)
            if tokens is None:
                return report
            self.tokens = tokens
            # Listed oldest first: the last page is what the acceptance pass would list now.
            self._recent_ids = frozenset(list(tokens)[-RECENT_TOKENS:])
        # list() takes the entries in one step; each is unpacked only when its turn comes, so a
        # pass never holds more than one unpacked body. An expiry wake-up flips only what is
        # due, so it unpacks only that.
        watched = list(self.registry.values())
        if not list_backend:
            now = self.deps.clock()
            watched = [w for w in watched if w.due(now)]
        alive = await self.list_enrollment() if list_backend else None
        await sync_invitations(
            self.deps,
            (w.body() for w in watched),
            self.tokens,
            report,
            fresh=list_backend,
            alive=alive,
        )
        if list_backend:
            report.reconciled += self.converge_lagging(watched)
        self.passes += 1
        self.last_report = report
        if list_backend:
            self.last_success = time.time()
        return report

    def awaits_acceptance(self) -> bool:
        """Whether an acceptance pass could show anything: an Invitation still Sent whose token
        was among the newest last time, or is newer than the last full listing.

        Sent Invitations with older tokens are the full pass's: they cost no request here.
        """
        sent = Phase.SENT.value
        return any(
            w.phase == sent
            and w.token_id is not None
            and (w.token_id in self._recent_ids or w.token_id not in self.tokens)
            for w in self.registry.values()
        )

    async def run_recent_pass(self) -> SyncReport:
        """One request for the newest tokens; each Invitation whose token is among them is
        synced from it by the full pass's own steps (status, drift, onboarding at once).

        A backend that cannot list its newest tokens cheaply is left to the full pass. An
        outage is the full pass's to report: it shows on every Invitation's condition anyway.
        """
        report = SyncReport()
        backend = self.deps.backend
        if not isinstance(backend, ListsNewest):
            return report
        try:
            newest = await backend.list_newest(RECENT_TOKENS)
        except OperatorError as exc:
            logger.debug("acceptance pass cannot list the newest tokens: %s", exc)
            return report
        tokens = {token.id: token for token in newest}
        report.listed, report.list_requests = len(tokens), 1
        self._recent_ids = frozenset(tokens)
        watched = [w for w in self.registry.values() if w.token_id in tokens]
        await sync_invitations(self.deps, (w.body() for w in watched), tokens, report)
        self.recent_passes += 1
        return report

    def converge_lagging(self, watched: Iterable[WatchedInvitation]) -> int:
        """Reconcile every Invitation whose newest generation was never handled.

        Kopf runs a handler only when the spec differs from the last one it handled: an edit
        reverted while its retry waited (an outage) leaves the newest generation unhandled, its
        status Reconciling for the older one, forever. The listing just worked, so the backend
        is back: each such Invitation is reconciled in a task of its own (under its lock, from
        a fresh read; the pass never waits on it or on a mail), unless a handler holds it.
        Returns how many it started.
        """
        started = 0
        for entry in watched:
            if not entry.lagging:
                continue
            try:
                invitation = Invitation.from_body(entry.body())
            except InvalidSpecError:
                continue
            if invitation.uid in self._converging or self.deps.lock_for(invitation).locked():
                continue
            task = asyncio.create_task(
                self._converge(invitation),
                name=f"converge {invitation.namespace}/{invitation.name}",
            )
            self._converging[invitation.uid] = task
            started += 1
        return started

    async def _converge(self, invitation: Invitation) -> None:
        try:
            await reconcile(self.deps, invitation)
            logger.info(
                "reconciled generation %s of %s/%s, which no handler had taken up",
                invitation.generation,
                invitation.namespace,
                invitation.name,
            )
        except OperatorError as exc:
            logger.info(
                "%s/%s is still not reconciled: %s", invitation.namespace, invitation.name, exc
            )
        finally:
            self._converging.pop(invitation.uid, None)

    async def aclose(self) -> None:
        """Stop what `converge_lagging` started."""
        tasks = list(self._converging.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self, watched: WatchedInvitation | None = None) -> None:
        """An Invitation changed: wake the loop if its expiry comes before the planned wake-up.

        Called on every watch event, so it looks at this one Invitation only: scanning the
        whole registry on every event is O(N) per event, a quarter of the operator's CPU in a
        burst of 1,000 (docs/performance.md). A wake-up that is not needed is harmless, a
        missed one is not: with no `watched`, or before the loop first sleeps, it wakes.
        """
        if (
            watched is not None
            and self._wake_at is not None
            and not expires_before(watched, self._wake_at)
        ):
            return
        self._wake.set()

    async def run_forever(self) -> None:
        interval = self.deps.settings.sync_interval_seconds
        recent_interval = self.deps.settings.recent_sync_interval_seconds
        next_list = time.monotonic()
        next_recent = next_list + recent_interval
        while True:
            now = time.monotonic()
            list_due = now >= next_list
            if list_due:
                next_list = now + interval
                next_recent = now + recent_interval  # the full pass lists the newest too
            recent_due = recent_interval > 0 and not list_due and now >= next_recent
            if recent_due:
                next_recent = now + recent_interval
            if list_due or any_due(self.registry.values(), self.deps.clock()):
                try:
                    await self.run_pass(list_backend=list_due)
                except Exception:  # the loop must outlive any one bad pass
                    logger.exception("status sync pass failed")
            if recent_due and self.awaits_acceptance():
                try:
                    await self.run_recent_pass()
                except Exception:
                    logger.exception("acceptance pass failed")
            sleep = next_list - time.monotonic()
            if recent_interval > 0:
                sleep = min(sleep, next_recent - time.monotonic())
            upcoming = next_expiry(self.registry.values(), self.deps.clock())
            if upcoming is not None:
                sleep = min(sleep, (upcoming - self.deps.clock() + EXPIRY_MARGIN).total_seconds())
            sleep = max(sleep, 1.0)
            # No await from the scan above to the wait: an event in between cannot be missed.
            self._wake_at = self.deps.clock() + dt.timedelta(seconds=sleep)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=sleep)
