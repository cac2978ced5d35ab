"""The Synapse token backend: registration tokens through Synapse's admin API.

`SynapseAdminClient` speaks HTTP to `/_synapse/admin/v1/registration_tokens` over one injected
`httpx.AsyncClient` (whose lifetime, TLS and timeouts belong to the caller) with a server
admin's access token, parses the answers into pydantic models and maps every failure onto our
error tree. `SynapseTokenBackend` implements `TokenBackend` on top of it.

Synapse's semantics, mapped honestly:
- A token has no id: the token string is the key. Our `tokenId` is shown in status, so it must
  not reveal the token: it is `syn-` + the first 24 hex digits of the value's SHA-256. The
  backend keeps an in-memory map id → value, learned from `issue` and `list_all`; an id it does
  not know (after a restart) makes it list once to rebuild the map.
- `completed` is `times_used`; `pending` (registrations past the token stage but unfinished) is
  `pending`. `valid` is computed as Synapse checks it: pending + completed below the limit and
  the expiry ahead.
- There is no revocation: `revoke` deletes the token and answers with the state it had, marked
  revoked; afterwards the token is unknown. `unrevoke` creates it again with the value and limits
  remembered at deletion (the reconciler itself re-issues a deleted token from the Secret).
- Expiry is milliseconds since the epoch, and Synapse refuses an expiry in the past.
- A duplicate create answers 400 `M_INVALID_PARAM`: `issue` then looks the token up and returns
  it, so issuing is idempotent.
Token values stay `SecretStr`; Synapse echoes tokens in some error texts, which are scrubbed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from matrix_invite_operator.backends import AccountLookup, TokenState
from matrix_invite_operator.backends.answers import is_web_page, parse_answer
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
    TokenNotFound,
)
from matrix_invite_operator.formats import retry_after_seconds
from matrix_invite_operator.settings import SecretSource, current_secret

TOKENS_PATH = "/_synapse/admin/v1/registration_tokens"
THREEPID_USER_PATH = "/_synapse/admin/v1/threepid/email/users/"
USER_PATH = "/_synapse/admin/v2/users/"
TOKEN_ID_PREFIX = "syn-"  # noqa: S105 - a prefix, not a credential
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")

ACCOUNT_MATCH_TOLERANCE = dt.timedelta(seconds=30)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


class TokenPathRedaction(logging.Filter):
    """Blanks the token in `.../registration_tokens/<token>` in any log line.

    Synapse's admin API takes the token in the URL path, and httpx logs every request's URL at
    INFO (on with `--verbose`). Installed on the log handlers, it covers every logger.
    """

    _PATH = re.compile(r"(registration_tokens/)[^/?#\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._PATH.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def token_id_for(token: SecretStr) -> str:
    """Our id for a Synapse token: stable, short, and no help in guessing the token."""
    digest = hashlib.sha256(token.get_secret_value().encode()).hexdigest()
    return TOKEN_ID_PREFIX + digest[:24]


def to_millis(moment: dt.datetime) -> int:
    """An aware datetime as whole milliseconds since the epoch (sub-millisecond parts dropped)."""
    if moment.utcoffset() is None:
        raise ValueError("Synapse timestamps must be timezone-aware")
    return (moment - _EPOCH) // _MILLISECOND


def from_millis(millis: int) -> dt.datetime:
    return _EPOCH + millis * _MILLISECOND


# --- admin API models ----------------------------------------------------------------------


class _SynapseModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


_Model = TypeVar("_Model", bound=_SynapseModel)


class RegistrationToken(_SynapseModel):
    """One registration token as Synapse's admin API returns it."""

    token: SecretStr = Field(min_length=1, max_length=64)
    uses_allowed: int | None = Field(None, ge=0)
    pending: int = Field(0, ge=0)
    completed: int = Field(0, ge=0)
    expiry_time: int | None = None

    @property
    def id(self) -> str:
        return token_id_for(self.token)

    @property
    def expires_at(self) -> dt.datetime | None:
        return from_millis(self.expiry_time) if self.expiry_time is not None else None

    def valid_at(self, now: dt.datetime) -> bool:
        """Synapse's own check: a use left (pending ones count) and not expired."""
        uses_left = self.uses_allowed is None or self.pending + self.completed < self.uses_allowed
        return uses_left and (self.expiry_time is None or self.expiry_time > to_millis(now))

    def to_state(self, now: dt.datetime) -> TokenState:
        return TokenState(
            id=self.id,
            token=self.token,
            valid=self.valid_at(now),
            usage_limit=self.uses_allowed,
            times_used=self.completed,
            pending=self.pending,
            expires_at=self.expires_at,
        )


class RegistrationTokenList(_SynapseModel):
    registration_tokens: list[RegistrationToken]


class ThreepidUser(_SynapseModel):
    user_id: str


class UserAccount(_SynapseModel):
    name: str
    # In seconds since the epoch (unlike the token's expiry_time, in milliseconds).
    creation_ts: int | None = None
    deactivated: bool = False


# --- the client -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Call:
    method: str
    endpoint: str  # a path template, for messages: never a token value
    path: str
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None
    secret: str | None = None  # the token this call is about: scrubbed from error texts
    absolute: bool = False  # `path` is below the server's root, not below TOKENS_PATH


class SynapseAdminClient:
    """Typed calls to Synapse's registration token admin API over a caller-owned httpx client."""

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, admin_token: SecretStr | SecretSource
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"Synapse base URL must be http(s)://..., got {base_url!r}")
        self._http = http
        self._root = base_url.rstrip("/")
        self._api = self._root + TOKENS_PATH
        self._admin_token = admin_token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api={self._api!r})"

    async def create_token(
        self, token: SecretStr, *, uses_allowed: int | None, expiry_time: int | None
    ) -> RegistrationToken:
        value = token.get_secret_value()
        body = {"token": value, "uses_allowed": uses_allowed, "expiry_time": expiry_time}
        call = _Call("POST", "/new", "/new", body=body, secret=value)
        return _parse(RegistrationToken, *await self._send(call))

    async def get_token(self, token: SecretStr) -> RegistrationToken:
        return _parse(RegistrationToken, *await self._send(_one("GET", token)))

    async def list_tokens(self) -> list[RegistrationToken]:
        answer = _parse(RegistrationTokenList, *await self._send(_Call("GET", "", "")))
        return answer.registration_tokens

    async def update_token(self, token: SecretStr, **fields: int | None) -> RegistrationToken:
        """PUT only the given fields (`uses_allowed`, `expiry_time`); None clears one."""
        call = dataclasses.replace(_one("PUT", token), body=fields)
        return _parse(RegistrationToken, *await self._send(call))

    async def delete_token(self, token: SecretStr) -> None:
        await self._send(_one("DELETE", token))

    async def user_with_email(self, email: str) -> str | None:
        """The user holding this email address (Synapse's threepid lookup), or None."""
        # Synapse stores addresses in canonical form: lower case.
        path = THREEPID_USER_PATH + quote(email.lower(), safe="")
        call = _Call("GET", THREEPID_USER_PATH + "{address}", path, absolute=True)
        try:
            return _parse(ThreepidUser, *await self._send(call)).user_id
        except TokenNotFound:
            return None

    async def user(self, user_id: str) -> UserAccount:
        call = _Call("GET", USER_PATH + "{user_id}", USER_PATH + quote(user_id), absolute=True)
        return _parse(UserAccount, *await self._send(call))

    async def _send(self, call: _Call) -> tuple[httpx.Response, str]:
        """The successful response and the request as words for messages; else our error."""
        what = f"{call.method} {'' if call.absolute else TOKENS_PATH}{call.endpoint}"
        # Read per request: a rotated Secret takes effect without a restart.
        admin_token = current_secret(self._admin_token).get_secret_value()
        try:
            response = await self._http.request(
                call.method,
                (self._root if call.absolute else self._api) + call.path,
                params=call.params,
                json=call.body,
                headers={
                    "Accept": "application/json",
                    "Authorization": f"Bearer {admin_token}",
                },
            )
        except httpx.RequestError as exc:
            failure = no_answer(
                exc, backend="Synapse", what=what, ca_setting="MATRIX_INVITE_SYNAPSE_CA_BUNDLE"
            )
            raise BackendUnavailable(failure.message, retry_after=UNREACHABLE_RETRY_AFTER) from exc
        _raise_for_status(call, what, response)
        return response, what


def _one(method: str, token: SecretStr) -> _Call:
    value = token.get_secret_value()
    # Our alphabet needs no quoting, but a value in the path is quoted all the same.
    return _Call(method, "/{token}", "/" + quote(value, safe=""), secret=value)


def _raise_for_status(call: _Call, what: str, response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    errcode, reason = _error_of(response, call.secret)
    if status == 404 and errcode == "M_NOT_FOUND" and call.secret is not None:
        raise TokenNotFound("Synapse holds no such registration token")
    if status == 404 and errcode == "M_NOT_FOUND" and call.absolute:
        raise TokenNotFound(f"Synapse knows no such {call.endpoint.rsplit('{', 1)[-1][:-1]}")
    if status == 404:
        raise BackendMisdirected(
            f"Synapse answered {what} with 404 ({errcode or 'no errcode'}): check "
            "MATRIX_INVITE_SYNAPSE_URL and that the listener it points at serves the client "
            "resource (the admin API lives there)"
        )
    if status in (401, 403):
        raise BackendAuthError(
            f"Synapse refused the admin access token for {what} ({status} {errcode}: {reason}): "
            "the token in MATRIX_INVITE_SYNAPSE_ADMIN_TOKEN_FILE must be a valid access token of "
            "a server admin"
        )
    if status == 429 or status >= 500:
        raise BackendUnavailable(
            f"Synapse answered {what} with {status}: {reason}",
            retry_after=retry_after_seconds(
                response.headers.get("Retry-After"), SERVER_ERROR_RETRY_AFTER
            ),
        )
    if is_web_page(response):
        raise BackendMisdirected(
            f"Synapse answered {what} with {status} and a web page, not the admin API's JSON: "
            "check MATRIX_INVITE_SYNAPSE_URL (host and port)"
        )
    raise BackendRejected(f"Synapse rejected {what} with {status} {errcode}: {reason}")


def _error_of(response: httpx.Response, secret: str | None) -> tuple[str | None, str]:
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    errcode: str | None = None
    if isinstance(document, dict):
        code = document.get("errcode")
        errcode = code if isinstance(code, str) else None
        error = document.get("error")
        text = error if isinstance(error, str) else "no error text"
    else:
        text = plain_text(response)
    return errcode, scrubbed(text, secret)


def _parse(model: type[_Model], response: httpx.Response, what: str) -> _Model:
    return parse_answer(
        model,
        response,
        backend="Synapse",
        what=what,
        hint="does MATRIX_INVITE_SYNAPSE_URL point at Synapse?",
    )


# --- the TokenBackend -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Known:
    """What we remember of one token: its value, and its limits for a later `unrevoke`."""

    token: SecretStr
    uses_allowed: int | None = None
    expiry_time: int | None = None


class SynapseTokenBackend:
    """`TokenBackend` over Synapse's admin API: every method is safe to repeat."""

    name = "Synapse"

    def __init__(
        self,
        client: SynapseAdminClient,
        *,
        relist_after: float = 30.0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._client = client
        self._known: dict[str, _Known] = {}
        self._listed_at: float | None = None
        self._relist_after = relist_after
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._client!r}, known={len(self._known)})"

    @property
    def client(self) -> SynapseAdminClient:
        return self._client

    async def issue(
        self, token: SecretStr, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        if not TOKEN_PATTERN.match(token.get_secret_value()):
            raise BackendRejected(
                "Synapse only accepts registration tokens of 1 to 64 characters from "
                "[A-Za-z0-9._~-]; the Secret's token is not one"
            )
        expiry_time = to_millis(expires_at) if expires_at is not None else None
        if expiry_time is not None and expiry_time <= to_millis(self._clock()):
            raise BackendRejected(
                "Synapse cannot hold a registration token whose expiry has passed; set "
                "spec.expiresAt or spec.validFor so that the Invitation expires in the future"
            )
        try:
            created = await self._client.create_token(
                token, uses_allowed=usage_limit, expiry_time=expiry_time
            )
        except BackendRejected:
            # 400 M_INVALID_PARAM also means "already exists": then return what exists.
            existing = await self._get(token)
            if existing is None:
                raise
            return existing
        except BackendUnavailable:
            # A lost answer may hide a token that now exists: look once before giving up.
            try:
                existing = await self._get(token)
            except BackendUnavailable:
                existing = None
            if existing is None:
                raise
            return existing
        return self._remember(created)

    async def read(self, token_id: str) -> TokenState | None:
        token = await self._value_of(token_id)
        if token is None:
            return None
        return await self._get(token)

    async def list_all(self) -> AsyncIterator[TokenState]:
        for token in await self._list():
            yield token.to_state(self._clock())

    async def update(
        self, token_id: str, *, usage_limit: int | None, expires_at: dt.datetime | None
    ) -> TokenState:
        token = await self._value_of(token_id)
        current = await self._get(token) if token is not None else None
        if token is None or current is None:
            raise TokenNotFound(f"Synapse has no registration token with id {token_id}")
        # Only what differs: Synapse refuses to (re)set an expiry in the past, even unchanged.
        fields: dict[str, int | None] = {}
        if current.usage_limit != usage_limit:
            fields["uses_allowed"] = usage_limit
        if current.expires_at != expires_at:
            expiry_time = to_millis(expires_at) if expires_at is not None else None
            if expiry_time is not None and expiry_time <= to_millis(self._clock()):
                raise BackendRejected(
                    f"Synapse cannot move token {token_id}'s expiry into the past; to end the "
                    "invitation now, set spec.revoked to true"
                )
            fields["expiry_time"] = expiry_time
        if not fields:
            return current
        try:
            updated = await self._client.update_token(token, **fields)
        except TokenNotFound as exc:
            raise TokenNotFound(f"Synapse has no registration token with id {token_id}") from exc
        return self._remember(updated)

    async def revoke(self, token_id: str) -> TokenState | None:
        """Synapse cannot revoke: delete the token, answer with its last state marked revoked."""
        token = await self._value_of(token_id)
        if token is None:
            return None
        current = await self._get(token)
        if current is None:
            return None  # deleted already: revoked as far as Synapse can tell
        with contextlib.suppress(TokenNotFound):  # deleted meanwhile: the same outcome
            await self._client.delete_token(token)
        return current.model_copy(update={"valid": False, "revoked_at": self._clock()})

    async def unrevoke(self, token_id: str) -> TokenState:
        """Create a deleted token again with the value and limits it had; present = success."""
        known = self._known.get(token_id)
        token = known.token if known is not None else await self._value_of(token_id)
        if token is not None:
            current = await self._get(token)
            if current is not None:
                return current
        if known is None:
            raise TokenNotFound(
                f"Synapse has no registration token with id {token_id}, and its value is not "
                "known here: issue it again from the Secret"
            )
        expires_at = from_millis(known.expiry_time) if known.expiry_time is not None else None
        return await self.issue(known.token, usage_limit=known.uses_allowed, expires_at=expires_at)

    async def find_account(
        self, email: str, *, used_at: dt.datetime | None, not_before: dt.datetime
    ) -> AccountLookup:
        """Synapse's threepid lookup names the owner of the address; Synapse keeps no time of a
        token's use, so the account must merely be younger than the Invitation."""
        user_id = await self._client.user_with_email(email)
        if user_id is None:
            return AccountLookup(None, f"no Synapse account has the address {email}")
        account = await self._client.user(user_id)
        created = (
            from_millis(account.creation_ts * 1000) if account.creation_ts is not None else None
        )
        if created is not None and created < not_before - ACCOUNT_MATCH_TOLERANCE:
            return AccountLookup(
                None,
                f"{email} belongs to {user_id}, created at {created.isoformat()}, before the "
                "invitation: someone else signed up",
            )
        return AccountLookup(user_id, f"{user_id} has the address {email}")

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""

    # --- the id → value map -----------------------------------------------------------------

    def _remember(self, token: RegistrationToken) -> TokenState:
        self._known[token.id] = _Known(token.token, token.uses_allowed, token.expiry_time)
        return token.to_state(self._clock())

    async def _get(self, token: SecretStr) -> TokenState | None:
        try:
            found = await self._client.get_token(token)
        except TokenNotFound:
            return None
        return self._remember(found)

    async def _list(self) -> list[RegistrationToken]:
        tokens = await self._client.list_tokens()
        for token in tokens:
            self._remember(token)
        self._listed_at = time.monotonic()
        return tokens

    async def _value_of(self, token_id: str) -> SecretStr | None:
        """The token behind our id; lists (at most every `relist_after` s) to learn unknown ids."""
        known = self._known.get(token_id)
        if known is not None:
            return known.token
        if not token_id.startswith(TOKEN_ID_PREFIX):
            return None  # not an id this backend made (e.g. a MAS ULID after switching)
        fresh = (
            self._listed_at is not None and time.monotonic() - self._listed_at < self._relist_after
        )
        if not fresh:
            await self._list()
        known = self._known.get(token_id)
        return known.token if known is not None else None
