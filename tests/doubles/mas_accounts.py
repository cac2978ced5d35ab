"""The MAS double's users, user emails and personal sessions (what onboarding asks MAS).

Kept beside `mas.py` and wired in by `MasDouble` (`double.accounts`): the routes answer under
`/api/admin/v1`, so the double's middleware validates every answer against the spec like the
token endpoints'. Semantics from `shared/reference/mas/FACTS.md`: the email filter ignores case,
an address has at most one owner, a personal session's access token appears only in the create
answer, revoking twice answers 409, and an unknown actor 404 "User not found".

Tests make the minted access token whatever they need (`mint`): the integration harness hands
out a real Synapse admin token, so that what the operator does with the session happens on the
real homeserver, and `on_revoke` logs that token out in Synapse, so a revocation really ends it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from tests.doubles.mas import _error_response, _Pagination, _Reply, format_rfc3339

if TYPE_CHECKING:
    from tests.doubles.mas import MasDouble

JsonObject = dict[str, Any]

ADMIN_PREFIX = "/api/admin/v1"
USERS_PATH = f"{ADMIN_PREFIX}/users"
USER_PATH = f"{USERS_PATH}/{{id}}"
USER_BY_NAME_PATH = f"{USERS_PATH}/by-username/{{username}}"
USER_EMAILS_PATH = f"{ADMIN_PREFIX}/user-emails"
SESSIONS_PATH = f"{ADMIN_PREFIX}/personal-sessions"
SESSION_PATH = f"{SESSIONS_PATH}/{{id}}"
SESSION_REVOKE_PATH = f"{SESSION_PATH}/revoke"

SESSION_MISSING = "Personal session with ID {id} not found"
Stored = TypeVar("Stored")

# A scope token as OAuth 2.0 defines it (RFC 6749 3.3): printable ASCII without space, " or \.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


@dataclasses.dataclass
class StoredUser:
    id: str
    username: str
    created_at: dt.datetime
    deactivated_at: dt.datetime | None = None


@dataclasses.dataclass
class StoredEmail:
    id: str
    user_id: str
    email: str
    created_at: dt.datetime


@dataclasses.dataclass
class StoredSession:
    id: str
    actor_user_id: str
    human_name: str
    scope: str
    created_at: dt.datetime
    access_token: str
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None = None


def _single(resource: JsonObject, self_link: str, *, status: int = 200) -> web.Response:
    """MAS's SingleResponse envelope."""
    return web.json_response({"data": resource, "links": {"self": self_link}}, status=status)


def _random_token() -> str:
    return "mpt_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(30))


class MasAccounts:
    """Users, their addresses and personal sessions of one `MasDouble`; thread-safe hooks."""

    def __init__(self, double: MasDouble) -> None:
        self._double = double
        self._users: dict[str, StoredUser] = {}
        self._emails: dict[str, StoredEmail] = {}
        self._sessions: dict[str, StoredSession] = {}
        #: Makes the access token of a new session: (actor username, scope) -> token.
        self.mint: Callable[[str, str], str] = lambda username, scope: _random_token()
        #: Told the access token of each session revoked through the API.
        self.on_revoke: Callable[[str], None] = lambda token: None

    # --- hooks for tests ----------------------------------------------------------------------

    def add_user(
        self, username: str, *, email: str | None = None, created_at: dt.datetime | None = None
    ) -> JsonObject:
        d = self._double
        with d._lock:
            if any(u.username == username for u in self._users.values()):
                raise ValueError(f"user {username} exists")
            if email is not None and self._owner_of(email) is not None:
                raise ValueError(f"the email address {email} is already in use")
            now = created_at or d.now()
            user = StoredUser(d._ulids.new(now), username, now)
            self._users[user.id] = user
            if email is not None:
                stored = StoredEmail(d._ulids.new(now), user.id, email, now)
                self._emails[stored.id] = stored
            return {"id": user.id, "username": username, "created_at": now}

    def sign_up(self, token_id: str, username: str, email: str) -> JsonObject:
        """An invitee finishes MAS's sign-up with this token: the token's use, then about a
        millisecond later the account with its address (the order observed on MAS 1.22)."""
        used = self._double.simulate_registration(token_id, require_valid=True)
        created = used["last_used_at"] + dt.timedelta(milliseconds=1)
        return self.add_user(username, email=email, created_at=created)

    def sessions(self) -> list[JsonObject]:
        """Every personal session minted, oldest first, with its token in clear."""
        with self._double._lock:
            return [dataclasses.asdict(s) for s in self._sessions.values()]

    @property
    def sessions_minted(self) -> int:
        with self._double._lock:
            return len(self._sessions)

    @property
    def sessions_active(self) -> int:
        with self._double._lock:
            return sum(1 for s in self._sessions.values() if s.revoked_at is None)

    # --- routes -------------------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(USER_EMAILS_PATH, self._list_emails)
        router.add_get(USER_BY_NAME_PATH, self._user_by_name)
        router.add_get(USER_PATH, self._get_user)
        router.add_post(SESSIONS_PATH, self._create_session)
        router.add_get(SESSION_PATH, self._get_session)
        router.add_post(SESSION_REVOKE_PATH, self._revoke_session)

    def _owner_of(self, email: str) -> StoredEmail | None:
        wanted = email.casefold()
        return next((e for e in self._emails.values() if e.email.casefold() == wanted), None)

    def _user_resource(self, user: StoredUser) -> JsonObject:
        return {
            "type": "user",
            "id": user.id,
            "attributes": {
                "username": user.username,
                "created_at": format_rfc3339(user.created_at),
                "locked_at": None,
                "deactivated_at": None
                if user.deactivated_at is None
                else format_rfc3339(user.deactivated_at),
                "admin": False,
                "legacy_guest": False,
            },
            "links": {"self": f"{USERS_PATH}/{user.id}"},
        }

    def _session_resource(self, session: StoredSession, *, with_token: bool) -> JsonObject:
        def when(moment: dt.datetime | None) -> str | None:
            return None if moment is None else format_rfc3339(moment)

        attributes: JsonObject = {
            "created_at": format_rfc3339(session.created_at),
            "revoked_at": when(session.revoked_at),
            "owner_user_id": None,
            "owner_client_id": None,
            "actor_user_id": session.actor_user_id,
            "human_name": session.human_name,
            "scope": session.scope,
            "last_active_at": None,
            "last_active_ip": None,
            "expires_at": None if session.revoked_at else when(session.expires_at),
        }
        if with_token:
            attributes["access_token"] = session.access_token
        return {
            "type": "personal-session",
            "id": session.id,
            "attributes": attributes,
            "links": {"self": f"{SESSIONS_PATH}/{session.id}"},
        }

    async def _list_emails(self, request: web.Request) -> web.Response:
        d = self._double
        d._authorize(request)
        try:
            page = _Pagination.from_query(request.query)
        except ValueError as exc:
            return _error_response(400, *exc.args)
        wanted = request.query.get("filter[email]")
        owner = request.query.get("filter[user]")
        with d._lock:
            if owner is not None and owner not in self._users:
                return _error_response(404, f"User ID {owner} not found")
            matching = [
                e
                for e in sorted(self._emails.values(), key=lambda e: e.id)
                if (wanted is None or e.email.casefold() == wanted.casefold())
                and (owner is None or e.user_id == owner)
            ]
            window = [e for e in matching if page.after is None or e.id > page.after]
            edges = window[: page.count]
            data = [
                {
                    "type": "user-email",
                    "id": e.id,
                    "attributes": {
                        "created_at": format_rfc3339(e.created_at),
                        "user_id": e.user_id,
                        "email": e.email,
                    },
                    "links": {"self": f"{USER_EMAILS_PATH}/{e.id}"},
                    "meta": {"page": {"cursor": e.id}},
                }
                for e in edges
            ]
        base = USER_EMAILS_PATH
        links: JsonObject = {
            "self": page.url(base),
            "first": _Pagination(count=page.count).url(base),
            "last": _Pagination(count=page.count, forward=False).url(base),
        }
        if len(window) > page.count:
            links["next"] = dataclasses.replace(page, after=edges[-1].id).url(base)
        answer: JsonObject = {}
        if page.include_count in ("true", "only"):
            answer["meta"] = {"count": len(matching)}
        if page.include_count != "only":
            answer["data"] = data
        answer["links"] = links
        return web.json_response(answer)

    def _found(self, request: web.Request, store: dict[str, Stored], missing: str) -> Stored:
        """The authorized request's `{id}` looked up in `store` (call under the lock), or 404."""
        self._double._authorize(request)
        key = self._double._path_id(request)
        found = store.get(key)
        if found is None:
            raise _Reply(_error_response(404, missing.format(id=key)))
        return found

    async def _get_user(self, request: web.Request) -> web.Response:
        with self._double._lock:
            user = self._found(request, self._users, "User ID {id} not found")
            return _single(self._user_resource(user), f"{USERS_PATH}/{user.id}")

    async def _user_by_name(self, request: web.Request) -> web.Response:
        d = self._double
        d._authorize(request)
        username = request.match_info["username"]
        with d._lock:
            user = next((u for u in self._users.values() if u.username == username), None)
            if user is None:
                return _error_response(404, f"User with username {username!r} not found")
            return _single(self._user_resource(user), f"{USERS_PATH}/by-username/{username}")

    async def _create_session(self, request: web.Request) -> web.Response:
        d = self._double
        d._authorize(request)
        body = await d._json_body(
            request,
            SESSIONS_PATH,
            {"actor_user_id": "a string", "human_name": "a string", "scope": "a string"},
        )
        scope = body.get("scope")
        expires_in = body.get("expires_in")
        if not isinstance(scope, str) or not all(_SCOPE_TOKEN.match(t) for t in scope.split(" ")):
            return _error_response(400, "Invalid scope")
        with d._lock:
            actor = self._users.get(str(body.get("actor_user_id")))
            if actor is None:
                return _error_response(404, "User not found")
            if actor.deactivated_at is not None:
                return _error_response(410, "User is deactivated")
            username = actor.username
        token = self.mint(username, scope)  # may talk to a real Synapse: outside the lock
        with d._lock:
            now = d.now()
            session = StoredSession(
                id=d._ulids.new(now),
                actor_user_id=actor.id,
                human_name=str(body.get("human_name")),
                scope=scope,
                created_at=now,
                access_token=token,
                expires_at=None
                if expires_in is None
                else now + dt.timedelta(seconds=int(expires_in)),
            )
            self._sessions[session.id] = session
            resource = self._session_resource(session, with_token=True)
            return _single(resource, f"{SESSIONS_PATH}/{session.id}", status=201)

    async def _get_session(self, request: web.Request) -> web.Response:
        with self._double._lock:
            session = self._found(request, self._sessions, SESSION_MISSING)
            resource = self._session_resource(session, with_token=False)
            return _single(resource, f"{SESSIONS_PATH}/{session.id}")

    async def _revoke_session(self, request: web.Request) -> web.Response:
        with self._double._lock:
            session = self._found(request, self._sessions, SESSION_MISSING)
            if session.revoked_at is not None:
                return _error_response(
                    409, f"Personal session with ID {session.id} is already revoked"
                )
            session.revoked_at = self._double.now()
            token = session.access_token
            resource = self._session_resource(session, with_token=False)
        self.on_revoke(token)
        return _single(resource, f"{SESSIONS_PATH}/{session.id}/revoke")
