"""OAuth 2.0 client credentials for the MAS Admin API, as an `httpx.Auth`.

Owns getting, caching and renewing the access token (scope `urn:mas:admin`) that every Admin
API call carries, and turning token endpoint refusals into our error tree. The token endpoint is
either given or discovered once from `/.well-known/openid-configuration`. Token and discovery
requests are yielded from the auth flow, so they go through the caller's `httpx.AsyncClient`
with the same timeouts as the API call that needed them. The client secret stays a
`SecretStr`: it is only unwrapped while building the token request.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import time
from asyncio import Lock
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Literal
from urllib.parse import urljoin

import httpx
from pydantic import SecretStr

from matrix_invite_operator.errors import BackendAuthError, BackendUnavailable, ConfigurationError
from matrix_invite_operator.formats import retry_after_seconds
from matrix_invite_operator.settings import SecretSource, current_secret

ADMIN_SCOPE = "urn:mas:admin"
DISCOVERY_PATH = "/.well-known/openid-configuration"

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]
CLIENT_AUTH_METHODS: tuple[ClientAuthMethod, ...] = ("client_secret_basic", "client_secret_post")

# MAS issues 300 s tokens; a token endpoint that leaves out expires_in gets a short leash.
_LIFETIME_WHEN_UNSTATED = 60.0
_DEFAULT_RETRY_AFTER = 15.0


@dataclasses.dataclass(frozen=True)
class _CachedToken:
    value: SecretStr
    renew_at: float


class ClientCredentialsAuth(httpx.Auth):
    """Bearer auth whose token comes from the client_credentials grant, renewed as needed.

    One instance is shared by all calls; an `asyncio.Lock` makes concurrent calls that find no
    usable token wait for a single renewal instead of each asking the token endpoint. Answers
    from the token endpoint become our errors here; transport failures (timeouts, refused
    connections) surface from `httpx` as for the API call itself, and the caller maps both.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: SecretStr | SecretSource,
        *,
        token_endpoint: str | None = None,
        issuer: str | None = None,  # only used to discover the token endpoint when not given
        client_auth_method: ClientAuthMethod = "client_secret_basic",
        scope: str = ADMIN_SCOPE,
        renew_margin: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not client_id:
            raise ConfigurationError("The MAS client id is empty")
        if not isinstance(client_secret, SecretStr) and not callable(client_secret):
            raise ConfigurationError(
                "The MAS client secret must be passed as a SecretStr or a function returning one"
            )
        # Read once now, so that a missing or empty secret fails at startup.
        if not current_secret(client_secret).get_secret_value():
            raise ConfigurationError(f"The client secret for MAS client {client_id} is empty")
        if token_endpoint is None and issuer is None:
            raise ConfigurationError(
                "Configure the MAS token endpoint, or the MAS issuer/base URL to discover it from"
            )
        if client_auth_method not in CLIENT_AUTH_METHODS:
            raise ConfigurationError(
                f"Unsupported client auth method {client_auth_method!r}: "
                f"use one of {', '.join(CLIENT_AUTH_METHODS)}"
            )
        if client_auth_method == "client_secret_basic" and ":" in client_id:
            # Basic ends the user name at the first colon; MAS's client ids are ULIDs anyway.
            raise ConfigurationError(
                f"The MAS client id {client_id!r} contains a colon, which client_secret_basic "
                "cannot carry: MAS client ids are ULIDs"
            )
        self.client_id = client_id
        self._client_secret = client_secret
        self._token_endpoint = token_endpoint
        self._issuer = issuer.rstrip("/") if issuer is not None else None
        self.client_auth_method: ClientAuthMethod = client_auth_method
        self.scope = scope
        self._renew_margin = renew_margin
        self._clock = clock
        self._lock = Lock()
        self._token: _CachedToken | None = None
        self.token_requests = 0
        self.discovery_requests = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(client_id={self.client_id!r}, "
            f"client_auth_method={self.client_auth_method!r}, "
            f"token_endpoint={self._token_endpoint!r})"
        )

    @property
    def token_endpoint(self) -> str | None:
        """The token endpoint in use; None until discovery has run."""
        return self._token_endpoint

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("ClientCredentialsAuth only works with httpx.AsyncClient")
        yield request  # pragma: no cover - makes this a generator, as httpx expects

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # Requests we yield ourselves carry neither the caller's timeout nor its client's
        # headers unless we copy them: MAS's logs should name us on the token endpoint too.
        timeout = request.extensions.get("timeout")
        user_agent = request.headers.get("User-Agent")
        used: _CachedToken | None = None
        for attempt in (1, 2):
            async with self._lock:
                if attempt == 2 and self._token is used:
                    # Only drop the token we were refused with: a concurrent call may
                    # already have renewed it while we waited for the lock.
                    self._token = None
                if self._token is None or self._clock() >= self._token.renew_at:
                    if self._token_endpoint is None:
                        self.discovery_requests += 1
                        discovery = yield self._discovery_request(timeout, user_agent)
                        await discovery.aread()
                        self._token_endpoint = self._token_endpoint_from(discovery)
                    self.token_requests += 1
                    answer = yield self._token_request(self._token_endpoint, timeout, user_agent)
                    await answer.aread()
                    self._token = self._token_from(answer)
                used = self._token
            request.headers["Authorization"] = f"Bearer {used.value.get_secret_value()}"
            response = yield request
            if response.status_code != httpx.codes.UNAUTHORIZED:
                return
        raise BackendAuthError(
            f"MAS refused a freshly issued access token for client {self.client_id} (401 twice): "
            f"check that the client keeps the {self.scope} scope and that MAS's clock is sane"
        )

    # --- one step at a time, for `doctor` -------------------------------------------------

    async def discover(self, http: httpx.AsyncClient) -> str:
        """The token endpoint: the configured one, or what MAS's discovery document names."""
        if self._token_endpoint is None:
            request = self._discovery_request(http.timeout.as_dict(), _user_agent_of(http))
            discovery = await http.send(request)
            self._token_endpoint = self._token_endpoint_from(discovery)
        return self._token_endpoint

    async def fetch_token(self, http: httpx.AsyncClient) -> None:
        """Ask the token endpoint for a new access token now; raise our errors as the flow does."""
        endpoint = await self.discover(http)
        request = self._token_request(endpoint, http.timeout.as_dict(), _user_agent_of(http))
        answer = await http.send(request)
        async with self._lock:
            self.token_requests += 1
            self._token = self._token_from(answer)

    # --- token endpoint ----------------------------------------------------------------------

    def _discovery_request(self, timeout: Any, user_agent: str | None) -> httpx.Request:
        assert self._issuer is not None
        return httpx.Request(
            "GET",
            self._issuer + DISCOVERY_PATH,
            headers=_headers(user_agent),
            extensions=_timeout_extension(timeout),
        )

    def _token_endpoint_from(self, response: httpx.Response) -> str:
        where = f"{self._issuer}{DISCOVERY_PATH}"
        if response.status_code >= 500:
            raise BackendUnavailable(
                f"MAS discovery at {where} answered {response.status_code}",
                retry_after=retry_after_seconds(
                    response.headers.get("Retry-After"), _DEFAULT_RETRY_AFTER
                ),
            )
        if response.status_code != httpx.codes.OK:
            raise BackendAuthError(
                f"MAS discovery at {where} answered {response.status_code}: "
                "check the MAS URL, or configure the token endpoint explicitly"
            )
        document = _json_object(response)
        endpoint = document.get("token_endpoint") if document is not None else None
        if not isinstance(endpoint, str) or not endpoint:
            raise BackendAuthError(
                f"MAS discovery at {where} names no token_endpoint: "
                "configure the token endpoint explicitly"
            )
        return urljoin(where, endpoint)

    def _token_request(self, endpoint: str, timeout: Any, user_agent: str | None) -> httpx.Request:
        form = {"grant_type": "client_credentials", "scope": self.scope}
        headers = _headers(user_agent)
        # Read at every renewal: a rotated Secret heals a rejected client without a restart.
        secret = current_secret(self._client_secret).get_secret_value()
        if self.client_auth_method == "client_secret_basic":
            # As they are, not form-urlencoded first as RFC 6749 2.3.1 asks: MAS compares the
            # Basic password with its configured secret byte for byte and decodes nothing, so
            # an encoded `+ / = %` or space never matches (mas/FACTS.md, tried on MAS 1.22).
            pair = f"{self.client_id}:{secret}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            # A form body is form-decoded by every server, MAS included: the value arrives as is.
            form["client_id"] = self.client_id
            form["client_secret"] = secret
        return httpx.Request(
            "POST", endpoint, data=form, headers=headers, extensions=_timeout_extension(timeout)
        )

    def _token_from(self, response: httpx.Response) -> _CachedToken:
        status = response.status_code
        document = _json_object(response) or {}
        error = document.get("error")
        if status == httpx.codes.OK:
            value = document.get("access_token")
            if not isinstance(value, str) or not value:
                raise BackendAuthError(
                    f"The MAS token endpoint {self._token_endpoint} answered 200 without an "
                    "access token: check that it really is MAS's token endpoint"
                )
            lifetime = _positive_number(document.get("expires_in")) or _LIFETIME_WHEN_UNSTATED
            # A margin larger than half the lifetime would renew on every call.
            margin = min(self._renew_margin, lifetime / 2)
            return _CachedToken(SecretStr(value), self._clock() + lifetime - margin)
        if status >= 500 or status == httpx.codes.TOO_MANY_REQUESTS:
            raise BackendUnavailable(
                f"The MAS token endpoint answered {status}",
                retry_after=retry_after_seconds(
                    response.headers.get("Retry-After"), _DEFAULT_RETRY_AFTER
                ),
            )
        said = f"{status} {error}" if isinstance(error, str) and error.isascii() else str(status)
        if error == "invalid_scope" or status == httpx.codes.FORBIDDEN:
            raise BackendAuthError(
                f"MAS will not grant the {self.scope} scope to client {self.client_id} ({said}): "
                "the client "
                "must be listed in policy.data.admin_clients of the MAS configuration (on ESS: "
                "in the matrixAuthenticationService.additional fragment; restart MAS after the "
                "change)"
            )
        if error == "invalid_client" or status == httpx.codes.UNAUTHORIZED:
            # Not "they do not match": until the secret went out unencoded, a matching secret
            # with `+ / = %` or a space was refused too. Say what is sent and what MAS compares.
            raise BackendAuthError(
                f"MAS refused the client credentials for client {self.client_id} ({said}). "
                "The operator sends the secret from MATRIX_INVITE_MAS_CLIENT_SECRET_FILE (chart "
                "values mas.clientSecret.existingSecret and .key) byte for byte, by "
                f"{self.client_auth_method} (MATRIX_INVITE_MAS_CLIENT_AUTH_METHOD); MAS refuses "
                "it when its client with this id (MATRIX_INVITE_MAS_CLIENT_ID, chart value "
                "mas.clientId) has another secret or another client_auth_method. MAS reads its "
                "clients only at start: restart MAS after rotating the secret"
            )
        detail = f" ({error})" if isinstance(error, str) and error.isascii() else ""
        raise BackendAuthError(
            f"The MAS token endpoint refused the client_credentials grant for client "
            f"{self.client_id} with {status}{detail}: check the client's grant_types in MAS"
        )


def _user_agent_of(http: httpx.AsyncClient) -> str | None:
    value: str | None = http.headers.get("User-Agent")
    return value


def _headers(user_agent: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if user_agent:
        headers["User-Agent"] = user_agent
    return headers


def _timeout_extension(timeout: Any) -> dict[str, Any]:
    return {"timeout": timeout} if timeout is not None else {}


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        document = json.loads(response.content)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)
