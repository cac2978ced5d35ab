"""`MasAdminClient`: typed calls to MAS's Admin API over one injected `httpx.AsyncClient`.

Registration tokens (`/api/admin/v1/user-registration-tokens`), the server's version and
site-config, upstream providers, users, their addresses and personal sessions. The HTTP
client's lifetime and timeouts belong to the caller; every request is reported (endpoint,
method, outcome, seconds) to an observer, the metrics. No message ever includes a request body.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from pydantic import SecretStr

from matrix_invite_operator.backends.answers import parse_answer
from matrix_invite_operator.backends.mas.errors import (
    MasUnavailable,
    RequestOutcome,
    SessionAlreadyRevoked,
    outcome_of,
    raise_for_status,
)
from matrix_invite_operator.backends.mas.models import (
    ULID_PATTERN,
    Call,
    Endpoint,
    Model,
    Page,
    PersonalSession,
    PersonalSessionResponse,
    RegistrationToken,
    RegistrationTokenPage,
    RegistrationTokenResponse,
    SiteConfig,
    UpstreamProvider,
    UpstreamProviderPage,
    User,
    UserEmail,
    UserEmailPage,
    UserResponse,
    VersionResponse,
)
from matrix_invite_operator.backends.transport import UNREACHABLE_RETRY_AFTER, no_answer
from matrix_invite_operator.errors import BackendRejected, OperatorError

ADMIN_API_PREFIX = "/api/admin/v1"


class Unset(enum.Enum):
    """Marks an update field to leave alone (as opposed to None, which clears it)."""

    UNSET = "UNSET"


UNSET = Unset.UNSET


RequestObserver: TypeAlias = Callable[[str, str, str, float], None]
"""Called after each request with (endpoint template, method, outcome, seconds)."""


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
        call = Call("GET", Endpoint.VERSION, Endpoint.VERSION)
        return (await self._send(call, VersionResponse)).version

    async def site_config(self) -> SiteConfig:
        call = Call("GET", Endpoint.SITE_CONFIG, Endpoint.SITE_CONFIG)
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
            body["expires_at"] = mas_time(expires_at)
        call = Call("POST", Endpoint.TOKENS, Endpoint.TOKENS, body=body, secret=secret)
        return await self._single(call)

    async def get_token(self, token_id: str) -> RegistrationToken:
        call = Call("GET", Endpoint.ONE, _token_path(token_id), token_id=token_id)
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

    async def newest_tokens(self, page_size: int = 100) -> AsyncGenerator[RegistrationToken, None]:
        """Every token, newest first (MAS orders by id, which grows with creation time): the
        last page (`page[last]`), then the ones before it. A token just created is on the
        first page, whatever the number of tokens."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        before: str | None = None
        while True:
            params = {"count": "false", "page[last]": str(page_size)}
            if before is not None:
                params["page[before]"] = before
            call = Call("GET", Endpoint.TOKENS, Endpoint.TOKENS, params=params)
            page = await self._send(call, RegistrationTokenPage)
            data = page.data or []
            for token in reversed(data):
                yield token
            if not data or page.links.prev is None:
                return
            if data[0].id == before:
                raise BackendRejected(
                    f"MAS's list at {Endpoint.TOKENS} points its previous page at the page just "
                    "read: stopping instead of looping"
                )
            before = data[0].id

    async def _pages(
        self,
        endpoint: Endpoint,
        params: Mapping[str, str],
        page_size: int,
        model: type[Page],
    ) -> AsyncIterator[Page]:
        """Each page of a list, following `links.next` by its `page[after]` cursor."""
        after: str | None = None
        while True:
            page_params = {**params, "page[first]": str(page_size)}
            if after is not None:
                page_params["page[after]"] = after
            call = Call("GET", endpoint, endpoint, params=page_params)
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
            body["expires_at"] = None if expires_at is None else mas_time(expires_at)
        call = Call("PUT", Endpoint.ONE, _token_path(token_id), token_id=token_id, body=body)
        return await self._single(call)

    async def revoke_token(self, token_id: str) -> RegistrationToken:
        call = Call("POST", Endpoint.REVOKE, _token_path(token_id) + "/revoke", token_id=token_id)
        return await self._single(call)

    async def unrevoke_token(self, token_id: str) -> RegistrationToken:
        call = Call(
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
        call = Call("GET", Endpoint.USER_EMAILS, Endpoint.USER_EMAILS, params=params)
        return (await self._send(call, UserEmailPage)).data or []

    async def get_user(self, user_id: str) -> User:
        path = f"/users/{_ulid(user_id)}"
        call = Call("GET", Endpoint.USER, path, missing=f"MAS has no user with id {user_id}")
        return (await self._send(call, UserResponse)).data

    async def user_by_username(self, username: str) -> User:
        path = f"/users/by-username/{quote(username, safe='')}"
        call = Call(
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
        call = Call(
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
        call = Call(
            "POST", Endpoint.PERSONAL_SESSION_REVOKE, path, missing="personal session is gone"
        )
        try:
            await self._send(call, PersonalSessionResponse)
        except SessionAlreadyRevoked:
            return

    # --- plumbing -----------------------------------------------------------------------------

    async def _single(self, call: Call) -> RegistrationToken:
        return (await self._send(call, RegistrationTokenResponse)).data

    async def _send(self, call: Call, model: type[Model]) -> Model:
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
            outcome = outcome_of(response.status_code)
            raise_for_status(call, response)
            outcome = RequestOutcome.INVALID_RESPONSE
            parsed = _parse(model, response, call)
            outcome = RequestOutcome.OK
            return parsed
        finally:
            seconds = time.perf_counter() - started
            labels = (call.endpoint.value, call.method, outcome.value)
            if self._on_request is not None:
                self._on_request(*labels, seconds)


def mas_time(when: dt.datetime) -> str:
    """An aware datetime as RFC 3339 in UTC, the form MAS's `DateTime<Utc>` parses."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("MAS timestamps must be timezone-aware")
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _ulid(value: str) -> str:
    if not re.fullmatch(ULID_PATTERN, value):
        raise BackendRejected(f"{value!r} is not a MAS id (expected a ULID)")
    return value


def _token_path(token_id: str) -> str:
    # Anything but a ULID would change the path's meaning; MAS would answer 400 for it anyway.
    if not token_id or not token_id.isalnum() or not token_id.isascii():
        raise BackendRejected(f"{token_id!r} is not a MAS token id (expected a ULID)")
    return f"{Endpoint.TOKENS}/{token_id}"


def _parse(model: type[Model], response: httpx.Response, call: Call) -> Model:
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
