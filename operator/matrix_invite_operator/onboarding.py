"""After sign-up: who accepted an Invitation (`status.account`), and the rooms the account joins.

No Kopf and no status writes here. `Onboarding.apply` takes the Invitation with the status about
to be written and returns only what it changed there (`account`, `accountSearch`, `rooms`,
`noticePosted`, the conditions `AccountKnown` and `RoomsJoined`), plus the Events to post after
the write.
It acts only when `due` (a pure check, no I/O) says so: a search when the token's use count rose
(retried a few times with backoff, since MAS lists the account a moment after the use), a room
without an outcome, or a failed room whose backoff has run out. A sync pass therefore costs
requests only for the Invitations with something to do.

Neither condition touches `Ready`, `Reconciling` or `Stalled`: an accepted invitation whose
rooms failed stays Ready (Accepted) and kstatus `Current`; `RoomsJoined=False` says what failed.
Acting in Matrix needs an access token, lent per use by `ActingSessions`: the configured Synapse
admin token, or a MAS personal session minted for the onboarding user and revoked right after
(each backend's own, `backends.synapse.AdminTokenSessions` and `backends.mas.PersonalSessions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import SecretStr

from .backends import AccountFinder, TokenState
from .errors import OperatorError
from .homeserver import MatrixError
from .models import AccountSearch, InvitationSpec, InvitationStatus, RoomState, RoomStatus
from .ports import Invitation, Notice, Onboarded
from .settings import Settings
from .status import make_condition

logger = logging.getLogger(__name__)

ACCOUNT_CONDITION = "AccountKnown"
ROOMS_CONDITION = "RoomsJoined"
#: Searches per use count while the account is not found (MAS may list it a moment late).
MAX_SEARCHES = 3
#: Synapse learns of a MAS account ~50 ms after MAS lists it: joins retry "User not found".
USER_NOT_FOUND_RETRIES = 6
USER_NOT_FOUND_FIRST_WAIT = 0.05

Observer = Callable[[str, str], None]
"""Called with (what, outcome): ("account_lookup", "found"), ("join", "failed"), ..."""


class Homeserver(Protocol):
    """What onboarding asks of the homeserver (`homeserver.HomeserverClient`); each call raises
    `MatrixError` when the homeserver refuses."""

    async def admin_join(self, room: str, user_id: str, token: SecretStr) -> str: ...

    async def invite(self, room: str, user_id: str, token: SecretStr) -> str: ...

    async def send_notice(self, room: str, text: str, token: SecretStr) -> None: ...


class ActingSessions(Protocol):
    """Lends an access token that may act on the homeserver, for the length of a `with`."""

    @property
    def actor(self) -> str:
        """Who acts, for messages: it must be in each room with power to invite."""
        ...

    def session(self) -> contextlib.AbstractAsyncContextManager[SecretStr]: ...


class Onboarding:
    """Finds the account of a used token and places it in the Invitation's rooms."""

    def __init__(
        self,
        settings: Settings,
        accounts: AccountFinder,
        *,
        homeserver: Homeserver | None = None,
        sessions: ActingSessions | None = None,
        observe: Observer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        self._homeserver = homeserver
        self._sessions = sessions
        self._observe = observe or (lambda what, outcome: None)
        self._sleep = sleep
        # Lookups that failed (an outage, a MAS without /user-emails), by Invitation uid: how
        # often in a row, and when to try again. Kept here, not in status: a failure is no
        # answer, and writing its time on every try woke every watcher for nothing.
        self._failed_lookups: dict[str, tuple[int, dt.datetime]] = {}

    # --- what is due (no I/O) -------------------------------------------------------------

    def with_common_rooms(self, spec: InvitationSpec) -> InvitationSpec:
        """The spec whose rooms are the settings' rooms (every accepted account joins them),
        then its own: from here on they are all `spec.rooms`, in status and conditions too."""
        common = self._settings.onboarding_rooms
        if not common:
            return spec
        rooms = list(dict.fromkeys([*common, *(spec.rooms or [])]))
        return spec.model_copy(update={"rooms": rooms})

    def _backoff(self, attempts: int) -> dt.timedelta:
        base, ceiling = self._settings.retry_base_seconds, self._settings.retry_max_seconds
        return dt.timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), ceiling))

    def forget(self, uid: str) -> None:
        """The Invitation `uid` is gone: drop what is kept of it in memory."""
        self._failed_lookups.pop(uid, None)

    def lookup_waits(self, invitation: Invitation, now: dt.datetime) -> bool:
        """Whether the last lookup for this Invitation failed and its backoff still runs."""
        failed = self._failed_lookups.get(invitation.uid)
        return failed is not None and now < failed[1]

    def search_due(self, spec: InvitationSpec, status: InvitationStatus, now: dt.datetime) -> bool:
        uses = status.times_used or 0
        if spec.account is not None or uses == 0:
            return False
        search = status.account_search
        if search is None or search.uses < uses:
            return True
        if status.account is not None or search.attempts >= MAX_SEARCHES:
            return False
        return now >= search.at + self._backoff(search.attempts)

    def rooms_due(
        self, spec: InvitationSpec, status: InvitationStatus, now: dt.datetime
    ) -> list[str]:
        account = spec.account or status.account
        if account is None or not spec.rooms:
            return []
        outcomes = {r.room: r for r in status.rooms or []}
        due = []
        for room in spec.rooms:
            outcome = outcomes.get(room)
            if outcome is None:
                due.append(room)
            elif outcome.state is RoomState.FAILED:
                at = outcome.last_attempt_at
                if at is None or now >= at + self._backoff(outcome.attempts):
                    due.append(room)
        return due

    def notice_due(self, spec: InvitationSpec, status: InvitationStatus) -> bool:
        account = spec.account or status.account
        # Posted once: None until tried, then True, or False after a failure (logged, an Event).
        if (
            self._settings.notice_room is None
            or account is None
            or status.notice_posted is not None
        ):
            return False
        tried = {r.room for r in status.rooms or []}
        return all(room in tried for room in spec.rooms or [])

    def due(self, invitation: Invitation, now: dt.datetime) -> bool:
        """Whether `apply` would do anything: cheap enough for every Invitation on every pass."""
        spec, status = self.with_common_rooms(invitation.spec), invitation.status
        if spec.account is not None and spec.account != status.account:
            return True
        if self._settings.notice_room is not None and self.notice_due(spec, status):
            return True
        stale_rooms = {r.room for r in status.rooms or []} - set(spec.rooms or [])
        return (
            (self.search_due(spec, status, now) and not self.lookup_waits(invitation, now))
            or bool(self.rooms_due(spec, status, now))
            or bool(stale_rooms)
        )

    # --- doing it ----------------------------------------------------------------------------

    async def apply(
        self, invitation: Invitation, token: TokenState | None, now: dt.datetime
    ) -> Onboarded:
        """What onboarding found and did, as changes to `invitation.status` (the status about
        to be written), and the Events to post after writing them.

        Never raises an OperatorError: a failed lookup or join is recorded and retried later,
        so it cannot turn an accepted invitation into a failed one.
        """
        spec, generation = self.with_common_rooms(invitation.spec), invitation.generation
        status = invitation.status.model_copy(deep=True)
        if token is not None:
            status.times_used, status.last_used_at = token.times_used, token.last_used_at
        notices: list[Notice] = []
        before = status.account
        problem: str | None = None
        if spec.account is not None:
            status.account = spec.account
        elif self.search_due(spec, status, now) and not self.lookup_waits(invitation, now):
            problem = await self._search(invitation, status, token, now, notices)
        if status.account != before:
            status.rooms = None  # another account: its rooms start over
            status.notice_posted = None
        if status.rooms:  # a room removed from the spec is forgotten, nobody is kicked
            kept = [r for r in status.rooms if r.room in (spec.rooms or [])]
            status.rooms = kept or None
        self._account_condition(spec, status, generation, now, problem)
        due = self.rooms_due(spec, status, now)
        notice = self.notice_due(spec, status) or (
            bool(due) and self._settings.notice_room is not None
        )
        if due or notice:
            await self._act(invitation.name, spec, status, due, now, notices)
        self._rooms_condition(spec, status, generation, now)
        return Onboarded(_changes(invitation.status, status), notices)

    async def _search(
        self,
        invitation: Invitation,
        status: InvitationStatus,
        token: TokenState | None,
        now: dt.datetime,
        notices: list[Notice],
    ) -> str:
        """Search once; returns why the account is (not) the one, for the condition."""
        spec = invitation.spec
        uses = status.times_used or 0
        search = status.account_search
        attempts = search.attempts + 1 if search is not None and search.uses == uses else 1
        used_at = token.last_used_at if token is not None else status.last_used_at
        try:
            found = await self._accounts.find_account(
                spec.email, used_at=used_at, not_before=invitation.created
            )
        except OperatorError as exc:
            self._observe("account_lookup", "failed")
            # An outage is no answer: it uses up no search and leaves `accountSearch` as it
            # was; the next try waits a backoff of its own (doubling up to the retry maximum).
            failures = self._failed_lookups.get(invitation.uid, (0, now))[0] + 1
            self._failed_lookups[invitation.uid] = (failures, now + self._backoff(failures))
            return f"the lookup failed: {exc}"
        self._failed_lookups.pop(invitation.uid, None)
        status.account_search = AccountSearch(uses=uses, attempts=attempts, at=now)
        self._observe("account_lookup", "found" if found.user_id else "not_found")
        if found.user_id is not None and found.user_id != status.account:
            status.account = found.user_id
            notices.append(Notice("AccountFound", f"{spec.email} signed up as {found.user_id}"))
        elif found.user_id is None and attempts >= MAX_SEARCHES:
            notices.append(
                Notice("AccountNotFound", _not_found_message(found.reason), warning=True)
            )
        return found.reason

    def _account_condition(
        self,
        spec: InvitationSpec,
        status: InvitationStatus,
        generation: int,
        now: dt.datetime,
        problem: str | None,
    ) -> None:
        if spec.account is None and not status.times_used:
            return
        if spec.account is not None:
            value, reason = True, "SetInSpec"
            message = f"The account is {spec.account}, as spec.account says"
        elif status.account is not None:
            value, reason = True, "Found"
            message = f"{spec.email} signed up as {status.account}"
        else:
            search = status.account_search
            searching = search is None or search.attempts < MAX_SEARCHES
            value = False
            reason = "Searching" if searching else "AccountNotFound"
            previous = status.condition(ACCOUNT_CONDITION)
            if problem is None and previous is not None and previous.status == "False":
                message = previous.message  # no search this time: the last finding stands
            else:
                message = _not_found_message(problem or f"no account has {spec.email}")
        self._set(status, ACCOUNT_CONDITION, value, reason, message, generation, now)

    def _rooms_condition(
        self, spec: InvitationSpec, status: InvitationStatus, generation: int, now: dt.datetime
    ) -> None:
        if not spec.rooms:
            status.conditions = [c for c in status.conditions if c.type != ROOMS_CONDITION]
            return
        if spec.account is None and status.account is None:
            value, reason = False, "WaitingForAccount"
            message = "The rooms are joined once the operator knows the account"
        else:
            outcomes = {r.room: r for r in status.rooms or []}
            failed = [r for r in outcomes.values() if r.state is RoomState.FAILED]
            pending = [room for room in spec.rooms if room not in outcomes]
            if failed:
                value, reason = False, "RoomJoinFailed"
                message = "; ".join(f"{r.room}: {r.message}" for r in failed)
                message += " (retried with backoff)"
            elif pending:
                value, reason = False, "Joining"
                message = f"Not yet done: {', '.join(pending)}"
            else:
                value, reason = True, "AllRoomsJoined"
                message = ", ".join(f"{r.room} {r.state.value.lower()}" for r in outcomes.values())
        self._set(status, ROOMS_CONDITION, value, reason, message, generation, now)

    @staticmethod
    def _set(
        status: InvitationStatus,
        type_: str,
        value: bool,
        reason: str,
        message: str,
        generation: int,
        now: dt.datetime,
    ) -> None:
        condition = make_condition(status, type_, value, reason, message, generation, now)
        status.conditions = [c for c in status.conditions if c.type != type_] + [condition]

    async def _act(
        self,
        name: str,
        spec: InvitationSpec,
        status: InvitationStatus,
        due: list[str],
        now: dt.datetime,
        notices: list[Notice],
    ) -> None:
        account = status.account
        assert account is not None  # rooms and notices are due only with an account
        outcomes = {r.room: r for r in status.rooms or []}
        if self._homeserver is None or self._sessions is None:
            unset = (
                "the operator cannot act on the homeserver: set MATRIX_INVITE_HOMESERVER_URL and "
                "MATRIX_INVITE_ONBOARDING_USER (MAS) or use the Synapse backend"
            )
            for room in due:
                outcomes[room] = self._outcome(room, outcomes.get(room), None, unset, now)
            status.rooms = [outcomes[r] for r in spec.rooms or [] if r in outcomes] or None
            return
        mode = spec.room_membership or self._settings.room_membership
        try:
            async with self._sessions.session() as token:
                for room in due:
                    state, refused = await self._place(
                        self._homeserver, self._sessions.actor, room, account, mode, token
                    )
                    self._observe(mode, "failed" if state is None else state.value.lower())
                    previous = outcomes.get(room)
                    outcomes[room] = self._outcome(room, previous, state, refused, now)
                    if state is None and (previous is None or previous.message != refused):
                        notices.append(Notice("RoomJoinFailed", f"{room}: {refused}", warning=True))
                status.rooms = [outcomes[r] for r in spec.rooms or [] if r in outcomes] or None
                if self.notice_due(spec, status):
                    await self._post_notice(name, spec, status, token, notices)
        except OperatorError as exc:  # no session (nothing was done): each due room failed
            problem = f"no session to act as {self._sessions.actor}: {exc}"
            for room in due:
                outcomes[room] = self._outcome(room, outcomes.get(room), None, problem, now)
            status.rooms = [outcomes[r] for r in spec.rooms or [] if r in outcomes] or None

    async def _post_notice(
        self,
        name: str,
        spec: InvitationSpec,
        status: InvitationStatus,
        token: SecretStr,
        notices: list[Notice],
    ) -> None:
        room = self._settings.notice_room
        if room is None or self._homeserver is None:
            return
        outcomes = status.rooms or []
        text = f"{spec.email} accepted invitation `{name}` as {status.account}"
        for state, words in (
            (RoomState.JOINED, "joined"),
            (RoomState.INVITED, "invited to"),
            (RoomState.FAILED, "not yet in"),
        ):
            rooms = [r.room for r in outcomes if r.state is state]
            if rooms:
                text += f"; {words} {', '.join(rooms)}"
        try:
            await self._homeserver.send_notice(room, text, token)
        except OperatorError as exc:  # MatrixError is one
            status.notice_posted = False
            notices.append(Notice("NoticeFailed", f"No notice in {room}: {exc}", warning=True))
            return
        status.notice_posted = True

    async def _place(
        self,
        homeserver: Homeserver,
        actor: str,
        room: str,
        account: str,
        mode: str,
        token: SecretStr,
    ) -> tuple[RoomState | None, str | None]:
        """Join or invite; (state, None) on success, (None, the server's message) if not."""
        wait = USER_NOT_FOUND_FIRST_WAIT
        for attempt in range(USER_NOT_FOUND_RETRIES):
            try:
                if mode == "invite":
                    await homeserver.invite(room, account, token)
                    return RoomState.INVITED, None
                await homeserver.admin_join(room, account, token)
                return RoomState.JOINED, None
            except MatrixError as exc:
                if "already in the room" in exc.error:
                    return RoomState.JOINED, None
                if exc.status == 404 and "user not found" in exc.error.lower():
                    if attempt + 1 < USER_NOT_FOUND_RETRIES:
                        await self._sleep(wait)
                        wait *= 2
                        continue
                    return None, f"{exc.error}: the homeserver does not know {account} (yet)"
                if exc.status == 403:
                    return None, f"{exc.error} ({actor} must be in the room, with power to invite)"
                return None, str(exc)
            except OperatorError as exc:
                return None, str(exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _outcome(
        room: str,
        previous: RoomStatus | None,
        state: RoomState | None,
        problem: str | None,
        now: dt.datetime,
    ) -> RoomStatus:
        if state is not None:
            return RoomStatus(room=room, state=state, last_attempt_at=now)
        attempts = (previous.attempts if previous is not None else 0) + 1
        return RoomStatus(
            room=room,
            state=RoomState.FAILED,
            message=(problem or "failed")[:1024],
            attempts=attempts,
            last_attempt_at=now,
        )


def _changes(before: InvitationStatus, after: InvitationStatus) -> dict[str, Any]:
    """The fields `after` sets otherwise than `before`: all of them, whatever a new one is."""
    return {
        name: getattr(after, name)
        for name in InvitationStatus.model_fields
        if getattr(after, name) != getattr(before, name)
    }


def _not_found_message(why: str) -> str:
    return (
        f"The token was used, but the operator cannot tell by whom: {why}. If the invitee "
        "signed up with another address, set spec.account to their Matrix ID "
        "(@name:server); the operator trusts it"
    )
