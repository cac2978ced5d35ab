"""The MAS token backend: a typed client for the Admin API's user registration tokens.

`MasAdminClient` speaks HTTP to `/api/admin/v1/user-registration-tokens` over one injected
`httpx.AsyncClient` (whose lifetime and timeouts belong to the caller), parses MAS's JSON:API
envelopes into pydantic models, maps every failure onto our error tree and reports each request
(endpoint, method, outcome, seconds) to an observer, the metrics. `MasTokenBackend` implements
`TokenBackend` on top of it and absorbs MAS's non-idempotent corners: 409 (or 500) on a repeated
create, 400 on a repeated revoke or unrevoke. Token values stay `SecretStr`; no message ever
includes a request body.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

from matrix_invite_operator.backends import AccountLookup, TokenState
from matrix_invite_operator.backends.answers import describe_body, is_web_page, parse_answer
from matrix_invite_operator.backends.oauth import retry_after_seconds
from matrix_invite_operator.backends.transport import (
    SERVER_ERROR_RETRY_AFTER,
    UNREACHABLE_RETRY_AFTER,
    no_answer,
    plain_text,
    scrubbed,
)
from matrix_invite_operator.errors import (
    BackendAuthError,
    BackendMisdirected,
    BackendRejected,
    BackendUnavailable,
    ConfigurationError,
    OperatorError,
    TokenConflict,
    TokenNotFound,
)

ADMIN_API_PREFIX = "/api/admin/v1"

ULID_PATTERN = r"^[0123456789ABCDEFGHJKMNPQRSTVWXYZ]{26}$"

# A token's last use and the account's creation differ by about a millisecond (FACTS); seconds
# leave room for a slow database without matching a sign-up from another day.
ACCOUNT_MATCH_TOLERANCE = dt.timedelta(seconds=30)


class Unset(enum.Enum):
    """Marks an update field to leave alone (as opposed to None, which clears it)."""

    UNSET = "UNSET"


UNSET = Unset.UNSET


class Endpoint(enum.StrEnum):
    """Admin API endpoints as path templates below the prefix: the `endpoint` metric label."""

    TOKENS = "/user-registration-tokens"
    ONE = "/user-registration-tokens/{id}"
    REVOKE = "/user-registration-tokens/{id}/revoke"
    UNREVOKE = "/user-registration-tokens/{id}/unrevoke"
    VERSION = "/version"
    SITE_CONFIG = "/site-config"
    UPSTREAM_PROVIDERS = "/upstream-oauth-providers"
    USER_EMAILS = "/user-emails"
    USER = "/users/{id}"
    USER_BY_NAME = "/users/by-username/{username}"
    PERSONAL_SESSIONS = "/personal-sessions"
    PERSONAL_SESSION_REVOKE = "/personal-sessions/{id}/revoke"


class RequestOutcome(enum.StrEnum):
    """How one Admin API request ended, as counted and reported to `on_request`."""

    OK = "ok"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    INVALID_RESPONSE = "invalid_response"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    AUTH_FAILED = "auth_failed"


RequestObserver: TypeAlias = Callable[[str, str, str, float], None]
"""Called after each request with (endpoint template, method, outcome, seconds)."""


class MasUnavailable(BackendUnavailable):
    """MAS did not answer usefully; says whether the request may have taken effect anyway."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        status: int | None = None,
        may_have_taken_effect: bool = True,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.may_have_taken_effect = may_have_taken_effect


# --- Admin API resource models --------------------------------------------------------------


class _MasModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


_Model = TypeVar("_Model", bound=_MasModel)


class SelfLinks(_MasModel):
    self_: str = Field(alias="self")


class RegistrationTokenAttributes(_MasModel):
    # The spec requires only these four; the rest may be left out, which means null.
    token: SecretStr
    valid: bool
    times_used: int
    created_at: AwareDatetime
    usage_limit: int | None = None
    last_used_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    revoked_at: AwareDatetime | None = None


class RegistrationToken(_MasModel):
    """One `user-registration_token` resource as MAS returns it."""

    type: Literal["user-registration_token"]
    id: str = Field(pattern=ULID_PATTERN)
    attributes: RegistrationTokenAttributes
    links: SelfLinks

    def to_state(self) -> TokenState:
        a = self.attributes
        return TokenState(
            id=self.id,
            token=a.token,
            valid=a.valid,
            usage_limit=a.usage_limit,
            times_used=a.times_used,
            created_at=a.created_at,
            last_used_at=a.last_used_at,
            expires_at=a.expires_at,
            revoked_at=a.revoked_at,
        )


class RegistrationTokenResponse(_MasModel):
    data: RegistrationToken
    links: SelfLinks


class PaginationLinks(_MasModel):
    self_: str = Field(alias="self")
    next: str | None = None


class PaginationMeta(_MasModel):
    count: int | None = None


class _ListPage(_MasModel):
    links: PaginationLinks


_Page = TypeVar("_Page", bound=_ListPage)


class RegistrationTokenPage(_ListPage):
    data: list[RegistrationToken] | None = None
    meta: PaginationMeta | None = None


class VersionResponse(_MasModel):
    version: str


class SiteConfig(_MasModel):
    """What `GET /site-config` says about sign-up. Older MAS leaves out newer flags."""

    server_name: str
    password_registration_enabled: bool
    password_registration_email_required: bool = True
    # MAS 1.19+; older MAS knows only the deprecated `registration_token_required`.
    password_registration_token_required: bool | None = None
    registration_token_required: bool = False
    captcha_enabled: bool = False

    @property
    def token_required(self) -> bool:
        """Whether a password sign-up needs a registration token (either key, as MAS ORs them)."""
        return bool(self.password_registration_token_required) or self.registration_token_required


class UpstreamProviderAttributes(_MasModel):
    human_name: str | None = None
    issuer: str | None = None
    disabled_at: AwareDatetime | None = None
    registration_token_required: bool


class UpstreamProvider(_MasModel):
    """One upstream OAuth 2.0 provider (an `upstream_oauth2.providers` entry) as MAS lists it."""

    id: str = Field(pattern=ULID_PATTERN)
    attributes: UpstreamProviderAttributes

    @property
    def name(self) -> str:
        a = self.attributes
        return a.human_name or a.issuer or self.id


class UpstreamProviderPage(_ListPage):
    data: list[UpstreamProvider] | None = None


class UserEmailAttributes(_MasModel):
    user_id: str = Field(pattern=ULID_PATTERN)
    email: str
    created_at: AwareDatetime


class UserEmail(_MasModel):
    id: str
    attributes: UserEmailAttributes


class UserEmailPage(_MasModel):
    data: list[UserEmail] | None = None


class UserAttributes(_MasModel):
    username: str
    created_at: AwareDatetime
    deactivated_at: AwareDatetime | None = None


class User(_MasModel):
    id: str = Field(pattern=ULID_PATTERN)
    attributes: UserAttributes


class UserResponse(_MasModel):
    data: User


class PersonalSessionAttributes(_MasModel):
    # Only the create answer carries the token; it is never shown again.
    access_token: SecretStr | None = None
    expires_at: AwareDatetime | None = None
    revoked_at: AwareDatetime | None = None


class PersonalSession(_MasModel):
    id: str = Field(pattern=ULID_PATTERN)
    attributes: PersonalSessionAttributes


class PersonalSessionResponse(_MasModel):
    data: PersonalSession


# --- the client ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Call:
    method: str
    endpoint: Endpoint
    path: str
    token_id: str | None = None
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None
    # The token value sent in the body: scrubbed from any error text MAS echoes back.
    secret: str | None = None
    # What a 404 means for a call about something other than a token (None: a missing API).
    missing: str | None = None


class MasAdminClient:
    """Typed calls to MAS's registration token endpoints over a caller-owned httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"MAS base URL must be http(s)://..., got {base_url!r}")
        self._http = http
        self._api = base_url.rstrip("/") + ADMIN_API_PREFIX
        self._auth = auth
        self._on_request = on_request

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api={self._api!r})"

    @property
    def auth(self) -> httpx.Auth | None:
        return self._auth

    async def server_version(self) -> str:
        call = _Call("GET", Endpoint.VERSION, Endpoint.VERSION)
        return (await self._send(call, VersionResponse)).version

    async def site_config(self) -> SiteConfig:
        call = _Call("GET", Endpoint.SITE_CONFIG, Endpoint.SITE_CONFIG)
        return await self._send(call, SiteConfig)

    async def enabled_upstream_providers(self, page_size: int = 100) -> list[UpstreamProvider]:
        """Every upstream provider MAS offers on its login and sign-up pages."""
        params = {"filter[enabled]": "true", "count": "false"}
        endpoint = Endpoint.UPSTREAM_PROVIDERS
        return [
            provider
            async for page in self._pages(endpoint, params, page_size, UpstreamProviderPage)
            for provider in page.data or []
        ]

    async def create_token(
        self,
        token: SecretStr | None = None,
        *,
        usage_limit: int | None = None,
        expires_at: dt.datetime | None = None,
    ) -> RegistrationToken:
        """POST a new token. Left-out limit/expiry mean unlimited/never; no token = MAS picks."""
        body: dict[str, Any] = {}
        secret = None
        if token is not None:
            secret = token.get_secret_value()
            body["token"] = secret
        if usage_limit is not None:
            body["usage_limit"] = usage_limit
        if expires_at is not None:
            body["expires_at"] = _mas_time(expires_at)
        call = _Call("POST", Endpoint.TOKENS, Endpoint.TOKENS, body=body, secret=secret)
        return await self._single(call)

    async def get_token(self, token_id: str) -> RegistrationToken:
        call = _Call("GET", Endpoint.ONE, _token_path(token_id), token_id=token_id)
        return await self._single(call)

    async def list_tokens(self, page_size: int = 100) -> AsyncIterator[RegistrationToken]:
        """Every token, page by page."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        # The total would cost MAS a COUNT query per page and we never use it.
        params = {"count": "false"}
        async for page in self._pages(Endpoint.TOKENS, params, page_size, RegistrationTokenPage):
            for token in page.data or []:
                yield token

    async def newest_tokens(self, count: int) -> list[RegistrationToken]:
        """The `count` most recently created tokens, in one request (`page[last]`: MAS orders
        by id, which is the creation time)."""
        if count < 1:
            raise ValueError("count must be at least 1")
        params = {"count": "false", "page[last]": str(count)}
        call = _Call("GET", Endpoint.TOKENS, Endpoint.TOKENS, params=params)
        return (await self._send(call, RegistrationTokenPage)).data or []

    async def _pages(
        self,
        endpoint: Endpoint,
        params: Mapping[str, str],
        page_size: int,
        model: type[_Page],
    ) -> AsyncIterator[_Page]:
        """Each page of a list, following `links.next` by its `page[after]` cursor."""
        after: str | None = None
        while True:
            page_params = {**params, "page[first]": str(page_size)}
            if after is not None:
                page_params["page[after]"] = after
            call = _Call("GET", endpoint, endpoint, params=page_params)
            page = await self._send(call, model)
            yield page
            following = _cursor_after(page.links.next)
            if following is None:
                return
            if following == after:
                raise BackendRejected(
                    f"MAS's list at {endpoint} points its next page at the page just read: "
                    "stopping instead of looping"
                )
            after = following

    async def update_token(
        self,
        token_id: str,
        *,
        usage_limit: int | Unset | None = UNSET,
        expires_at: dt.datetime | Unset | None = UNSET,
    ) -> RegistrationToken:
        """PUT as a merge patch: UNSET leaves a field alone, None clears it."""
        body: dict[str, Any] = {}
        if not isinstance(usage_limit, Unset):
            body["usage_limit"] = usage_limit
        if not isinstance(expires_at, Unset):
            body["expires_at"] = None if expires_at is None else _mas_time(expires_at)
        call = _Call("PUT", Endpoint.ONE, _token_path(token_id), token_id=token_id, body=body)
        return await self._single(call)

    async def revoke_token(self, token_id: str) -> RegistrationToken:
        call = _Call("POST", Endpoint.REVOKE, _token_path(token_id) + "/revoke", token_id=token_id)
        return await self._single(call)

    async def unrevoke_token(self, token_id: str) -> RegistrationToken:
        call = _Call(
            "POST",
            Endpoint.UNREVOKE,
            _token_path(token_id) + "/unrevoke",
            token_id=token_id,
        )
        return await self._single(call)

    # --- users and personal sessions (onboarding) ---------------------------------------------

    async def user_emails(self, email: str) -> list[UserEmail]:
        """The address records matching `email` (MAS ignores case; an address has one owner)."""
        params = {"filter[email]": email, "page[first]": "10", "count": "false"}
        call = _Call("GET", Endpoint.USER_EMAILS, Endpoint.USER_EMAILS, params=params)
        return (await self._send(call, UserEmailPage)).data or []

    async def get_user(self, user_id: str) -> User:
        path = f"/users/{_ulid(user_id)}"
        call = _Call("GET", Endpoint.USER, path, missing=f"MAS has no user with id {user_id}")
        return (await self._send(call, UserResponse)).data

    async def user_by_username(self, username: str) -> User:
        path = f"/users/by-username/{quote(username, safe='')}"
        call = _Call(
            "GET", Endpoint.USER_BY_NAME, path, missing=f"MAS has no user named {username!r}"
        )
        return (await self._send(call, UserResponse)).data

    async def create_personal_session(
        self, actor_user_id: str, *, human_name: str, scope: str, expires_in: int
    ) -> PersonalSession:
        body = {
            "actor_user_id": actor_user_id,
            "human_name": human_name,
            "scope": scope,
            "expires_in": expires_in,
        }
        call = _Call(
            "POST",
            Endpoint.PERSONAL_SESSIONS,
            Endpoint.PERSONAL_SESSIONS,
            body=body,
            missing=f"MAS has no user with id {actor_user_id} to act as",
        )
        return (await self._send(call, PersonalSessionResponse)).data

    async def revoke_personal_session(self, session_id: str) -> None:
        """Revoke; already revoked (409) counts as done."""
        path = f"/personal-sessions/{_ulid(session_id)}/revoke"
        call = _Call(
            "POST", Endpoint.PERSONAL_SESSION_REVOKE, path, missing="personal session is gone"
        )
        try:
            await self._send(call, PersonalSessionResponse)
        except SessionAlreadyRevoked:
            return

    # --- plumbing -----------------------------------------------------------------------------

    async def _single(self, call: _Call) -> RegistrationToken:
        return (await self._send(call, RegistrationTokenResponse)).data

    async def _send(self, call: _Call, model: type[_Model]) -> _Model:
        started = time.perf_counter()
        outcome = RequestOutcome.INVALID_RESPONSE
        try:
            try:
                response = await self._http.request(
                    call.method,
                    self._api + call.path,
                    params=call.params,
                    json=call.body,
                    headers={"Accept": "application/json"},
                    auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.RequestError as exc:
                timed_out = isinstance(exc, httpx.TimeoutException)
                outcome = RequestOutcome.TIMEOUT if timed_out else RequestOutcome.CONNECTION_ERROR
                failure = no_answer(
                    exc,
                    backend="MAS",
                    what=f"{call.method} {call.endpoint}",
                    ca_setting="MATRIX_INVITE_MAS_CA_BUNDLE",
                )
                raise MasUnavailable(
                    failure.message,
                    retry_after=UNREACHABLE_RETRY_AFTER,
                    may_have_taken_effect=failure.may_have_taken_effect,
                ) from exc
            except OperatorError:
                # The auth flow failed before the API call went out (token endpoint trouble).
                outcome = RequestOutcome.AUTH_FAILED
                raise
            outcome = _outcome_of(response.status_code)
            _raise_for_status(call, response)
            outcome = RequestOutcome.INVALID_RESPONSE
            parsed = _parse(model, response, call)
            outcome = RequestOutcome.OK
            return parsed
        finally:
            seconds = time.perf_counter() - started
            labels = (call.endpoint.value, call.method, outcome.value)
            if self._on_request is not None:
                self._on_request(*labels, seconds)


def _raise_for_status(call: _Call, response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    what = f"{call.method} {call.endpoint}"
    reason = _error_text(response, call.secret)
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        # MAS says "no such token" in its JSON error envelope; a bare 404 (or a page) comes from
        # something that is not the Admin API, and must not read as "the token is gone".
        if status == httpx.codes.NOT_FOUND and call.token_id is not None and _mas_error(response):
            raise TokenNotFound(f"MAS has no registration token with id {call.token_id}") from exc
        if status == httpx.codes.NOT_FOUND and call.missing is not None and _mas_error(response):
            raise BackendRejected(f"{call.missing} ({reason})") from exc
        if status == httpx.codes.CONFLICT and call.endpoint is Endpoint.PERSONAL_SESSION_REVOKE:
            raise SessionAlreadyRevoked(reason) from exc
        if status == httpx.codes.NOT_FOUND:
            raise BackendMisdirected(
                f"MAS answered {what} with 404 ({describe_body(response)}): the Admin API is not "
                "at this URL. Check MATRIX_INVITE_MAS_URL (host and port) and that the listener "
                "it points at serves the adminapi resource"
            ) from exc
        if status == httpx.codes.CONFLICT:
            raise TokenConflict("MAS already holds a registration token with this value") from exc
        if status in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
            raise BackendAuthError(
                f"MAS refused our access token for {what} ({status}: {reason}): check that "
                "the operator's client is listed in policy.data.admin_clients"
            ) from exc
        if status == httpx.codes.TOO_MANY_REQUESTS or status >= 500:
            raise MasUnavailable(
                f"MAS answered {what} with {status}: {reason}",
                retry_after=retry_after_seconds(response, SERVER_ERROR_RETRY_AFTER),
                status=status,
            ) from exc
        if is_web_page(response):
            raise BackendMisdirected(
                f"MAS answered {what} with {status} and a web page, not the Admin API's JSON: "
                "check MATRIX_INVITE_MAS_URL (host and port)"
            ) from exc
        raise BackendRejected(f"MAS rejected {what} with {status}: {reason}") from exc
    # httpx treats 1xx as no error; MAS never sends one as a final answer.
    raise BackendRejected(f"MAS answered {what} with an unexpected {status}")


def _mas_error(response: httpx.Response) -> bool:
    """Whether the body is MAS's error envelope, `{"errors": [...]}`."""
    try:
        document = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(document, dict) and isinstance(document.get("errors"), list)


def _outcome_of(status: int) -> RequestOutcome:
    if 200 <= status < 300:
        return RequestOutcome.OK
    return _OUTCOME_BY_STATUS.get(
        status, RequestOutcome.SERVER_ERROR if status >= 500 else RequestOutcome.REJECTED
    )


_OUTCOME_BY_STATUS = {
    404: RequestOutcome.NOT_FOUND,
    409: RequestOutcome.CONFLICT,
    401: RequestOutcome.UNAUTHORIZED,
    403: RequestOutcome.UNAUTHORIZED,
    429: RequestOutcome.RATE_LIMITED,
}


def _mas_time(when: dt.datetime) -> str:
    """An aware datetime as RFC 3339 in UTC, the form MAS's `DateTime<Utc>` parses."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("MAS timestamps must be timezone-aware")
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class SessionAlreadyRevoked(BackendRejected):
    """409 to revoking a personal session: it is revoked already."""


def _same_address(record: UserEmail, email: str) -> bool:
    # MAS matches the filter ignoring case; so do we, and nothing looser.
    return record.attributes.email.casefold() == email.casefold()


def _ulid(value: str) -> str:
    if not re.fullmatch(ULID_PATTERN, value):
        raise BackendRejected(f"{value!r} is not a MAS id (expected a ULID)")
    return value


def _token_path(token_id: str) -> str:
    # Anything but a ULID would change the path's meaning; MAS would answer 400 for it anyway.
    if not token_id or not token_id.isalnum() or not token_id.isascii():
        raise BackendRejected(f"{token_id!r} is not a MAS token id (expected a ULID)")
    return f"{Endpoint.TOKENS}/{token_id}"


def _parse(model: type[_Model], response: httpx.Response, call: _Call) -> _Model:
    return parse_answer(
        model,
        response,
        backend="MAS",
        what=f"{call.method} {call.endpoint}",
        hint="does MATRIX_INVITE_MAS_URL (host and port) point at MAS's Admin API?",
    )


def _cursor_after(next_link: str | None) -> str | None:
    if not next_link:
        return None
    values = parse_qs(urlsplit(next_link).query).get("page[after]")
    if not values:
        raise BackendRejected("MAS's list has a next page link without page[after]")
    return values[-1]


def _error_text(response: httpx.Response, secret: str | None) -> str:
    text: str
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("errors"), list):
        titles = [
            e["title"]
            for e in document["errors"]
            if isinstance(e, dict) and isinstance(e.get("title"), str)
        ]
        text = ": ".join(titles) or "no error title"
    else:
        text = plain_text(response)
    return scrubbed(text, secret)


# --- the TokenBackend ---------------------------------------------------------------------


class MasTokenBackend:
    """`TokenBackend` over MAS: every method is safe to repeat."""

    name = "MAS"

    def __init__(
        self,
        client: MasAdminClient,
        *,
        page_size: int = 100,
        server_name: Callable[[], str] | None = None,
        match_tolerance: dt.timedelta = ACCOUNT_MATCH_TOLERANCE,
    ) -> None:
        self._client = client
        self._page_size = page_size
        self._server_name = server_name
        self._tolerance = match_tolerance

    @property
    def client(self) -> MasAdminClient:
        return self._client

    def _require_server_name(self) -> str:
        # Matrix IDs need it; it may come from MAS's site-config, read after startup.
        if self._server_name is None:
            raise ConfigurationError("the MAS backend was built without a server name")
        return self._server_name()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r})"

    async def issue(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        try:
            created = await self._client.create_token(
                token, usage_limit=usage_limit, expires_at=expires_at
            )
        except TokenConflict as conflict:
            existing = await self._find_by_value(token)
            if existing is None:
                raise BackendUnavailable(
                    "MAS reported the token as existing but it is not in the token list yet",
                    retry_after=5.0,
                ) from conflict
            return existing
        except MasUnavailable as failure:
            # A lost answer, or MAS's 500 for two simultaneous creates of one value, may
            # hide a token that now exists: look once before giving up.
            if not failure.may_have_taken_effect:
                raise
            try:
                existing = await self._find_by_value(token)
            except OperatorError:
                raise failure  # noqa: B904 - the create failure is the one worth reporting
            if existing is None:
                raise
            return existing
        return created.to_state()

    async def read(self, token_id: str) -> TokenState | None:
        try:
            return (await self._client.get_token(token_id)).to_state()
        except TokenNotFound:
            return None

    async def list_all(self) -> AsyncIterator[TokenState]:
        async for token in self._client.list_tokens(page_size=self._page_size):
            yield token.to_state()

    async def list_newest(self, count: int) -> list[TokenState]:
        return [token.to_state() for token in await self._client.newest_tokens(count)]

    async def update(
        self, token_id: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        updated = await self._client.update_token(
            token_id, usage_limit=usage_limit, expires_at=expires_at
        )
        return updated.to_state()

    async def revoke(self, token_id: str) -> TokenState | None:
        try:
            return (await self._client.revoke_token(token_id)).to_state()
        except TokenNotFound:
            return None
        except BackendRejected:
            # MAS answers 400 to revoking a revoked token; that is the state we wanted.
            current = await self.read(token_id)
            if current is None:
                return None
            if current.revoked:
                return current
            raise

    async def unrevoke(self, token_id: str) -> TokenState:
        try:
            return (await self._client.unrevoke_token(token_id)).to_state()
        except BackendRejected:
            current = await self.read(token_id)
            if current is None:
                raise TokenNotFound(f"MAS has no registration token with id {token_id}") from None
            if not current.revoked:
                return current
            raise

    async def find_account(
        self, email: str, *, used_at: dt.datetime | None, not_before: dt.datetime
    ) -> AccountLookup:
        """MAS does not say which account a token created: the account holding the invited
        address whose creation is within seconds of the token's last use (FACTS, "Who used a
        token"). One request for the address, one per owner (an address has at most one)."""
        records = [r for r in await self._client.user_emails(email) if _same_address(r, email)]
        if not records:
            return AccountLookup(None, f"no account in MAS holds the address {email}")
        for record in records:
            user = await self._client.get_user(record.attributes.user_id)
            user_id = f"@{user.attributes.username}:{self._require_server_name()}"
            created = user.attributes.created_at
            if used_at is not None and abs(created - used_at) <= self._tolerance:
                return AccountLookup(user_id, f"{user_id} signed up with {email}")
            if used_at is None and created >= not_before:
                return AccountLookup(user_id, f"{user_id} signed up with {email}")
        return AccountLookup(
            None,
            f"{email} belongs to {user_id}, created at {_mas_time(created)}, not when the token "
            f"was used ({_mas_time(used_at) if used_at else 'unknown'}): someone else signed up",
        )

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""

    async def _find_by_value(self, token: SecretStr) -> TokenState | None:
        wanted = token.get_secret_value().encode()
        async for candidate in self._client.list_tokens(page_size=self._page_size):
            value = candidate.attributes.token.get_secret_value().encode()
            if secrets.compare_digest(value, wanted):
                return candidate.to_state()
        return None
